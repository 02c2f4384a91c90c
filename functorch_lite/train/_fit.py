"""``fit``: a compiled optax training loop that resumes bitwise-exactly after a kill.

The loop dispatches *chunks*: ``steps_per_call = s`` steps run inside one compiled
``lax.scan``, and chunk boundaries are the multiples of ``s`` (and ``steps``). A
checkpoint is written only at a chunk boundary (so ``checkpoint_every`` must be a
multiple of ``s``), which makes a resumed run execute the very same compiled programs on
the very same values as a run never interrupted: the batch of step ``t`` depends only on
``(key, t)`` (see ``_data``), the step counter lives in the compiled state, and XLA's CPU/GPU kernels are deterministic for a fixed program. The
final parameters are therefore bitwise equal.

The host never waits for the device except to save, to call a callback, or to check one
chunk's losses while the next chunk is already running (so a non-finite loss is
reported at most one dispatch late, always before a checkpoint could record it).
"""

from __future__ import annotations

import dataclasses
import functools
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import _args, _caches
from ._checkpoint import Checkpoints, fingerprint
from ._data import ArraySource, Sampler, make_source
from ._settings import data_digest, loss_settings, optimizer_settings
from ._sharding import Placement
from ._step import check_loss_fn, check_optimizer, make_update, shapes

__all__ = ["fit", "FitResult"]


@dataclasses.dataclass
class FitResult:
    """What ``fit`` returns.

    Attributes:
      params: the trained parameters.
      opt_state: the optimizer state after the last step.
      step: the number of optimizer steps taken in all (counting those of a resumed run).
      history: ``{"step": ints, "loss": floats}``, one entry per step; ``loss[t]`` is the loss at the parameters *before* update ``t``.

    >>> import jax.numpy as jnp, optax
    >>> loss = lambda w, batch: jnp.mean((batch[0] @ w - batch[1]) ** 2)
    >>> result = fit(loss, jnp.zeros(2), optax.sgd(0.1), (jnp.ones((4, 2)), jnp.ones(4)),
    ...              steps=3, progress=False)
    >>> isinstance(result, FitResult), result.step, result.history["loss"].shape
    (True, 3, (3,))
    """

    params: Any
    opt_state: Any
    step: int
    history: dict[str, np.ndarray]


def _init_state(optimizer: Any, params: Any, where: str) -> Any:
    try:
        return optimizer.init(params)
    except Exception as e:
        raise type(e)(f"{where}: optimizer.init(params) failed: {e}") from e


def _run_settings(source, accumulate: int, spc: int, key_data: np.ndarray, optimizer: Any,
                  opt_state: Any, loss_fn: Callable) -> dict:
    """What determines the run (see ``_settings``): a checkpoint records it and a resume
    must match it (or pass ``resume="force"``)."""
    if isinstance(source, ArraySource):
        data = {"kind": "arrays", "shapes": repr(shapes(source.arrays)),
                "dtypes": repr([str(x.dtype) for x in source.arrays]),
                "sha256": data_digest(source.arrays)}
    else:
        data = {"kind": "iterable of batches", "shapes": repr(source.first_shapes)}
    return {"data": data, "batch_size": source.batch_size, "accumulate": accumulate,
            "steps_per_call": spc, "key": key_data.tolist(),
            "optimizer": optimizer_settings(optimizer, opt_state), "loss_fn": loss_settings(loss_fn)}


def _check_callbacks(callbacks: Any, where: str) -> tuple:
    try:
        callbacks = tuple(callbacks)
    except TypeError:
        raise TypeError(f"{where}: callbacks must be a sequence of callables, got "
                        f"{type(callbacks).__name__}; wrap one callback as callbacks=(cb,).") from None
    for i, cb in enumerate(callbacks):
        _args.check_callable(cb, where, f"callbacks[{i}]")
    return callbacks


