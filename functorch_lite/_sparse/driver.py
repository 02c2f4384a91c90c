"""Sparse Jacobians and Hessians: detect, color, run compressed passes, decompress.

For ``f: R^n -> R^m`` with a pattern ``P`` and a column coloring ``c`` with ``p`` colors,
the seed matrix ``S = [s_1 .. s_p]``, ``s_k = sum_{c(j)=k} e_j``, gives ``B = J S`` in
``p`` JVPs (vectorised with ``vmap``, or ``chunk_size`` at a time with ``lax.map``), and

    J[i, j] = B[i, c(j)]        for every (i, j) in P

(a gather with static indices). Row colorings do the same with VJPs (``W^T J``), a
bicoloring both, and a star-colored Hessian reads ``H[i, j]`` from ``(H S)[i, c(j)]`` or
``(H S)[j, c(i)]``, whichever is not shared.

Everything static (the pattern from the jaxpr, the colorings, the seeds and the gather
indices) is computed in NumPy while JAX traces, so all of it works inside ``jax.jit``
with no separate preparation step; it is remembered per jaxpr (``_caches``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax.experimental import sparse as jsparse
from jax.flatten_util import ravel_pytree

from .. import _args, _caches
from .._jaxpr import stage
from .._jaxpr.sparsity import jacobian_pattern
from .._mode import forward_mode
from . import coloring as _coloring
from .pattern import Pattern, Plan, as_pattern

__all__ = ["jacobian", "hessian", "sparsity", "jacobian_sparsity", "hessian_sparsity"]

OUTPUTS = ("bcoo", "dense")
_patterns = _caches.lru("sparse.patterns", maxsize=64)


# ----------------------------------------------------------------------------- detection


def _digest(closed) -> tuple:
    """A hashable key of a closed jaxpr: its text, and its constants (their bytes, since
    known constants shape the pattern; tracers by shape only)."""
    parts = [str(closed.jaxpr)]
    for c in closed.consts:
        if isinstance(c, jax.core.Tracer):
            parts.append(f"tracer{np.shape(c)}{c.dtype}")
        else:
            try:
                arr = np.asarray(c)
                parts.append(f"{arr.shape}{arr.dtype}" + hashlib.sha1(np.ascontiguousarray(arr).tobytes()).hexdigest())
            except Exception:  # noqa: BLE001 - opaque constants (keys): by type
                parts.append(type(c).__name__)
    return tuple(parts)


def _detect(func: Callable, flat: Any, out_shape: tuple, in_shape: tuple, name: str,
            symmetric: bool) -> Pattern:
    closed = stage(func, jax.ShapeDtypeStruct(np.shape(flat), flat.dtype))
    key = ("hessian" if symmetric else "jacobian", _digest(closed), name)

    def make():
        mat = jacobian_pattern(closed, name)
        if symmetric:
            mat = sp.csr_matrix(mat + mat.T)
        return Pattern(mat, out_shape, in_shape, symmetric=symmetric, name=name, source="jaxpr")

    return _patterns.get_or_compute(key, make)


# ----------------------------------------------------------------------------- helpers


def _check_output(out: Any, where: str) -> None:
    if not isinstance(out, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)) and not hasattr(out, "aval"):
        raise TypeError(
            f"{where}: sparse=True needs f to return one array; got {_args.describe(out)}. "
            "Return a single array (e.g. jnp.concatenate the pieces) or use sparse=False.")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"{where}: sparse=True needs a real floating-point output; got dtype {out.dtype}.")


def _check_inputs(flat: Any, where: str) -> None:
    if not jnp.issubdtype(flat.dtype, jnp.floating):
        raise TypeError(f"{where}: sparse=True needs real floating-point inputs; got dtype {flat.dtype}.")


def _seeds(colors: np.ndarray, dtype) -> np.ndarray:
    """One row per color: the sum of the basis vectors of that color (-1: no color)."""
    k = _coloring.ncolors(colors)
    seeds = np.zeros((k, colors.size), dtype)
    where = np.flatnonzero(colors >= 0)
    seeds[colors[where], where] = 1
    return seeds


def _batched(fn: Callable, seeds: np.ndarray, chunk_size: int | None) -> jax.Array:
    seeds = jnp.asarray(seeds)
    if seeds.shape[0] == 0:
        return None
    if chunk_size is None or chunk_size >= seeds.shape[0]:
        return jax.vmap(fn)(seeds)
    return jax.lax.map(fn, seeds, batch_size=chunk_size)


def decompression(pattern: Pattern, plan: Plan) -> tuple:
    """Static gather indices of a plan: ``(fwd_idx, rev_idx, from_fwd)``.

    ``fwd_idx[k]`` indexes the flattened JVP products ``B`` (colors x m) for nonzero
    ``k``: ``J[i, j] = B[c(j), i]``; ``rev_idx[k]`` the flattened VJP products ``W``
    (colors x n): ``J[i, j] = W[r(i), j]``; ``from_fwd[k]`` picks between them.
    """
    key = ("decompression", id(plan))
    if key in pattern._cache:
        return pattern._cache[key]
    rows, cols = pattern.rows, pattern.cols
    m, n = pattern.matrix_shape
    fwd_idx = rev_idx = None
    if plan.n_jvp:
        fwd_idx = np.maximum(plan.col_colors[cols], 0) * m + rows
    if plan.n_vjp:
        rev_idx = np.maximum(plan.row_colors[rows], 0) * n + cols
    if plan.kind == "bi":
        from_fwd = np.asarray(plan.fwd_entry, bool)
    else:
        from_fwd = np.full(rows.size, bool(plan.n_jvp))
    out = (fwd_idx, rev_idx, from_fwd)
    pattern._cache[key] = out
    return out


def _compressed_values(fo: Callable, flat: jax.Array, pattern: Pattern, plan: Plan,
                       chunk_size: int | None) -> jax.Array:
    """The pattern's nonzero values (row-major order) of the Jacobian of ``fo`` at ``flat``."""
    dtype = np.dtype(flat.dtype)
    fwd_idx, rev_idx, from_fwd = decompression(pattern, plan)
    if pattern.nnz == 0:
        return jnp.zeros(0, dtype)
    products = []
    if plan.n_jvp:
        def jvp(s):
            return jax.jvp(fo, (flat,), (s,))[1]

        with forward_mode():
            B = _batched(jvp, _seeds(plan.col_colors, dtype), chunk_size)      # (p, m)
        products.append(B.reshape(-1))
    if plan.n_vjp:
        out, pullback = jax.vjp(fo, flat)
        W = _batched(lambda w: pullback(w)[0], _seeds(plan.row_colors, np.dtype(out.dtype)), chunk_size)
        products.append(W.reshape(-1))
    if len(products) == 2:
        # one gather from both products: JVP entries index B, VJP entries W (after B)
        idx = np.where(from_fwd, fwd_idx, products[0].shape[0] + rev_idx)
        return jnp.concatenate(products)[idx]
    return products[0][fwd_idx if plan.n_jvp else rev_idx]


