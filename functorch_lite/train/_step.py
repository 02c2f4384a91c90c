"""One optimizer step, pure and compiled: ``(params, opt_state, batch) -> (params, opt_state, metrics)``.

With ``accumulate = k`` the batch of ``B`` rows is split into ``k`` micro-batches of
``B / k`` rows and the gradients are averaged:

    g = (1/k) sum_j grad L_j(params),    L_j = mean loss over micro-batch j

For a mean loss over equal micro-batches this is exactly the gradient of the mean loss
over the whole batch (up to float round-off), while only one micro-batch's activations
are alive at a time. Micro-batch ``j`` takes rows ``j, j + k, j + 2k, ...``, so when
the batch is sharded over devices each micro-batch stays evenly sharded.

>>> import jax.numpy as jnp, optax
>>> step = train_step(lambda w, b: jnp.mean((b[0] @ w - b[1]) ** 2), optax.sgd(0.5))
>>> w = jnp.zeros(2); opt_state = optax.sgd(0.5).init(w)
>>> batch = (jnp.eye(2), jnp.array([1.0, 2.0]))
>>> w, opt_state, metrics = step(w, opt_state, batch)     # w - 0.5 * 2 (Xw - y)^T X / 2
>>> w, metrics["loss"]
(Array([0.5, 1. ], dtype=float32), Array(2.5, dtype=float32))
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import _args
from .._transforms import value_and_grad

__all__ = ["train_step", "make_update", "check_optimizer", "shapes"]


def shapes(tree: Any) -> Any:
    """The pytree of shapes of ``tree``'s leaves, for messages."""
    return jax.tree_util.tree_map(lambda x: tuple(np.shape(x)), tree)


def check_optimizer(optimizer: Any, where: str) -> None:
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise TypeError(
            f"{where}: expected optimizer to be an optax.GradientTransformation (with init and "
            f"update), got {type(optimizer).__name__}; pass e.g. optax.adam(1e-3)."
        )


def check_loss_fn(loss_fn: Any, where: str) -> None:
    if not callable(loss_fn):
        raise TypeError(f"{where}: expected loss_fn to be a callable loss_fn(params, batch) -> scalar, "
                        f"got {type(loss_fn).__name__}.")


def check_loss_value(out: Any, where: str) -> None:
    """The loss must be a real floating-point scalar array computed from the params."""
    if isinstance(out, (bool, int, float, complex)):
        raise TypeError(f"{where}: loss_fn returned the Python {type(out).__name__} {out!r}, which "
                        "cannot depend on params, so there is nothing to train; compute the loss "
                        "from params and batch with jax.numpy (e.g. jnp.mean(...)), not with float() "
                        "or .item().")
    if not isinstance(out, jax.Array | np.ndarray | np.generic):
        raise TypeError(f"{where}: loss_fn must return a scalar loss (or (loss, aux) with "
                        f"has_aux=True), got {type(out).__name__}.")
    if np.shape(out) != ():
        raise ValueError(f"{where}: loss_fn must return a scalar loss, got shape {tuple(np.shape(out))}; "
                         "reduce it over the batch, e.g. with jnp.mean.")
    if not jnp.issubdtype(jnp.result_type(out), jnp.floating):
        raise TypeError(f"{where}: loss_fn must return a real floating-point loss, got dtype "
                        f"{jnp.result_type(out)}.")


# What JAX and NumPy say when the arrays' shapes do not fit the operation (dot_general's
# contracting dimensions, broadcasting, reshape, an index out of bounds, too many indices).
_SHAPE_MISMATCH = re.compile(r"shape|dimension|broadcast|out of bounds|too many indices|ndim", re.IGNORECASE)


def _is_shape_mismatch(e: BaseException) -> bool:
    return isinstance(e, (TypeError, ValueError, IndexError)) and bool(_SHAPE_MISMATCH.search(str(e)))


def _checked_loss(loss_fn: Callable, has_aux: bool, where: str) -> Callable:
    """``loss_fn`` with the user's shape mistakes turned into a message naming the shapes;
    any other exception from ``loss_fn`` propagates unchanged."""

    def loss(params, batch):
        try:
            out = loss_fn(params, batch)
        except (TypeError, ValueError, IndexError) as e:
            if not _is_shape_mismatch(e):
                raise
            raise ValueError(
                f"{where}: loss_fn(params, batch) failed on a batch with shapes {shapes(batch)} "
                f"and params with shapes {shapes(params)}: {type(e).__name__}: {e}. Check that "
                "the batch's arrays fit what loss_fn expects."
            ) from e
        aux = None
        if has_aux:
            out, aux = _args.split_aux(out, where)
        check_loss_value(out, where)
        return (out, aux) if has_aux else out

    loss.__name__ = _args.func_name(loss_fn)
    return loss