def fit(loss_fn: Callable, params: Any, optimizer: optax.GradientTransformation, data: tuple | Iterable, *, steps: int,
        batch_size: int | None = None, key: Any = None, accumulate: int = 1, steps_per_call: int = 1,
        checkpoint_dir: Any = None, checkpoint_every: int | None = None, resume: bool | str = True,
        mesh: jax.sharding.Mesh | None = None, data_axis: str = "data", progress: bool = True,
        callbacks: Iterable[Callable] = ()) -> FitResult:
    """Train ``params`` to minimise ``loss_fn(params, batch)`` with an optax optimizer.

    Each step is ``g = ∇ loss_fn(params, batch)``, ``updates, opt_state = optimizer.update(g, opt_state,
    params)``, ``params += updates`` (see :func:`train_step`), compiled with ``jax.jit``.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` (a mean over the batch).
      params: a pytree of float arrays; it is copied, never donated.
      optimizer: an ``optax.GradientTransformation``.
      data: a tuple of arrays ``(x, y, ...)`` with a common leading axis of examples (batches are drawn from
        ``key`` and the step number, reproducibly; ``batch`` is then a tuple like ``data``), or an iterable
        yielding one batch per step.
      steps: the total number of optimizer steps (including those of a resumed run).
      batch_size: rows per step (default: all rows); with an iterable, its batches' size.
      key: PRNG key (or int seed) that orders the examples; default ``jax.random.key(0)``.
      accumulate: split each batch into this many micro-batches and average their gradients (as one large
        batch, in less memory).
      steps_per_call: steps per compiled dispatch (a ``lax.scan``).
      checkpoint_dir: directory for orbax checkpoints, locked while ``fit`` runs; with ``resume=True`` a run
        continues from its newest intact checkpoint (a damaged newer one goes to ``checkpoint_dir/damaged/``,
        with a warning); a second ``fit`` on a locked directory is refused.
      checkpoint_every: save every this many steps (a multiple of ``steps_per_call``); default: at the end.
      resume: continue from ``checkpoint_dir``'s latest checkpoint, if it was written by the same run
        (optimizer hyper-parameters, loss function, data, batch size, key...; a mismatch is refused naming
        the setting). ``"force"``: continue even with such settings changed. ``False``: a directory that
        already holds checkpoints is an error (nothing is overwritten).
      mesh: a ``jax.sharding.Mesh`` for data parallelism: parameters replicated, batches sharded.
      data_axis: the mesh axis to shard batches over.
      progress: show a tqdm progress bar with the loss and steps/s.
      callbacks: each is called as ``cb(step, params, {"loss": loss of the last step})`` after every dispatch.

    Returns:
      A :class:`FitResult` with ``params``, ``opt_state``, ``step`` and ``history``.

    Raises:
      FloatingPointError: a loss, the parameters or the optimizer state became non-finite (the message names
        the step(s); no checkpoint after it was written and no non-finite parameters are returned).
      ValueError: ``checkpoint_dir`` is in use, not writable, holds another run's or no intact checkpoints.

    >>> import jax.numpy as jnp, optax
    >>> X = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]); y = X @ jnp.array([2.0, -1.0])
    >>> fit(lambda w, b: jnp.mean((b[0] @ w - b[1]) ** 2), jnp.zeros(2), optax.sgd(0.3), (X, y), steps=200,
    ...     progress=False).params.round(4)
    Array([ 2., -1.], dtype=float32)
    """
    where, steps, batch_size, accumulate, spc, checkpoint_every, callbacks = _check_options(
        loss_fn, params, optimizer, steps, batch_size, accumulate, steps_per_call, checkpoint_dir,
        checkpoint_every, resume, progress, callbacks)
    order, placement = _args.order_of(params), Placement(mesh, data_axis, where)  # dicts come back in their order
    key = _args.as_key(key, where)
    source = make_source(data, batch_size, accumulate, placement, where)
    ckpt = Checkpoints(checkpoint_dir, where) if checkpoint_dir is not None else None
    with _Run(source, placement, key, steps, spc, ckpt, checkpoint_every, progress, callbacks, where) as run:
        result = run.loop(*run.begin(params, optimizer, loss_fn, accumulate, resume))
    return dataclasses.replace(result, params=_args.reorder(order, result.params))


