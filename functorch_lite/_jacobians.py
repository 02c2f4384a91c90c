"""Jacobians: ``jacrev``, ``jacfwd``, chunking and layouts.

For ``f: R^n -> R^m`` the Jacobian is the ``m x n`` matrix ``J[i, j] = df_i/dx_j``
(numerator layout; for tensors ``out.shape + in.shape``, the torch/JAX convention). Its
transpose is the denominator layout (``in.shape + out.shape``).

- ``jacrev`` builds ``J`` row by row: one VJP ``e_i^T J`` per output element, m passes
  after one stored forward pass.
- ``jacfwd`` builds it column by column: one JVP ``J e_j`` per input element, n passes.
- ``jacobian(mode="auto")`` runs what the planner (:mod:`functorch_lite._planner`)
  finds cheapest by reading the program: forward, reverse, or mixed mode at the
  program's narrow cuts (:func:`choose_mode` returns the plan).

Without ``chunk_size`` all passes run at once, vectorised (``vmap`` over the whole
identity basis), exactly as ``jax.jacrev``/``jax.jacfwd``. With ``chunk_size=c`` a
``lax.map`` walks the basis ``c`` vectors at a time, and each basis vector is made from
its index inside the loop (a one-hot), so neither the identity nor more than ``c``
simultaneous backward passes ever exist: temp memory scales with ``c``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _args, _cost, _mesh
from ._mode import forward_mode
from ._planner.plans import JacobianPlan

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


def _prepare(func, argnums, has_aux, chunk_size, layout, transform, holomorphic=False):
    _args.check_callable(func, transform)
    _, as_tuple = _args.check_argnums(argnums, transform)
    _args.check_bool(has_aux, transform, "has_aux")
    _args.check_bool(holomorphic, transform, "holomorphic")
    chunk_size = _args.check_chunk_size(chunk_size, transform)
    _args.check_choice(layout, LAYOUTS, transform, "layout")
    return as_tuple, chunk_size


def _closed_over(func, args, kwargs, positions, as_tuple, has_aux, where, check=None):
    """``g(diff) -> (out, aux)``, the non-differentiated args closed over; ``diff`` is
    the tuple of differentiated args (tuple argnums) or the one argument."""

    order = _args.order_of(tuple(args[p] for p in positions))

    def call(diff):
        diff = diff if as_tuple else (diff,)
        diff = _args.reorder(order, diff)      # the caller's dict order, not JAX's
        return func(*_args.replace_args(args, positions, diff), **kwargs)

    if check is None:
        return _args.checked_output(call, has_aux, where)
    return _args.checked_output(call, has_aux, where, check=check)


def jacrev(func: Callable, argnums: _args.Argnums = 0, *, has_aux: bool = False,
           chunk_size: int | None = None, _preallocate_and_copy: bool = False,
           layout: str = "numerator", holomorphic: bool = False, mesh: Any = None,
           mesh_axis: str | None = None, gather: bool = False) -> Callable:
    """Jacobian by reverse accumulation, as ``torch.func.jacrev``.

    One stored forward pass, then one VJP ``e_i^T J`` per output element ``i``.
    ``chunk_size=c`` runs the VJPs ``c`` at a time (memory ~ c backward passes).
    ``_preallocate_and_copy`` is torch's memory option for chunks; it is accepted and
    changes nothing here (the chunks are stacked by ``lax.map``).

    Inputs and outputs are real, as torch.func requires; ``holomorphic=True`` (JAX's
    meaning) takes complex inputs and outputs of a holomorphic ``f`` and gives
    ``J = f'(z)``. Chunked and unchunked runs apply the same checks.

    Returns a function giving the Jacobian (``(jac, aux)`` with ``has_aux``): nested
    like the output, then like ``argnums`` (a tuple for tuple argnums), dicts in the
    caller's key order at both levels; each leaf ``out.shape + in.shape``
    (``layout="numerator"``) or ``in.shape + out.shape`` (``"denominator"``).

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
    _args.check_bool(_preallocate_and_copy, "jacrev", "_preallocate_and_copy")
    return _jacobian_transform(func, argnums, has_aux, chunk_size, layout, "jacrev",
                               _jacrev_engine, holomorphic, mesh, mesh_axis, gather)