def _hvp_values(grad_f: Callable, flat: jax.Array, pattern: Pattern, plan: Plan,
                chunk_size: int | None, outer: str) -> jax.Array:
    """Nonzero values of the Hessian from one HVP per star color."""
    colors = plan.col_colors
    n = pattern.matrix_shape[0]
    seeds = _seeds(colors, np.dtype(flat.dtype))
    if seeds.shape[0] == 0:
        return jnp.zeros(pattern.nnz, flat.dtype)
    if outer == "fwd":
        def hv(v):
            return jax.jvp(grad_f, (flat,), (v,))[1]

        with forward_mode():
            B = _batched(hv, seeds, chunk_size)
    else:
        _, pullback = jax.vjp(grad_f, flat)
        B = _batched(lambda v: pullback(v)[0], seeds, chunk_size)
    rows, cols = pattern.rows, pattern.cols
    idx = _star_indices(pattern, colors, rows, cols, n)
    return B.reshape(-1)[idx]


def _star_indices(pattern, colors, rows, cols, n):
    """Flat index into ``B = (H S)^T`` (colors x n) of each nonzero: ``(c(j), i)`` when
    ``j`` is ``i``'s only neighbour of color ``c(j)``, else ``(c(i), j)``."""
    key = ("star_idx",)
    if key in pattern._cache:
        return pattern._cache[key]
    k = _coloring.ncolors(colors)
    offdiag = rows != cols
    adj = sp.csr_matrix((np.ones(int(offdiag.sum()), np.float32), (rows[offdiag], cols[offdiag])), shape=(n, n))
    onehot = sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), colors)), shape=(n, k))
    counts = (adj @ onehot).tocsr()                           # neighbours of i per color
    count_ij = np.asarray(counts[rows, colors[cols]]).ravel()
    direct = (~offdiag) | (count_ij == 1)
    idx = np.where(direct, colors[cols] * n + rows, colors[rows] * n + cols)
    pattern._cache[key] = idx
    return idx