def _check_options(loss_fn, params, optimizer, steps, batch_size, accumulate, steps_per_call, checkpoint_dir,
                   checkpoint_every, resume, progress, callbacks) -> tuple:
    """``fit``'s checks of its options, in the order it makes them; the checked values."""
    check_loss_fn(loss_fn, "fit(loss_fn, params, optimizer, data)")
    where = f"fit({_args.func_name(loss_fn)}, params, optimizer, data)"
    check_optimizer(optimizer, where)
    steps = _args.check_positive_int(steps, where, "steps")
    batch_size = _args.check_positive_int(batch_size, where, "batch_size", allow_none=True)
    accumulate = _args.check_positive_int(accumulate, where, "accumulate")
    spc = _args.check_positive_int(steps_per_call, where, "steps_per_call")
    checkpoint_every = _args.check_positive_int(checkpoint_every, where, "checkpoint_every", allow_none=True)
    if resume not in (True, False, "force") or not isinstance(resume, (bool, str)):
        raise TypeError(f"{where}: resume must be True, False or \"force\", got {resume!r}.")
    _args.check_bool(progress, where, "progress")
    callbacks = _check_callbacks(callbacks, where)
    if checkpoint_every is not None and checkpoint_dir is None:
        raise ValueError(f"{where}: checkpoint_every={checkpoint_every} needs a checkpoint_dir to "
                         "write to; pass checkpoint_dir=... .")
    if checkpoint_every is not None and checkpoint_every % spc:
        raise ValueError(
            f"{where}: checkpoint_every={checkpoint_every} must be a multiple of "
            f"steps_per_call={spc}: checkpoints are taken between compiled calls, and a resumed "
            "run must split its steps into the same calls to reproduce the uninterrupted run."
        )
    _args.check_differentiable(params, where, "params")
    return where, steps, batch_size, accumulate, spc, checkpoint_every, callbacks


# The host looks at the losses of dispatched chunks (all at once: one transfer, one check)
# when more than _IN_FLIGHT are waiting or _DRAIN_SECONDS have passed, so it may run that
# far ahead of the device and a non-finite loss is reported that many dispatches late;
# always before a checkpoint, which drains them all first. Looking at every step's loss
# as it came back measured 10-20% slower per step on this project's 2-core CPU.
_IN_FLIGHT = 32
_DRAIN_SECONDS = 0.25


def _steps(one: Callable, carry: Any, xs: Any, n: int) -> tuple[Any, jax.Array]:
    """``n`` training steps ``one(carry, x) -> (carry, loss)`` in one compiled call: a
    ``lax.scan`` over ``xs`` (``None``: nothing per step), or one plain call for ``n == 1``
    (``xs`` is then the one batch). Losses come back stacked, shape ``(n,)``."""
    if n == 1:
        carry, loss = one(carry, xs)
        return carry, loss[None]
    return jax.lax.scan(one, carry, xs, length=n)


_chunks = _caches.weak("train.fit_chunk", maxsize=16)


def _chunk(loss_fn: Callable, optimizer: Any, accumulate: int, mesh: Any, data_axis: str,
           sampler: Sampler | None, n: int) -> Callable:
    """The compiled chunk of ``n`` steps, cached weakly on ``loss_fn`` and on the other
    (hashable) ingredients, so calling ``fit`` again with the same loss function and
    optimizer object reuses the compiled program instead of recompiling. An unhashable
    ingredient (an optimizer holding a list) is built without the cache."""
    key = (optimizer, accumulate, mesh, data_axis, sampler, n)
    build = functools.partial(_build_chunk, loss_fn, optimizer, accumulate, mesh, data_axis, sampler, n)
    try:
        hash(key)
    except TypeError:
        return build()
    return _chunks.get_or_compute(loss_fn, key, build)


def _weakly(loss_fn: Callable) -> Callable:
    """``loss_fn`` called through a weak reference, so that a cached program does not
    keep it alive (the cache keys on it weakly and forgets the program with it)."""
    try:
        ref = weakref.ref(loss_fn)
    except TypeError:
        return loss_fn

    def call(*args, **kwargs):
        return ref()(*args, **kwargs)

    call.__name__ = call.__fl_name__ = _args.func_name(loss_fn)
    return call


