"""Jacobians: ``jacrev``, ``jacfwd``, chunking and layouts.

For ``f: R^n -> R^m`` the Jacobian is the ``m x n`` matrix ``J[i, j] = df_i/dx_j``
(numerator layout; for tensors ``out.shape + in.shape``, the torch/JAX convention). Its
transpose is the denominator layout (``in.shape + out.shape``).

- ``jacrev`` builds ``J`` row by row: one VJP ``e_i^T J`` per output element, m passes
  after one stored forward pass.
- ``jacfwd`` builds it column by column: one JVP ``J e_j`` per input element, n passes.
- ``jacobian(mode="auto")`` runs whichever of the two is faster for this function and
  these shapes, measured once and remembered (:func:`choose_mode`); on a
  :func:`functorch_lite.chain` it plans a mixed-mode bracketing instead.

Without ``chunk_size`` all passes run at once, vectorised (``vmap`` over the whole
identity basis), exactly as ``jax.jacrev``/``jax.jacfwd``. With ``chunk_size=c`` a
``lax.map`` walks the basis ``c`` vectors at a time, and each basis vector is made from
its index inside the loop (a one-hot), so neither the identity nor more than ``c``
simultaneous backward passes ever exist: temp memory scales with ``c``.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _args, _cost, _mesh
from ._mode import forward_mode

__all__ = ["jacrev", "jacfwd", "jacobian", "choose_mode", "ModeChoice", "clear_plan_cache"]

LAYOUTS = ("numerator", "denominator")


def _basis(index: jax.Array, like: list) -> list:
    """The ``index``-th standard basis vector of the flattened leaves ``like``, as leaves.

    Leaf ``k`` occupies flat positions ``[offset_k, offset_k + size_k)``; outside that
    range its one-hot is all zeros.
    """
    out, offset = [], 0
    for leaf in like:
        size = math.prod(np.shape(leaf))
        dtype = _args.tangent_dtype(_args.leaf_dtype(leaf))
        one_hot = (jnp.arange(size) == index - offset).astype(dtype)
        out.append(one_hot.reshape(np.shape(leaf)))
        offset += size
    return out


def _split_stacked(stacked: jax.Array, sizes: list[int], shapes: list[tuple], trailing: tuple) -> list:
    """Split ``stacked`` (``(sum(sizes),) + trailing``) into pieces ``shape_k + trailing``."""
    pieces, offset = [], 0
    for size, shape in zip(sizes, shapes):
        pieces.append(stacked[offset:offset + size].reshape(tuple(shape) + tuple(trailing)))
        offset += size
    return pieces


def to_layout(jac: Any, diff_args: Any, layout: str) -> Any:
    """Turn a numerator-layout Jacobian pytree into ``layout``.

    ``jac`` is nested output-structure first, then the structure of ``diff_args``; each
    leaf has shape ``out.shape + in.shape``. The denominator layout keeps the nesting
    and transposes each leaf to ``in.shape + out.shape``.
    """
    if layout == "numerator":
        return jac
    in_ndims = [np.ndim(x) for x in jax.tree_util.tree_leaves(diff_args)]
    leaves, tree = jax.tree_util.tree_flatten(jac)
    moved = []
    for k, leaf in enumerate(leaves):
        n_in = in_ndims[k % len(in_ndims)]
        n_out = leaf.ndim - n_in
        moved.append(jnp.transpose(leaf, tuple(range(n_out, leaf.ndim)) + tuple(range(n_out))))
    return jax.tree_util.tree_unflatten(tree, moved)


def _prepare(func, argnums, has_aux, chunk_size, layout, transform):
    _args.check_callable(func, transform)
    _, as_tuple = _args.check_argnums(argnums, transform)
    _args.check_bool(has_aux, transform, "has_aux")
    chunk_size = _args.check_chunk_size(chunk_size, transform)
    _args.check_choice(layout, LAYOUTS, transform, "layout")
    return as_tuple, chunk_size


def _closed_over(func, args, kwargs, positions, as_tuple, has_aux, where):
    """``g(diff) -> (out, aux)``, the non-differentiated args closed over; ``diff`` is
    the tuple of differentiated args (tuple argnums) or the one argument."""

    def call(diff):
        diff = diff if as_tuple else (diff,)
        return func(*_args.replace_args(args, positions, diff), **kwargs)

    return _args.checked_output(call, has_aux, where)


def jacrev(func: Callable, argnums: _args.Argnums = 0, *, has_aux: bool = False,
           chunk_size: int | None = None, layout: str = "numerator",
           mesh: Any = None, mesh_axis: str | None = None, gather: bool = False) -> Callable:
    """Jacobian by reverse accumulation, as ``torch.func.jacrev``.

    One stored forward pass, then one VJP ``e_i^T J`` per output element ``i``.
    ``chunk_size=c`` runs the VJPs ``c`` at a time (memory ~ c backward passes).

    Returns a function giving the Jacobian (``(jac, aux)`` with ``has_aux``): nested
    like the output, then like ``argnums`` (a tuple for tuple argnums); each leaf
    ``out.shape + in.shape`` (``layout="numerator"``) or ``in.shape + out.shape``
    (``"denominator"``).

    ``mesh=`` (a ``jax.sharding.Mesh``) splits the VJPs over the devices of its axis
    ``mesh_axis`` (default the first); the result comes back sharded along the output
    axes, or replicated with ``gather=True`` (:mod:`functorch_lite._mesh`).

    >>> import jax.numpy as jnp
    >>> A = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    >>> jacrev(lambda x: A @ x)(jnp.zeros(2))        # d(Ax)/dx = A
    Array([[1., 2.],
           [3., 4.],
           [5., 6.]], dtype=float32)
    >>> jacrev(lambda x: A @ x, layout="denominator")(jnp.zeros(2)).shape
    (2, 3)
    """
    return _jacobian_transform(func, argnums, has_aux, chunk_size, layout, "jacrev", _jacrev_engine,
                               mesh, mesh_axis, gather)


def _jacobian_transform(func, argnums, has_aux, chunk_size, layout, transform, engine,
                        mesh=None, mesh_axis=None, gather=False):
    """The body shared by jacrev and jacfwd; ``engine(g, primal, chunk_size) -> (jac, aux)``
    computes the numerator-layout Jacobian of ``g`` (which returns ``(out, aux)``)."""
    as_tuple, chunk_size = _prepare(func, argnums, has_aux, chunk_size, layout, transform)
    mesh_axis = _mesh.check(mesh, mesh_axis, gather, transform)
    name = _args.func_name(func)

    def jac_f(*args, **kwargs):
        if mesh is not None:
            return _mesh.jacobian(func, args, kwargs, argnums=argnums, has_aux=has_aux,
                                  mode="rev" if transform == "jacrev" else "fwd",
                                  chunk_size=chunk_size, layout=layout, mesh=mesh,
                                  mesh_axis=mesh_axis, gather=gather, transform=transform)
        where = f"{transform}({name})(*args)"
        positions = _args.differentiable_positions(args, argnums, where)
        diff = tuple(args[p] for p in positions)
        g = _closed_over(func, args, kwargs, positions, as_tuple, has_aux, where)
        primal = diff if as_tuple else diff[0]
        jac, aux = engine(g, primal, chunk_size)
        jac = to_layout(jac, primal, layout)
        return (jac, aux) if has_aux else jac

    mode = "reverse" if transform == "jacrev" else "forward"
    jac_f.__name__ = f"{transform}({name})"
    jac_f.__doc__ = f"Jacobian of {name} by {mode} mode w.r.t. argnums={argnums}."
    return jac_f


def _jacrev_engine(g, primal, chunk_size):
    if chunk_size is None:
        return jax.jacrev(g, has_aux=True)(primal)
    return _jacrev_chunked(g, primal, chunk_size)


def _jacrev_chunked(g, primal, chunk_size):
    out, pullback, aux = jax.vjp(g, primal, has_aux=True)
    out_leaves, out_tree = jax.tree_util.tree_flatten(out)
    in_leaves, in_tree = jax.tree_util.tree_flatten(primal)
    sizes = [math.prod(np.shape(x)) for x in out_leaves]

    def row(i):
        (ct_in,) = pullback(jax.tree_util.tree_unflatten(out_tree, _basis(i, out_leaves)))
        return jax.tree_util.tree_leaves(ct_in)

    rows = jax.lax.map(row, jnp.arange(sum(sizes)), batch_size=chunk_size)
    # rows[k]: (M,) + in_leaf_k.shape  ->  per output leaf: out.shape + in.shape
    per_in = [_split_stacked(r, sizes, [np.shape(o) for o in out_leaves], np.shape(x))
              for r, x in zip(rows, in_leaves)]
    jac = jax.tree_util.tree_unflatten(
        out_tree,
        [jax.tree_util.tree_unflatten(in_tree, [per_in[k][j] for k in range(len(in_leaves))])
         for j in range(len(out_leaves))],
    )
    return jac, aux


def jacfwd(func: Callable, argnums: _args.Argnums = 0, has_aux: bool = False, *,
           randomness: str = "error", chunk_size: int | None = None,
           layout: str = "numerator", mesh: Any = None, mesh_axis: str | None = None,
           gather: bool = False) -> Callable:
    """Jacobian by forward accumulation, as ``torch.func.jacfwd``.

    One JVP ``J e_j`` per input element ``j``, each carried along the forward pass;
    nothing is stored between passes. ``chunk_size=c`` linearizes once and pushes ``c``
    basis tangents at a time. Output structure, layouts and ``mesh=`` (the JVPs split
    over devices, the result sharded along the input axes) as :func:`jacrev`.

    >>> import jax.numpy as jnp
    >>> jacfwd(lambda x: x ** 2)(jnp.array([1.0, 2.0]))     # diag(2x)
    Array([[2., 0.],
           [0., 4.]], dtype=float32)
    """
    _args.check_choice(randomness, ("error", "same"), "jacfwd", "randomness")
    return _jacobian_transform(func, argnums, has_aux, chunk_size, layout, "jacfwd", _jacfwd_engine,
                               mesh, mesh_axis, gather)


def _jacfwd_engine(g, primal, chunk_size):
    with forward_mode():
        if chunk_size is None:
            return jax.jacfwd(g, has_aux=True)(primal)
        return _jacfwd_chunked(g, primal, chunk_size)


def _jacfwd_chunked(g, primal, chunk_size):
    out, lin, aux = jax.linearize(g, primal, has_aux=True)
    out_leaves, out_tree = jax.tree_util.tree_flatten(out)
    in_leaves, in_tree = jax.tree_util.tree_flatten(primal)
    sizes = [math.prod(np.shape(x)) for x in in_leaves]

    def column(j):
        tangent = jax.tree_util.tree_unflatten(in_tree, _basis(j, in_leaves))
        return jax.tree_util.tree_leaves(lin(tangent))

    cols = jax.lax.map(column, jnp.arange(sum(sizes)), batch_size=chunk_size)
    # cols[j]: (N,) + out_leaf_j.shape -> per input leaf k: in.shape + out.shape -> out + in
    blocks = []
    for c, o in zip(cols, out_leaves):
        pieces = _split_stacked(c, sizes, [np.shape(x) for x in in_leaves], np.shape(o))
        blocks.append([
            jnp.moveaxis(p, tuple(range(np.ndim(x))), tuple(range(p.ndim - np.ndim(x), p.ndim)))
            for p, x in zip(pieces, in_leaves)
        ])
    jac = jax.tree_util.tree_unflatten(
        out_tree, [jax.tree_util.tree_unflatten(in_tree, b) for b in blocks])
    return jac, aux


# The pure-mode transform for each mode name ("fwd", "rev").
BY_MODE = {"fwd": jacfwd, "rev": jacrev}


# --------------------------------------------------------------------------------------
# jacobian(mode="auto"): choose forward or reverse accumulation, once per signature.

MODES = ("auto", "fwd", "rev")
POLICIES = ("calibrate", "cost", "sizes")


@dataclasses.dataclass
class ModeChoice:
    """Which accumulation ``jacobian(mode="auto")`` runs for one signature, and why.

    Attributes:
      mode: ``"fwd"`` or ``"rev"``.
      source: how it was decided: ``"calibration"`` (both compiled and timed),
        ``"cost analysis"`` (XLA FLOPs of both compiled candidates), ``"sizes"``
        (``n_in < n_out`` -> fwd), or ``"only supported mode"``.
      in_size, out_size: total number of differentiated input / output elements.
      unsupported: mode -> why it cannot run this function (e.g. a ``custom_vjp``
        has no forward mode).
      seconds: fastest measured time per mode (calibration only).
      flops: XLA's FLOPs per mode (when the candidates were compiled).
      fallback: why a cheaper source was used (e.g. inputs closed over a tracer).
      cacheable: False when nothing could be decided (not remembered).
    """

    mode: str
    source: str
    in_size: int
    out_size: int
    unsupported: dict[str, str] = dataclasses.field(default_factory=dict)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    flops: dict[str, float] = dataclasses.field(default_factory=dict)
    fallback: str = ""
    cacheable: bool = True

    def describe(self) -> str:
        """One sentence: the mode, and the evidence."""
        why = self.source
        if self.source == "calibration":
            why += ": " + ", ".join(f"{m} {t * 1e3:.3g} ms" for m, t in self.seconds.items())
        elif self.source == "cost analysis":
            why += ": " + ", ".join(f"{m} {f:.3g} FLOPs" for m, f in self.flops.items())
        elif self.source == "sizes":
            why += f": n_in={self.in_size}, n_out={self.out_size}"
        for m, reason in self.unsupported.items():
            why += f"; {m} cannot run: {reason}"
        if self.fallback:
            why += f"; ({self.fallback})"
        return f"{self.mode} ({why})"


_CACHE_SIZE = 256
_plan_cache: collections.OrderedDict = collections.OrderedDict()
_plan_lock = threading.Lock()


def clear_plan_cache() -> None:
    """Forget every remembered ``mode="auto"`` choice (and chain plan)."""
    with _plan_lock:
        _plan_cache.clear()


def cached_plan(key: Any, make: Callable[[], Any]) -> Any:
    """``make()`` once per hashable ``key`` (LRU of 256 entries); unhashable keys are
    not cached. A plan whose ``cacheable`` attribute is False is not stored."""
    try:
        hash(key)
    except TypeError:
        return make()
    with _plan_lock:
        if key in _plan_cache:
            _plan_cache.move_to_end(key)
            return _plan_cache[key]
    plan = make()
    if getattr(plan, "cacheable", True):
        with _plan_lock:
            _plan_cache[key] = plan
            while len(_plan_cache) > _CACHE_SIZE:
                _plan_cache.popitem(last=False)
    return plan


def split_dynamic(args: tuple, kwargs: dict):
    """Array leaves of ``(args, kwargs)`` (the inputs of a compiled candidate) and a
    function rebuilding ``(args, kwargs)`` from them; other leaves are closed over."""
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    where = [i for i, leaf in enumerate(leaves) if _cost.is_array_leaf(leaf)]

    def rebuild(dynamic):
        new = list(leaves)
        for i, d in zip(where, dynamic):
            new[i] = d
        return jax.tree_util.tree_unflatten(treedef, new)

    return [leaves[i] for i in where], rebuild


def calibration_inputs(dynamic: list) -> list:
    """Concrete values for the candidates: the arguments themselves, or (for tracers,
    when planning inside ``jax.jit``) deterministic random values of the same shape."""
    key = jax.random.key(0)
    out = []
    for k, leaf in enumerate(dynamic):
        if not isinstance(leaf, jax.core.Tracer) and not isinstance(leaf, jax.ShapeDtypeStruct):
            out.append(leaf)
            continue
        shape, dtype = np.shape(leaf), np.dtype(leaf.dtype)
        if jnp.issubdtype(dtype, jnp.inexact):
            out.append(jax.random.normal(jax.random.fold_in(key, k), shape, dtype))
        else:
            out.append(jnp.zeros(shape, dtype))
    return out


def tree_size(tree: Any) -> int:
    """Total number of elements over the leaves of ``tree`` (arrays or shape structs)."""
    return sum(math.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(tree))


def choose_mode(func: Callable, args: tuple, kwargs: dict | None = None,
                argnums: _args.Argnums = 0, *, has_aux: bool = False,
                chunk_size: int | None = None, policy: str = "calibrate") -> ModeChoice:
    """Decide between ``jacfwd`` and ``jacrev`` for ``func`` at these argument shapes.

    1. Probe which modes can trace the function at all (abstractly, with
       ``jax.eval_shape``; forward mode inside :func:`functorch_lite._mode.forward_mode`
       as :func:`jacfwd` runs it). A ``custom_vjp`` function has no forward mode.
    2. ``policy="calibrate"``: compile both candidates and time them (a few interleaved
       runs, at most ~0.5 s; when they are within 15% of each other, up to 1 s more);
       the faster wins. Inside ``jax.jit`` the arguments are
       tracers, so random inputs of the same shapes are timed instead.
       ``policy="cost"``: compare XLA's FLOPs of the two compiled programs.
       ``policy="sizes"``: forward iff ``n_in < n_out``.
       When a policy cannot run (e.g. the function closes over a tracer) the next one
       is used, and ``fallback`` says why.

    The result is remembered per (function, argument shapes and dtypes, argnums,
    has_aux, chunk_size, policy): later calls cost a dictionary look-up.

    >>> import jax.numpy as jnp
    >>> A = jnp.ones((100, 3))
    >>> choose_mode(lambda x: A @ x, (jnp.ones(3),), policy="sizes").mode
    'fwd'
    """
    kwargs = dict(kwargs or {})
    _args.check_choice(policy, POLICIES, "choose_mode", "policy")
    key = ("mode", func, _cost.signature((args, kwargs)),
           argnums if not isinstance(argnums, list) else tuple(argnums),
           has_aux, chunk_size, policy)
    return cached_plan(key, lambda: _choose_mode(func, args, kwargs, argnums, has_aux,
                                                  chunk_size, policy))


def _choose_mode(func, args, kwargs, argnums, has_aux, chunk_size, policy) -> ModeChoice:
    name = _args.func_name(func)
    where = f"jacobian({name})(*args)"
    positions = _args.normalize_argnums(argnums, len(args), where)
    dynamic, rebuild = split_dynamic(args, kwargs)
    abstract = _cost.abstract(dynamic)
    candidates = {}
    for m, transform in BY_MODE.items():
        jac = transform(func, argnums, has_aux=has_aux, chunk_size=chunk_size)

        def run(*dyn, jac=jac):
            a, kw = rebuild(list(dyn))
            return jac(*a, **kw)

        candidates[m] = run

    unsupported = {}
    for m, run in candidates.items():
        try:
            jax.eval_shape(run, *abstract)
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot run"
            unsupported[m] = _args.first_line(exc)

    in_size = tree_size([args[p] for p in positions])
    out_size = -1
    try:
        def call(*dyn):
            a, kw = rebuild(list(dyn))
            return func(*a, **kw)

        out = jax.eval_shape(call, *abstract)
        out_size = tree_size(out[0] if has_aux else out)
    except Exception:  # noqa: BLE001 - the chosen transform will report it
        pass

    choice = ModeChoice("rev", "", in_size, out_size, unsupported)
    supported = [m for m in ("fwd", "rev") if m not in unsupported]
    if not supported:
        # Neither traces: jacrev will raise the user-facing error; do not remember.
        choice.source = "neither mode traces"
        choice.cacheable = False
        return choice
    if len(supported) == 1:
        choice.mode, choice.source = supported[0], "only supported mode"
        return choice

    if policy in ("calibrate", "cost"):
        try:
            compiled = {m: _cost.compile_abstract(run, *abstract) for m, run in candidates.items()}
            choice.flops = {m: _cost.stats_of(c).flops for m, c in compiled.items()}
            if policy == "calibrate":
                try:
                    with jax.ensure_compile_time_eval():
                        values = calibration_inputs(dynamic)
                        runs = {m: (lambda c=c: c(*values)) for m, c in compiled.items()}
                        choice.seconds = _cost.race(runs)
                        fast, slow = sorted(choice.seconds.values())
                        if slow < 1.15 * fast and slow < 0.05:
                            # a close call near the crossover: look again, longer
                            again = _cost.race(runs, budget=1.0, max_reps=25, min_reps=10)
                            choice.seconds = {m: min(t, again[m]) for m, t in choice.seconds.items()}
                    choice.mode = min(choice.seconds, key=choice.seconds.get)
                    choice.source = "calibration"
                    return choice
                except Exception as exc:  # noqa: BLE001
                    choice.fallback = f"calibration failed, {_args.first_line(exc)}"
            if all(math.isfinite(f) for f in choice.flops.values()):
                choice.mode = "fwd" if choice.flops["fwd"] < choice.flops["rev"] else "rev"
                choice.source = "cost analysis"
                return choice
        except Exception as exc:  # noqa: BLE001
            choice.fallback = f"could not compile the candidates, {_args.first_line(exc)}"
    choice.mode = "fwd" if 0 <= in_size < out_size else "rev"
    choice.source = "sizes"
    return choice


def jacobian(func: Callable, argnums: _args.Argnums = 0, *, mode: str = "auto",
             layout: str = "numerator", chunk_size: int | None = None,
             has_aux: bool = False, mesh: Any = None, mesh_axis: str | None = None,
             gather: bool = False) -> Callable:
    """Jacobian by forward, reverse, or automatically chosen accumulation.

    ``mode="fwd"`` is :func:`jacfwd` (n JVPs, one per input element), ``"rev"`` is
    :func:`jacrev` (m VJPs after one stored forward pass). ``"auto"`` runs the one that
    is faster for this function at these shapes: on first call it checks which modes
    the function supports (a ``custom_vjp`` has no forward mode), then compiles and
    times both (:func:`choose_mode`); the choice is remembered per signature, so later
    calls (and re-traces under ``jax.jit``) only look it up. Sizes alone mislead: on a
    CPU reverse mode often wins even for square Jacobians.

    On a :func:`functorch_lite.chain`, ``"auto"`` multiplies the stages' Jacobians in
    the cheapest bracketing (mixed mode); ``"fwd"``/``"rev"`` run the pure modes.
    :func:`functorch_lite.explain` shows what was chosen and why.

    Output structure, ``layout``, ``has_aux`` and ``mesh=`` as :func:`jacrev`.

    >>> import jax.numpy as jnp
    >>> A = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    >>> jacobian(lambda x: A @ x)(jnp.zeros(2))
    Array([[1., 2.],
           [3., 4.],
           [5., 6.]], dtype=float32)
    >>> jacobian(lambda x: A @ x, mode="rev", layout="denominator")(jnp.zeros(2)).shape
    (2, 3)
    """
    transform = "jacobian"
    _args.check_choice(mode, MODES, transform, "mode")
    _prepare(func, argnums, has_aux, chunk_size, layout, transform)
    mesh_axis = _mesh.check(mesh, mesh_axis, gather, transform)
    hook = getattr(func, "__fl_jacobian__", None)
    if hook is not None and mesh is None:  # a chain's mixed mode is not split; mesh= runs a pure mode
        return hook(argnums=argnums, mode=mode, layout=layout, chunk_size=chunk_size,
                    has_aux=has_aux)
    name = _args.func_name(func)
    options = dict(has_aux=has_aux, chunk_size=chunk_size, layout=layout)
    if mesh is not None:
        options.update(mesh=mesh, mesh_axis=mesh_axis, gather=gather)
    if mode != "auto":
        jac_f = BY_MODE[mode](func, argnums, **options)
    else:
        def jac_f(*args, **kwargs):
            where = f"jacobian({name})(*args)"
            _args.differentiable_positions(args, argnums, where)
            choice = choose_mode(func, args, kwargs, argnums, has_aux=has_aux,
                                 chunk_size=chunk_size)
            run = BY_MODE[choice.mode](func, argnums, **options)
            return run(*args, **kwargs)

    jac_f.__name__ = f"jacobian({name})"
    jac_f.__doc__ = f"Jacobian of {name} ({mode} mode) w.r.t. argnums={argnums}."
    return jac_f