def _leaf_blocks(values, pattern: Pattern, out_shape, leaves_in, output: str, layout: str,
                 row_leaves=None):
    """Split the nonzeros into one block per (output block, input leaf): BCOO or dense
    arrays ``out_shape + leaf.shape`` (numerator) or ``leaf.shape + out_shape``."""
    rows, cols = pattern.rows, pattern.cols
    sizes = [math.prod(np.shape(x)) for x in leaves_in]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    row_parts = [(0, math.prod(out_shape), tuple(out_shape))] if row_leaves is None else [
        (int(offsets[a]), int(offsets[a + 1]), tuple(np.shape(leaves_in[a]))) for a in range(len(leaves_in))]
    result = []
    for r0, r1, rshape in row_parts:
        per_in = []
        for k, leaf in enumerate(leaves_in):
            c0, c1 = offsets[k], offsets[k + 1]
            sel = np.flatnonzero((cols >= c0) & (cols < c1) & (rows >= r0) & (rows < r1))
            v = values if sel.size == values.shape[0] else values[sel]
            lshape = tuple(np.shape(leaf))
            r, c = rows[sel] - r0, cols[sel] - c0
            if layout == "denominator":
                shape = lshape + rshape
                multi = np.concatenate([np.stack(np.unravel_index(c, lshape), 1) if lshape else np.zeros((sel.size, 0), np.int64),
                                        np.stack(np.unravel_index(r, rshape), 1) if rshape else np.zeros((sel.size, 0), np.int64)], 1)
                flat = c * math.prod(rshape) + r
            else:
                shape = rshape + lshape
                multi = np.concatenate([np.stack(np.unravel_index(r, rshape), 1) if rshape else np.zeros((sel.size, 0), np.int64),
                                        np.stack(np.unravel_index(c, lshape), 1) if lshape else np.zeros((sel.size, 0), np.int64)], 1)
                flat = r * math.prod(lshape) + c
            if output == "dense" or not shape:
                dense = jnp.zeros(math.prod(shape), v.dtype).at[flat].set(v, unique_indices=True)
                per_in.append(dense.reshape(shape))
            else:
                per_in.append(jsparse.BCOO((v, jnp.asarray(multi.astype(np.int32))), shape=shape,
                                           indices_sorted=layout != "denominator", unique_indices=True))
        result.append(per_in)
    return result


def _random_point(flat) -> jax.Array:
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.standard_normal(np.shape(flat)), flat.dtype)