def _build_chunk(loss_fn: Callable, optimizer: Any, accumulate: int, mesh: Any, data_axis: str,
                 sampler: Sampler | None, n: int) -> Callable:
    """The compiled chunk of ``n`` steps; the losses come back as an ``(n,)`` array."""
    where = f"fit({_args.func_name(loss_fn)}, params, optimizer, data)"
    placement = Placement(mesh, data_axis, where)
    update = make_update(_weakly(loss_fn), optimizer, has_aux=False, accumulate=accumulate, where=where,
                         constrain=placement.constrain if mesh is not None else None)
    arrays = sampler is not None

    def stats(m):  # only the loss leaves the device: XLA drops the rest (grad_norm)
        return m["loss"]

    if arrays:
        def run(params, opt_state, t, perms, data):
            def one(carry, _):
                params, opt_state, t_now = carry
                batch = sampler.batch_at(placement, data, perms, t_now, t)
                params, opt_state, m = update(params, opt_state, batch)
                return (params, opt_state, t_now + 1), stats(m)

            return _steps(one, (params, opt_state, t), None, n)

        return jax.jit(run, donate_argnums=(0, 1, 2))

    def run_iter(params, opt_state, t, batches):
        def one(carry, batch):
            params, opt_state, t = carry
            params, opt_state, m = update(params, opt_state, batch)
            return (params, opt_state, t + 1), stats(m)

        return _steps(one, (params, opt_state, t), batches, n)

    return jax.jit(run_iter, donate_argnums=(0, 1, 2))


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.isfinite(x).all() for x in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