def micro_batches(batch: Any, accumulate: int) -> Any:
    """Split every leaf ``(B, ...)`` into ``(accumulate, B / accumulate, ...)``, strided."""

    def split(x):
        b = x.shape[0]
        x = x.reshape((b // accumulate, accumulate) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree_util.tree_map(split, batch)


def check_batch(batch: Any, accumulate: int, where: str, divisor: int = 1) -> int:
    """Every leaf has the same leading (batch) size ``B``, a multiple of ``accumulate``."""
    leaves = jax.tree_util.tree_leaves(batch)
    if not leaves:
        raise ValueError(f"{where}: the batch has no arrays; a batch is a pytree of arrays "
                         "with a leading batch axis, e.g. (x, y).")
    sizes = set()
    for x in leaves:
        if np.ndim(x) == 0:
            raise ValueError(
                f"{where}: every array of a batch needs a leading batch axis; got a batch with "
                f"shapes {shapes(batch)}."
            )
        sizes.add(np.shape(x)[0])
    if len(sizes) != 1:
        raise ValueError(
            f"{where}: the arrays of a batch must share their leading (batch) size; got shapes "
            f"{shapes(batch)}."
        )
    b = sizes.pop()
    check_batch_size(b, accumulate, divisor, where)
    return b


def check_batch_size(b: int, accumulate: int, divisor: int, where: str) -> None:
    """Micro-batches of equal size, each split evenly over ``divisor`` devices."""
    if b % (accumulate * divisor):
        extra = f" times the {divisor} devices of the mesh's data axis" if divisor > 1 else ""
        raise ValueError(
            f"{where}: the batch size {b} must be a multiple of accumulate={accumulate}{extra} "
            f"(= {accumulate * divisor}); change batch_size or accumulate."
        )


def make_update(loss_fn: Callable, optimizer: optax.GradientTransformation, *, has_aux: bool,
                accumulate: int, where: str, constrain: Callable[[Any], Any] | None = None) -> Callable:
    """The pure (not yet jitted) step function. ``constrain`` places each micro-batch
    (sharding over the mesh's data axis), or is None."""
    loss = _checked_loss(loss_fn, has_aux, where)
    vg = value_and_grad(loss, has_aux=has_aux)

    def grads_of(params, batch):
        if constrain is not None:
            batch = constrain(batch)
        out, g = vg(params, batch)
        value, aux = out if has_aux else (out, None)
        return value, g, aux

    def value_of(params, batch):
        if constrain is not None:
            batch = constrain(batch)
        out = loss(params, batch)
        return out[0] if has_aux else out

    def batch_loss(params, batch):
        """The loss over the whole batch (for line searches: optax.lbfgs's value_fn)."""
        if accumulate == 1:
            return value_of(params, batch)
        return jnp.mean(jax.lax.map(lambda m: value_of(params, m), micro_batches(batch, accumulate)))

    def update(params, opt_state, batch):
        if accumulate == 1:
            value, g, aux = grads_of(params, batch)
        else:
            def body(carry, micro):
                v, g, aux = grads_of(params, micro)
                total_v, total_g = carry
                return (total_v + v, jax.tree_util.tree_map(jnp.add, total_g, g)), aux

            micros = micro_batches(batch, accumulate)
            first = jax.tree_util.tree_map(lambda x: x[0], micros)
            v_shape = jax.eval_shape(grads_of, params, first)[0]
            zero = (jnp.zeros((), v_shape.dtype), jax.tree_util.tree_map(jnp.zeros_like, params))
            (total_v, total_g), auxs = jax.lax.scan(body, zero, micros)
            value = total_v / accumulate
            g = jax.tree_util.tree_map(lambda x: x / accumulate, total_g)
            aux = None if auxs is None else jax.tree_util.tree_map(
                lambda a: jnp.mean(a, axis=0) if jnp.issubdtype(a.dtype, jnp.inexact) else a[-1], auxs)
        updates, opt_state = _optimizer_update(optimizer, g, opt_state, params, value,
                                               lambda p: batch_loss(p, batch), where)
        params = optax.apply_updates(params, updates)
        metrics = {"loss": value, "grad_norm": optax.tree_utils.tree_norm(g)}
        if has_aux:
            metrics["aux"] = aux
        return params, opt_state, metrics

    return update


def _optimizer_update(optimizer, g, opt_state, params, value, value_fn, where):
    """``optimizer.update``, given the extra arguments optax's
    ``GradientTransformationExtraArgs`` may need: ``value`` (the loss, e.g. for
    ``optax.contrib.reduce_on_plateau``), ``grad`` and ``value_fn`` (the loss as a
    function of the parameters on this batch, for ``optax.lbfgs``'s line search).
    Transformations that need none of them ignore them."""
    extra = isinstance(optimizer, optax.GradientTransformationExtraArgs)
    try:
        if extra:
            return optimizer.update(g, opt_state, params, value=value, grad=g, value_fn=value_fn)
        return optimizer.update(g, opt_state, params)
    except TypeError as e:
        if "required keyword-only argument" not in str(e) and "unexpected keyword argument" not in str(e):
            raise
        raise TypeError(
            f"{where}: optimizer.update failed on its arguments ({e}). fit and train_step call "
            "optimizer.update(grads, opt_state, params) and, for an "
            "optax.GradientTransformationExtraArgs, add value=loss, grad=grads and "
            "value_fn=(the loss on this batch as a function of params); an optimizer that needs "
            "other arguments cannot be used here: write the loop with optimizer.update directly."
        ) from None


def check_opt_state(optimizer: Any, params: Any, opt_state: Any, where: str) -> None:
    """``opt_state`` must be what ``optimizer.init(params)`` makes (structure, shapes, dtypes)."""
    want = jax.eval_shape(optimizer.init, params)
    got_def, want_def = jax.tree_util.tree_structure(opt_state), jax.tree_util.tree_structure(want)
    same = got_def == want_def and all(
        np.shape(a) == np.shape(b) and jnp.result_type(a) == jnp.result_type(b)
        for a, b in zip(jax.tree_util.tree_leaves(opt_state), jax.tree_util.tree_leaves(want)))
    if not same:
        def kinds(tree):
            nodes = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: hasattr(x, "_fields"))
            return [type(x).__name__ for x in nodes if hasattr(x, "_fields")] or [type(tree).__name__]
        raise ValueError(
            f"{where}: opt_state does not belong to this optimizer and params: it holds "
            f"{kinds(opt_state)} with shapes {shapes(opt_state)}, while optimizer.init(params) "
            f"makes {kinds(want)} with shapes {shapes(want)}. Pass opt_state = "
            "optimizer.init(params) of the optimizer given to train_step (and the state it returns after)."
        )


def train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *, has_aux: bool = False,
               accumulate: int = 1) -> Callable:
    """A pure, jit-compiled optimizer step with donated ``params`` and ``opt_state``.

    ``step(params, opt_state, batch) -> (params, opt_state, metrics)`` computes
    ``g = ∇_params loss_fn(params, batch)`` (with ``functorch_lite.value_and_grad``),
    ``updates, opt_state = optimizer.update(g, opt_state, params)`` and
    ``params + updates``. ``metrics`` holds ``"loss"``, ``"grad_norm"`` (``||g||_2``)
    and, with ``has_aux=True`` (``loss_fn`` returns ``(loss, aux)``), ``"aux"`` (averaged
    over micro-batches for float leaves).

    The buffers of ``params`` and ``opt_state`` are donated: do not use the arrays you
    passed in after the call, use the returned ones.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` (a mean over the batch for
        accumulation to equal one large batch).
      optimizer: an ``optax.GradientTransformation``.
      has_aux: ``loss_fn`` returns ``(loss, aux)``.
      accumulate: split each batch into this many micro-batches and average their
        gradients (see the module docstring).

    >>> import jax.numpy as jnp, optax
    >>> loss = lambda w, batch: jnp.mean((batch[0] @ w - batch[1]) ** 2)
    >>> step = train_step(loss, optax.sgd(0.1))
    >>> w, opt_state = jnp.zeros(2), optax.sgd(0.1).init(jnp.zeros(2))
    >>> w, opt_state, metrics = step(w, opt_state, (jnp.ones((4, 2)), jnp.ones(4)))
    >>> float(metrics["loss"]), w                 # w - 0.1 * 2 (xw - y) x = 0.2
    (1.0, Array([0.2, 0.2], dtype=float32))
    """
    where = f"train_step({_args.func_name(loss_fn)}, optimizer)"
    check_loss_fn(loss_fn, "train_step(loss_fn, optimizer)")
    check_optimizer(optimizer, where)
    _args.check_bool(has_aux, where, "has_aux")
    accumulate = _args.check_positive_int(accumulate, where, "accumulate")
    update = make_update(loss_fn, optimizer, has_aux=has_aux, accumulate=accumulate,
                         where=f"{where}(params, opt_state, batch)")

    def step(params, opt_state, batch):
        check_batch(batch, accumulate, f"{where}(params, opt_state, batch)")
        check_opt_state(optimizer, params, opt_state, f"{where}(params, opt_state, batch)")
        return update(params, opt_state, batch)

    compiled = jax.jit(step, donate_argnums=(0, 1))

    def call(params, opt_state, batch):
        return compiled(params, _distinct_buffers(params, opt_state), batch)

    call.lower = compiled.lower
    return _args.named(call, loss_fn, f"train_step({_args.func_name(loss_fn)})", train_step.__doc__)


def _distinct_buffers(params: Any, opt_state: Any) -> Any:
    """``opt_state`` with a copy of each array that is already a leaf of ``params`` or an
    earlier leaf of ``opt_state``: a buffer cannot be donated twice (``optax.lbfgs().init``
    puts one array in two places). No copy, and no device work, when all are distinct."""
    seen = {id(x) for x in jax.tree_util.tree_leaves(params)}
    leaves, tree = jax.tree_util.tree_flatten(opt_state)
    out = []
    for x in leaves:
        if isinstance(x, jax.Array) and id(x) in seen:
            x = jnp.copy(x)
        seen.add(id(x))
        out.append(x)
    return jax.tree_util.tree_unflatten(tree, out)