def _check_against_dense(dense_fn: Callable, flat, pattern: Pattern, where: str, closed_tracers: bool):
    """``check=True``: the dense Jacobian (or Hessian) at a random point must have no
    nonzero outside the pattern."""
    if closed_tracers:
        raise ValueError(
            f"{where}: check=True evaluates the dense derivative at a random point while tracing, "
            "but the other arguments are tracers (inside jax.jit/vmap). Run the check once outside "
            "jax.jit, then drop check=True.")
    points = [_random_point(flat)]
    if not isinstance(flat, jax.core.Tracer):
        points.append(flat)
    with jax.ensure_compile_time_eval():
        for x in points:
            try:
                dense = np.asarray(jax.jit(dense_fn)(x)).reshape(pattern.matrix_shape)
            except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError) as exc:
                raise ValueError(
                    f"{where}: check=True evaluates the dense derivative at a random point while "
                    "tracing, but the function closes over traced values (inside jax.jit/vmap). Run "
                    "the check once outside jax.jit, then drop check=True.") from exc
            missing = (dense != 0) & ~pattern.matrix.toarray()
            if missing.any():
                i, j = np.argwhere(missing)[0]
                raise ValueError(
                    f"{where}: the sparsity pattern misses {int(missing.sum())} nonzero(s) of the dense "
                    f"derivative of {pattern.name} (e.g. entry ({i}, {j}) of the {pattern.matrix_shape[0]}x"
                    f"{pattern.matrix_shape[1]} matrix, value {dense[i, j]:.3g}). Pass a correct "
                    "`sparsity=` (or none, to detect it from the program).")


def _has_tracers(tree) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(tree))


# ----------------------------------------------------------------------------- transforms


def _validate(func, argnums, has_aux, chunk_size, layout, output, check, transform, sparse):
    _args.check_callable(func, transform)
    _, as_tuple = _args.check_argnums(argnums, transform)
    _args.check_bool(has_aux, transform, "has_aux")
    _args.check_bool(check, transform, "check")
    chunk_size = _args.check_chunk_size(chunk_size, transform)
    _args.check_choice(layout, ("numerator", "denominator"), transform, "layout")
    _args.check_choice(output, OUTPUTS, transform, "output")
    if not sparse and (output != "bcoo" or check):
        raise ValueError(f"{transform}: output= and check= apply to sparse derivatives; pass sparse=True.")
    return as_tuple, chunk_size