def _jacobian_transform(func, argnums, has_aux, chunk_size, layout, transform, engine,
                        holomorphic=False, mesh=None, mesh_axis=None, gather=False):
    """The body shared by jacrev and jacfwd; ``engine(g, primal, chunk_size, holomorphic)
    -> (jac, aux)`` computes the numerator-layout Jacobian of ``g`` (which returns
    ``(out, aux)``); ``mesh=`` hands the call to :mod:`functorch_lite._mesh`."""
    as_tuple, chunk_size = _prepare(func, argnums, has_aux, chunk_size, layout, transform,
                                    holomorphic)
    mesh_axis = _mesh.check(mesh, mesh_axis, gather, transform)
    if holomorphic and mesh is not None:
        raise ValueError(f"{transform}: mesh= splits real Jacobians only; with "
                         "holomorphic=True drop mesh= (or split the real and imaginary "
                         "parts yourself).")
    name = _args.func_name(func)
    check = functools.partial(_args.check_inexact_output, transform=transform,
                              complex_output="require" if holomorphic else "reject")

    def jac_f(*args, **kwargs):
        if mesh is not None:
            return _mesh.jacobian(func, args, kwargs, argnums=argnums, has_aux=has_aux,
                                  mode="rev" if engine is _jacrev_engine else "fwd",
                                  chunk_size=chunk_size, layout=layout, mesh=mesh,
                                  mesh_axis=mesh_axis, gather=gather, transform=transform)
        where = f"{transform}({name})(*args)"
        positions = _args.differentiable_positions(args, argnums, where)
        for p in positions:
            _args.check_complex_inputs(args[p], where, f"args[{p}]", holomorphic=holomorphic,
                                       transform=transform)
        diff = tuple(args[p] for p in positions)
        g = _closed_over(func, args, kwargs, positions, as_tuple, has_aux, where, check)
        primal = diff if as_tuple else diff[0]
        jac, aux = engine(g, primal, chunk_size, holomorphic)
        jac = to_layout(jac, primal, layout)
        jac = _args.reorder_jacobian(g.orders["out"], _args.order_of(primal), jac)
        if has_aux:
            aux = _args.reorder(g.orders["aux"], aux)
        return (jac, aux) if has_aux else jac

    mode = "reverse" if transform == "jacrev" else "forward"
    return _args.named(jac_f, func, f"{transform}({name})",
                       f"Jacobian of {name} by {mode} mode w.r.t. argnums={argnums}.",
                       torch_name=True)


def _jacrev_engine(g, primal, chunk_size, holomorphic=False):
    if chunk_size is None:
        return jax.jacrev(g, has_aux=True, holomorphic=holomorphic)(primal)
    return _jacrev_chunked(g, primal, chunk_size)


def _map_basis(fn, n: int, chunk_size: int, specs: list) -> list:
    """``lax.map(fn, arange(n), batch_size=chunk_size)`` for ``fn(i) -> leaves`` shaped
    ``specs`` (``(shape, dtype)`` pairs): stacked ``(n,) + shape`` leaves. Zero-size
    leaves (and ``n == 0``) are filled in directly; ``lax.map`` cannot stack them."""
    keep = [k for k, (shape, _) in enumerate(specs) if n and math.prod(shape)]
    stacked = {}
    if keep:
        out = jax.lax.map(lambda i: [fn(i)[k] for k in keep], jnp.arange(n),
                          batch_size=chunk_size)
        stacked = dict(zip(keep, out))
    return [stacked[k] if k in stacked else jnp.zeros((n,) + tuple(shape), dtype)
            for k, (shape, dtype) in enumerate(specs)]


def _flat_pair(out: Any, primal: Any) -> tuple:
    """``(out_leaves, out_tree, in_leaves, in_tree)``."""
    return (*jax.tree_util.tree_flatten(out), *jax.tree_util.tree_flatten(primal))


def _jacrev_chunked(g, primal, chunk_size):
    out, pullback, aux = jax.vjp(g, primal, has_aux=True)
    out_leaves, out_tree, in_leaves, in_tree = _flat_pair(out, primal)
    sizes = [math.prod(np.shape(x)) for x in out_leaves]

    def row(i):
        (ct_in,) = pullback(jax.tree_util.tree_unflatten(out_tree, _basis(i, out_leaves)))
        return jax.tree_util.tree_leaves(ct_in)

    specs = [(np.shape(x), _args.tangent_dtype(_args.leaf_dtype(x))) for x in in_leaves]
    rows = _map_basis(row, sum(sizes), chunk_size, specs)
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
           layout: str = "numerator", holomorphic: bool = False, mesh: Any = None,
           mesh_axis: str | None = None, gather: bool = False) -> Callable:
    """Jacobian by forward accumulation, as ``torch.func.jacfwd``.

    One JVP ``J e_j`` per input element ``j``, each carried along the forward pass;
    nothing is stored between passes. ``chunk_size=c`` linearizes once and pushes ``c``
    basis tangents at a time. Output structure, layouts, the real-values rule,
    ``holomorphic`` and ``mesh=`` (the JVPs split over devices, the result sharded along
    the input axes) as :func:`jacrev`.

    >>> import jax.numpy as jnp
    >>> jacfwd(lambda x: x ** 2)(jnp.array([1.0, 2.0]))     # diag(2x)
    Array([[2., 0.],
           [0., 4.]], dtype=float32)
    """
    _args.check_choice(randomness, ("error", "same"), "jacfwd", "randomness")
    return _jacobian_transform(func, argnums, has_aux, chunk_size, layout, "jacfwd",
                               _jacfwd_engine, holomorphic, mesh, mesh_axis, gather)