@dataclasses.dataclass
class _Run:
    """One ``fit`` run: what stays fixed while it runs (the first fields), and the host's
    bookkeeping: the history of losses, the dispatched chunks whose losses are not checked
    yet, the last checkpoint and the last step whose parameters are known to be finite."""

    source: Any
    placement: Placement
    key: Any
    steps: int
    spc: int
    ckpt: Checkpoints | None
    checkpoint_every: int | None
    progress: bool
    callbacks: tuple
    where: str
    build: Callable | None = None  # the compiled chunk of n steps: build(n)
    key_data: Any = None
    expected: dict | None = None
    history: dict = dataclasses.field(default_factory=lambda: {"loss": []})
    pending: list = dataclasses.field(default_factory=list)
    last_saved: int | None = None
    verified: int = 0
    last_drain: float = 0.0
    bar: Any = None

    def __enter__(self) -> _Run:
        return self

    def __exit__(self, *exc) -> None:
        if self.ckpt is not None:
            self.ckpt.close()

    def begin(self, params, optimizer, loss_fn, accumulate, resume) -> tuple[Any, Any, int]:
        """Place the parameters and the optimizer state, and resume from the checkpoint
        directory when it holds this run: ``(params, opt_state, first step)``."""
        self.build = functools.partial(_chunk, loss_fn, optimizer, accumulate, self.placement.mesh,
                                       self.placement.axis, self.source.sampler)
        params = self.placement.replicate(params)
        opt_state = self.placement.replicate(_init_state(optimizer, params, self.where))
        self.key = self.placement.put(self.key)
        self.key_data = np.asarray(jax.random.key_data(self.key))
        start = 0
        if self.ckpt is not None:
            settings = _run_settings(self.source, accumulate, self.spc, self.key_data, optimizer, opt_state, loss_fn)
            self.expected = {"params": fingerprint(params), "opt_state": fingerprint(opt_state), "config": settings}
            if not resume and (latest := self.ckpt.latest_step()) is not None:
                raise ValueError(
                    f"{self.where}: checkpoint_dir={self.ckpt.path!r} already holds checkpoints (latest step "
                    f"{latest}) and resume=False; nothing was overwritten. Pass resume=True to "
                    "continue that run, or choose a new checkpoint_dir."
                )
            like = {"params": params, "opt_state": opt_state,
                    "step": self.placement.put(np.int32(0)), "key": self.placement.put(self.key_data)}
            point = self.ckpt.resume_point(self.steps, like, self.expected, force=resume == "force")
            if point is not None:
                start, state, meta = point
                params, opt_state = state["params"], state["opt_state"]
                self.history = {k: list(v) for k, v in meta["history"].items()}
        if not isinstance(self.source, ArraySource):
            self.source.skip(start)
        return params, opt_state, start

    def loop(self, params, opt_state, start: int) -> FitResult:
        """Dispatch the chunks from step ``start`` to ``steps``; save and call back between them."""
        from tqdm.auto import tqdm

        compiled: dict[int, Callable] = {}
        t, t_dev = start, self.placement.put(np.int32(start))
        self.last_saved = start if self.ckpt is not None and start > 0 else None
        self.verified = start  # the parameters after this step are known to be finite
        self.last_drain = time.monotonic()
        self.bar = tqdm(total=self.steps, initial=start, unit="step", desc="fit", disable=not self.progress,
                        dynamic_ncols=True)
        try:
            while t < self.steps:
                n = min((t // self.spc + 1) * self.spc, self.steps) - t
                run = compiled.get(n) or compiled.setdefault(n, self.build(n))
                if isinstance(self.source, ArraySource):
                    inputs = (self.source.perms(self.key, t, n), self.source.arrays)
                else:
                    inputs = (self.source.take(n),)
                (params, opt_state, t_dev), m = run(params, opt_state, t_dev, *inputs)
                self.dispatched(t, m)
                t += n
                self.boundary(t, params, opt_state, t_dev)
            self.drain()
            if t > self.verified:  # never hand back non-finite parameters either
                self.check_finite(params, opt_state, t)
        finally:
            self.bar.close()
        hist = {"step": np.arange(len(self.history["loss"])),
                "loss": np.asarray(self.history["loss"], dtype=np.float64)}
        return FitResult(params=params, opt_state=opt_state, step=t, history=hist)

    def dispatched(self, t: int, losses: jax.Array) -> None:
        """Note a chunk dispatched at step ``t``; check the older ones now and then."""
        self.pending.append((t, losses))
        now = time.monotonic()
        if len(self.pending) > _IN_FLIGHT or now - self.last_drain > _DRAIN_SECONDS:
            self.drain(keep=1)  # older chunks, finished or nearly, while the newest runs
            self.last_drain = now

    def boundary(self, t: int, params, opt_state, t_dev) -> None:
        """After the chunk that ends at step ``t``: save a checkpoint if one is due, call the callbacks."""
        save = self.ckpt is not None and (
            t == self.steps or (self.checkpoint_every is not None and t % self.checkpoint_every == 0))
        if save or self.callbacks:
            self.drain()
        if save:
            self.check_finite(params, opt_state, t)
            state = {"params": params, "opt_state": opt_state, "step": t_dev,
                     "key": self.placement.put(self.key_data)}
            self.ckpt.save(t, state, {**self.expected, "history": self.history})
            self.last_saved = self.verified = t
        if self.callbacks:
            metrics = {"loss": self.history["loss"][-1]}
            for cb in self.callbacks:
                cb(t, params, metrics)

    def drain(self, keep: int = 0) -> None:
        """Check and record the losses of all dispatched chunks but the last ``keep``
        (one transfer and one check for the lot)."""
        if len(self.pending) <= keep:
            return
        done = self.pending[:len(self.pending) - keep]
        del self.pending[:len(done)]
        m = np.concatenate([np.asarray(x) for _, x in done]).astype(np.float64)
        bad = ~np.isfinite(m)
        if bad.any():
            i = int(np.argmax(bad))
            kept = (f"The last checkpoint (step {self.last_saved}) in {self.ckpt.path!r} is intact; fix the "
                    "cause (learning rate, data, loss) and call fit again to resume from it."
                    if self.last_saved is not None else
                    "No checkpoint was written; pass checkpoint_dir= to keep progress.")
            raise FloatingPointError(f"{self.where}: non-finite loss {m[i]} at step {done[0][0] + i}; "
                                     f"training stopped. {kept}")
        self.history["loss"].extend(m.tolist())
        self.bar.update(len(m))
        if self.progress:
            self.bar.set_postfix(loss=f"{m[-1]:.4g}", refresh=False)

    def check_finite(self, params, opt_state, last: int) -> None:
        """Before a checkpoint and before returning: a finite loss with non-finite gradients
        leaves non-finite parameters that the losses do not show yet; never save or return
        those."""
        if not bool(_all_finite((params, opt_state))):
            kept = (f"The last checkpoint (step {self.last_saved}) in {self.ckpt.path!r} is intact."
                    if self.last_saved is not None else "No checkpoint was written.")
            raise FloatingPointError(
                f"{self.where}: the parameters or optimizer state became non-finite in steps "
                f"{self.verified}..{last - 1} although the loss was finite (non-finite gradients?); "
                f"training stopped. {kept}"
            )