def jacobian(func: Callable, argnums: _args.Argnums = 0, *, mode: str = "auto",
             layout: str = "numerator", chunk_size: int | None = None, has_aux: bool = False,
             sparsity: Any = None, output: str = "bcoo", check: bool = False,
             sparse: bool = True) -> Callable:
    """Sparse Jacobian: pattern from the jaxpr (or ``sparsity=``), a coloring chosen by
    passes (``mode="auto"``: fewest of columns/JVPs, rows/VJPs and a bicoloring;
    ``"fwd"``/``"rev"`` force one side), compressed passes, a gather.

    Returns a ``jax.experimental.sparse.BCOO`` of shape ``out.shape + in.shape``
    (``output="dense"``: a dense array), nested like ``argnums`` for several inputs.

    >>> import jax.numpy as jnp
    >>> f = lambda x: x[1:] ** 2 - x[:-1]
    >>> J = jacobian(f)(jnp.arange(4.0))
    >>> J.todense()
    Array([[-1.,  2.,  0.,  0.],
           [ 0., -1.,  4.,  0.],
           [ 0.,  0., -1.,  6.]], dtype=float32)
    """
    transform = "jacobian"
    as_tuple, chunk_size = _validate(func, argnums, has_aux, chunk_size, layout, output, check,
                                     transform, sparse)
    _args.check_choice(mode, ("auto", "fwd", "rev"), transform, "mode")
    name = _args.func_name(func)

    def jac_f(*args, **kwargs):
        where = f"jacobian({name}, sparse=True)(*args)"
        positions = _args.differentiable_positions(args, argnums, where)
        diff = tuple(args[p] for p in positions)
        primal = diff if as_tuple else diff[0]
        leaves_in = jax.tree_util.tree_leaves(primal)
        in_tree = jax.tree_util.tree_structure(primal)
        flat, unravel = ravel_pytree(primal)
        _check_inputs(flat, where)

        def call(xf):
            out = func(*_args.replace_args(args, positions, unravel(xf) if as_tuple else (unravel(xf),)),
                       **kwargs)
            aux = None
            if has_aux:
                out, aux = _args.split_aux(out, where)
            _check_output(out, where)
            return out, aux

        out_struct = jax.eval_shape(lambda xf: call(xf)[0], flat)
        out_shape = tuple(out_struct.shape)

        def fo(xf):
            return call(xf)[0].reshape(-1)

        in_shape = (flat.size,) if len(leaves_in) != 1 else tuple(np.shape(leaves_in[0]))
        if sparsity is not None:
            pattern = as_pattern(sparsity, out_shape, in_shape, f"jacobian({name}, sparsity=...)", name=name)
        else:
            pattern = _detect(fo, flat, out_shape, in_shape, name, symmetric=False)
        if check:
            others = [a for k, a in enumerate(args) if k not in positions]
            _check_against_dense(jax.jacfwd(fo), flat, pattern, f"jacobian({name}, check=True)",
                                 _has_tracers((others, kwargs)))
        plan = pattern.plan(mode)
        try:
            values = _compressed_values(fo, flat, pattern, plan, chunk_size)
        except TypeError as exc:
            # a jax.custom_vjp has no forward mode: auto falls back to rows (VJPs only)
            if mode != "auto" or not plan.n_jvp or "custom_vjp" not in str(exc):
                raise
            plan = pattern.plan("rev")
            values = _compressed_values(fo, flat, pattern, plan, chunk_size)
        blocks = _leaf_blocks(values, pattern, out_shape, leaves_in, output, layout)[0]
        jac = jax.tree_util.tree_unflatten(in_tree, blocks)
        if has_aux:
            return jac, call(flat)[1]
        return jac

    jac_f.__name__ = f"jacobian({name}, sparse=True)"
    jac_f.__doc__ = f"Sparse Jacobian of {name} w.r.t. argnums={argnums}."
    return jac_f


def hessian(func: Callable, argnums: _args.Argnums = 0, *, mode: str = "auto",
            chunk_size: int | None = None, sparsity: Any = None, output: str = "bcoo",
            check: bool = False, sparse: bool = True) -> Callable:
    """Sparse Hessian of a scalar function: the pattern of ``J(∇f)`` from the jaxpr of
    the gradient (or ``sparsity=``), symmetrized and star colored; one HVP per color.

    ``mode``: ``"auto"``/``"fwd-over-rev"`` push the seeds forward through the gradient
    (JVPs); ``"rev-over-rev"`` pull them back (VJPs of the gradient, by symmetry the same
    products). Returns a BCOO ``x.shape + x.shape`` (``output="dense"``: dense), nested
    tuples ``H[a][b]`` for tuple ``argnums``.

    >>> import jax.numpy as jnp
    >>> H = hessian(lambda x: jnp.sum(x[1:] * x[:-1]) + jnp.sum(x ** 3))(jnp.ones(3))
    >>> H.todense()
    Array([[6., 1., 0.],
           [1., 6., 1.],
           [0., 1., 6.]], dtype=float32)
    """
    transform = "hessian"
    as_tuple, chunk_size = _validate(func, argnums, False, chunk_size, "numerator", output, check,
                                     transform, sparse)
    _args.check_choice(mode, ("auto", "fwd-over-rev", "rev-over-rev", "rev-over-fwd", "fwd-over-fwd"),
                       transform, "mode")
    outer = mode.split("-")[0] if mode != "auto" else "fwd"
    name = _args.func_name(func)

    def hess_f(*args, **kwargs):
        where = f"hessian({name}, sparse=True)(*args)"
        positions = _args.differentiable_positions(args, argnums, where)
        diff = tuple(args[p] for p in positions)
        primal = diff if as_tuple else diff[0]
        leaves_in = jax.tree_util.tree_leaves(primal)
        in_tree = jax.tree_util.tree_structure(primal)
        flat, unravel = ravel_pytree(primal)
        _check_inputs(flat, where)

        def scalar(xf):
            out = func(*_args.replace_args(args, positions, unravel(xf) if as_tuple else (unravel(xf),)),
                       **kwargs)
            _args.check_scalar(out, where, "jacobian(..., sparse=True) of its gradient")
            return out

        grad_f = jax.grad(scalar)
        n = flat.size
        in_shape = (n,) if len(leaves_in) != 1 else tuple(np.shape(leaves_in[0]))
        if sparsity is not None:
            pattern = as_pattern(sparsity, in_shape, in_shape, f"hessian({name}, sparsity=...)",
                                 symmetric=True, name=name)
        else:
            pattern = _detect(grad_f, flat, in_shape, in_shape, name, symmetric=True)
        if check:
            others = [a for k, a in enumerate(args) if k not in positions]
            _check_against_dense(jax.hessian(scalar), flat, pattern, f"hessian({name}, check=True)",
                                 _has_tracers((others, kwargs)))
        plan = pattern.plan("star")
        values = _hvp_values(grad_f, flat, pattern, plan, chunk_size, outer)
        if in_tree == jax.tree_util.tree_structure(0):          # one array: one block
            return _leaf_blocks(values, pattern, in_shape, leaves_in, output, "numerator")[0][0]
        return _nest(in_tree, _leaf_blocks(values, pattern, in_shape, leaves_in, output, "numerator",
                                           row_leaves=True))

    hess_f.__name__ = f"hessian({name}, sparse=True)"
    hess_f.__doc__ = f"Sparse Hessian of {name} w.r.t. argnums={argnums}."
    return hess_f