def _jacfwd_engine(g, primal, chunk_size, holomorphic=False):
    with forward_mode():
        if chunk_size is None:
            return jax.jacfwd(g, has_aux=True, holomorphic=holomorphic)(primal)
        return _jacfwd_chunked(g, primal, chunk_size)


def _jacfwd_chunked(g, primal, chunk_size):
    out, lin, aux = jax.linearize(g, primal, has_aux=True)
    out_leaves, out_tree, in_leaves, in_tree = _flat_pair(out, primal)
    sizes = [math.prod(np.shape(x)) for x in in_leaves]

    def column(j):
        tangent = jax.tree_util.tree_unflatten(in_tree, _basis(j, in_leaves))
        return jax.tree_util.tree_leaves(lin(tangent))

    specs = [(np.shape(o), np.dtype(o.dtype)) for o in out_leaves]
    cols = _map_basis(column, sum(sizes), chunk_size, specs)
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
_ENGINES = {"fwd": ("jacfwd", _jacfwd_engine), "rev": ("jacrev", _jacrev_engine)}


def pure_mode(mode: str, func: Callable, argnums: _args.Argnums = 0, *,
              transform: str | None = None, has_aux: bool = False,
              chunk_size: int | None = None, layout: str = "numerator",
              holomorphic: bool = False, mesh: Any = None, mesh_axis: str | None = None,
              gather: bool = False) -> Callable:
    """``jacfwd``/``jacrev`` (``mode`` ``"fwd"``/``"rev"``) whose messages name
    ``transform`` (e.g. ``"jacobian"``, ``"hessian"``: the transform the user called)."""
    default, engine = _ENGINES[mode]
    return _jacobian_transform(func, argnums, has_aux, chunk_size, layout,
                               transform or default, engine, holomorphic, mesh, mesh_axis, gather)


# --------------------------------------------------------------------------------------
# jacobian(mode="auto"): the planner (functorch_lite._planner) decides, from the program.

MODES = ("auto", "fwd", "rev")
POLICIES = ("static", "calibrate", "sizes")

# What jacobian(mode="auto") decided for one signature: the planner's plan object
# (kind "fwd" / "rev" / "mixed", the static costs, cuts, unsupported modes, reasons).
ModeChoice = JacobianPlan


def clear_plan_cache() -> None:
    """Forget every remembered ``mode="auto"`` plan (Jacobian and Hessian). The plans
    live in caches registered with :mod:`functorch_lite._caches`, so
    ``fl.clear_caches()`` clears them too."""
    from ._planner import api

    api.clear()


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


def tree_size(tree: Any) -> int:
    """Total number of elements over the leaves of ``tree`` (arrays or shape structs)."""
    return sum(math.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(tree))


def choose_mode(func: Callable, args: tuple, kwargs: dict | None = None,
                argnums: _args.Argnums = 0, *, has_aux: bool = False,
                chunk_size: int | None = None, policy: str = "static") -> ModeChoice:
    """The plan ``jacobian(func, argnums, mode="auto")`` runs at these arguments.

    ``policy="static"`` (the default, what ``jacobian`` uses): the planner reads the
    program (one ``jax.make_jaxpr``) and prices forward, reverse and mixed mode by its
    static model; deterministic. ``"calibrate"``: the same candidates compiled and
    timed (what ``jacobian(..., calibrate=True)`` uses; needs concrete arguments).
    ``"sizes"``: forward iff ``n_in < n_out`` (no program read; the modes the function
    supports are not checked).

    The plan is remembered per (function, argument structure, shapes, dtypes and
    non-array values, argnums, has_aux, chunk_size, policy).

    >>> import jax.numpy as jnp
    >>> A = jnp.ones((100, 3))
    >>> choose_mode(lambda x: A @ x, (jnp.ones(3),)).mode
    'fwd'
    """
    from ._planner import api

    kwargs = dict(kwargs or {})
    _args.check_choice(policy, POLICIES, "choose_mode", "policy")
    where = f"jacobian({_args.func_name(func)})(*args)"
    positions = _args.differentiable_positions(args, argnums, where)
    if policy == "sizes":
        in_size = tree_size([args[p] for p in positions])
        out = jax.eval_shape(lambda *a: func(*a, **kwargs), *args)
        out_size = tree_size(out[0] if has_aux else out)
        kind = "fwd" if 0 <= in_size < out_size else "rev"
        return JacobianPlan(kind=kind, in_size=in_size, out_size=out_size,
                            costs={"fwd": float(in_size), "rev": float(out_size)}, chain=None,
                            cuts=(), profile=(in_size, out_size), names=(), source="sizes")
    plan, _ = api.plan_jacobian(func, args, kwargs, argnums, has_aux=has_aux,
                                chunk_size=chunk_size, calibrate=policy == "calibrate",
                                where=where)
    return plan


def jacobian(func: Callable, argnums: _args.Argnums = 0, *, mode: str = "auto",
             layout: str = "numerator", chunk_size: int | None = None,
             has_aux: bool = False, calibrate: bool = False,
             holomorphic: bool = False, sparse: bool = False, sparsity: Any = None,
             output: str = "bcoo", check: bool = False, mesh: Any = None,
             mesh_axis: str | None = None, gather: bool = False) -> Callable:
    """Jacobian by forward, reverse, mixed, or automatically planned accumulation.

    ``mode="fwd"`` is :func:`jacfwd` (n JVPs, one per input element), ``"rev"`` is
    :func:`jacrev` (m VJPs after one stored forward pass). ``"auto"`` lets the planner
    read the function's program (one ``jax.make_jaxpr`` at these shapes and dtypes) and
    price, by a static FLOP model, forward mode (``n·T``), reverse mode (``m·T``) and
    mixed mode at the program's narrow vertex cuts (sets of live values that separate
    the inputs from the outputs; for an autoencoder R^2000 -> R^8 -> R^2000 written as
    one function, 8 VJPs, 8 JVPs and one product instead of 2000 passes). Modes the
    function cannot run (a ``custom_vjp`` has no forward mode) are ruled out by tracing.
    Deterministic (same program, same plan and compiled code in every process), cached
    per signature. ``calibrate=True`` compiles and times the candidates (opt-in).

    :func:`functorch_lite.explain` shows the plan that runs, with its cuts and costs.
    Output structure, ``layout``, ``has_aux`` and ``holomorphic`` as :func:`jacrev`
    (a holomorphic Jacobian runs reverse mode: the planner prices real programs).

    ``sparse=True`` (or a ``sparsity=`` pattern) computes a sparse Jacobian: the pattern
    read from the jaxpr at trace time, colored, a few compressed JVPs/VJPs, returned as
    a BCOO (``output="dense"``: dense); ``check=True`` compares the pattern with a dense
    Jacobian at a random point. See :func:`functorch_lite.sparsity` and docs/sparse.md.

    ``mesh=`` splits the passes over a device mesh as :func:`jacrev`; ``mode="auto"``
    splits the planner's cheaper pure mode, priced per device (a mixed plan is not split).

    >>> import jax.numpy as jnp
    >>> A = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    >>> jacobian(lambda x: A @ x)(jnp.zeros(2))
    Array([[1., 2.],
           [3., 4.],
           [5., 6.]], dtype=float32)
    >>> jacobian(lambda x: A @ x, mode="rev", layout="denominator")(jnp.zeros(2)).shape
    (2, 3)
    """
    if sparse or sparsity is not None or output != "bcoo" or check:
        from . import _sparse
        return _sparse.jacobian(func, argnums, mode=mode, layout=layout, chunk_size=chunk_size,
                                has_aux=has_aux, sparsity=sparsity, output=output, check=check,
                                sparse=sparse or sparsity is not None, mesh=mesh,
                                mesh_axis=mesh_axis, gather=gather)
    mesh_axis = _check_jacobian(func, argnums, mode, layout, chunk_size, has_aux, calibrate,
                                holomorphic, mesh, mesh_axis, gather)
    hook = getattr(func, "__fl_jacobian__", None)
    if hook is not None and mesh is None:  # a chain's mixed mode is not split; mesh= runs a pure mode
        return _chain_jacobian(hook, holomorphic, argnums=argnums, mode=mode, layout=layout,
                               chunk_size=chunk_size, has_aux=has_aux, calibrate=calibrate)
    name = _args.func_name(func)
    options = dict(has_aux=has_aux, chunk_size=chunk_size, layout=layout, holomorphic=holomorphic,
                   **({} if mesh is None else dict(mesh=mesh, mesh_axis=mesh_axis, gather=gather)))
    jac_f = (_auto(func, argnums, name, calibrate, options) if mode == "auto"
             else pure_mode(mode, func, argnums, transform="jacobian", **options))
    jac_f.__name__, jac_f.__doc__ = (f"jacobian({name})",
                                     f"Jacobian of {name} ({mode} mode) w.r.t. argnums={argnums}.")
    return jac_f