def _nest(in_tree, blocks):
    return jax.tree_util.tree_unflatten(in_tree, [jax.tree_util.tree_unflatten(in_tree, row) for row in blocks])


# ----------------------------------------------------------------------------- sparsity()


def sparsity(func: Callable, *args: Any, argnums: _args.Argnums = 0, hessian: bool = False,
             **kwargs: Any) -> Pattern:
    """The sparsity :class:`Pattern` of the Jacobian of ``func`` w.r.t. ``args[argnums]``
    (``hessian=True``: of its Hessian), read from the jaxpr at these argument shapes.

    >>> import jax.numpy as jnp
    >>> p = sparsity(lambda x: x[1:] - x[:-1], jnp.ones(5))
    >>> p.nnz, p.passes()["fwd"]
    (8, 2)
    """
    transform = "sparsity"
    _args.check_callable(func, transform)
    _, as_tuple = _args.check_argnums(argnums, transform)
    name = _args.func_name(func)
    where = f"sparsity({name}, *args)"
    positions = _args.differentiable_positions(args, argnums, where)
    diff = tuple(args[p] for p in positions)
    primal = diff if as_tuple else diff[0]
    leaves_in = jax.tree_util.tree_leaves(primal)
    flat, unravel = ravel_pytree(primal)
    _check_inputs(flat, where)
    in_shape = (flat.size,) if len(leaves_in) != 1 else tuple(np.shape(leaves_in[0]))

    def call(xf):
        return func(*_args.replace_args(args, positions, unravel(xf) if as_tuple else (unravel(xf),)), **kwargs)

    if hessian:
        def scalar(xf):
            out = call(xf)
            _args.check_scalar(out, where, "sparsity(...) of its gradient")
            return out

        return _detect(jax.grad(scalar), flat, in_shape, in_shape, name, symmetric=True)
    out = jax.eval_shape(call, flat)
    _check_output(out, where)
    return _detect(lambda xf: call(xf).reshape(-1), flat, tuple(out.shape), in_shape, name, symmetric=False)


jacobian_sparsity = sparsity


def hessian_sparsity(func: Callable, *args: Any, argnums: _args.Argnums = 0, **kwargs: Any) -> Pattern:
    """:func:`sparsity` of the Hessian."""
    return sparsity(func, *args, argnums=argnums, hessian=True, **kwargs)