def _chain_jacobian(hook: Callable, holomorphic: bool, **options: Any) -> Callable:
    """``jacobian`` of a :func:`~functorch_lite.chain`: its own ``__fl_jacobian__``."""
    if holomorphic:
        raise ValueError("jacobian: holomorphic=True is not supported on a chain; "
                         "use jacobian(lambda x: chain(x), holomorphic=True).")
    return hook(**options)


def _check_jacobian(func, argnums, mode, layout, chunk_size, has_aux, calibrate, holomorphic,
                    mesh, mesh_axis, gather) -> str | None:
    """``jacobian``'s checks when the transform is built; returns the mesh axis name."""
    _args.check_choice(mode, MODES, "jacobian", "mode")
    _prepare(func, argnums, has_aux, chunk_size, layout, "jacobian", holomorphic)
    _args.check_bool(calibrate, "jacobian", "calibrate")
    if calibrate and mode != "auto":
        raise ValueError(f"jacobian: calibrate=True times the candidates of mode='auto'; "
                         f"with mode={mode!r} there is nothing to choose. Drop calibrate or "
                         "use mode='auto'.")
    return _mesh.check(mesh, mesh_axis, gather, "jacobian")


def _auto(func: Callable, argnums: Any, name: str, calibrate: bool, options: dict) -> Callable:
    """``jacobian(func, mode="auto")``: planned at each call's signature (cached)."""
    has_aux, chunk_size = options["has_aux"], options["chunk_size"]

    def jac_f(*args, **kwargs):
        where = f"jacobian({name})(*args)"
        if options["holomorphic"]:
            _args.differentiable_positions(args, argnums, where)
            return pure_mode("rev", func, argnums, transform="jacobian", **options)(*args, **kwargs)
        if "mesh" in options:
            return _split_planned(func, argnums, args, kwargs, has_aux, chunk_size, where,
                                  "jacobian", options)
        return planned_jacobian(func, argnums, args, kwargs, has_aux=has_aux,
                                chunk_size=chunk_size, layout=options["layout"],
                                calibrate=calibrate, where=where)

    return jac_f


def _split_planned(func, argnums, args, kwargs, has_aux, chunk_size, where, transform, options):
    """``jacobian(mode="auto", mesh=...)``: the planner's cheaper pure mode, split over
    the mesh (a mixed plan's stages are not split)."""
    from ._planner import api

    _args.differentiable_positions(args, argnums, where)
    axis = options["mesh_axis"]
    plan, _ = api.plan_jacobian(func, args, kwargs, argnums, has_aux=has_aux,
                                chunk_size=chunk_size, where=where,
                                devices=int(options["mesh"].shape[axis]))
    pure = plan.kind if plan.kind in BY_MODE else min(BY_MODE, key=lambda k: plan.costs[k])
    return pure_mode(pure, func, argnums, transform=transform, **options)(*args, **kwargs)


def planned_jacobian(func: Callable, argnums: _args.Argnums, args: tuple, kwargs: dict, *,
                     has_aux: bool, chunk_size: int | None, layout: str, calibrate: bool,
                     where: str) -> Any:
    """``jacobian(func, argnums, mode="auto")(*args, **kwargs)``: plan (or look the plan
    up), then run exactly that plan."""
    from ._planner import api

    _args.differentiable_positions(args, argnums, where)
    plan, traced = api.plan_jacobian(func, args, kwargs, argnums, has_aux=has_aux,
                                     chunk_size=chunk_size, calibrate=calibrate, where=where)
    return api.run_jacobian(plan, traced, func, args, kwargs, argnums, has_aux=has_aux,
                            chunk_size=chunk_size, layout=layout, where=where)
