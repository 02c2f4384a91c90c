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
from jax.sharding import NamedSharding, PartitionSpec

from .. import _args, _caches, _mesh
from .._jaxpr import stage
from .._jaxpr.blocks import block_pattern
from .._jaxpr.sparsity import jacobian_pattern
from . import coloring as _coloring
from .pattern import Pattern, Plan, as_pattern

__all__ = ["jacobian", "hessian", "sparsity", "jacobian_sparsity", "hessian_sparsity",
           "program_pattern"]

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


def _staged(func: Callable, flat: Any):
    """The closed jaxpr of ``func`` at ``flat``'s shape and dtype."""
    return stage(func, jax.ShapeDtypeStruct(np.shape(flat), flat.dtype))


def _detect(closed, out_shape: tuple, in_shape: tuple, name: str, symmetric: bool) -> Pattern:
    """The pattern of the program ``closed`` (remembered per program)."""
    key = ("hessian" if symmetric else "jacobian", _digest(closed), name)

    def make():
        if not symmetric and len(closed.jaxpr.invars) == len(closed.out_avals) == 1:
            blocks = block_pattern(closed, in_shape)      # an axis map: no index sets
            if blocks is not None:
                return Pattern.from_blocks(blocks, name=name)
        mat = jacobian_pattern(closed, name)
        if symmetric:
            mat = sp.csr_matrix(mat + mat.T)
        return Pattern(mat, out_shape, in_shape, symmetric=symmetric, name=name, source="jaxpr")

    return _patterns.get_or_compute(key, make)


def program_pattern(closed, name: str, prog: Any = None) -> Pattern:
    """The Jacobian pattern of the first output of ``closed`` (a program of one array
    in, staged by its caller) w.r.t. its input, its other outputs (``has_aux``) left
    out; the shapes are the program's. Not remembered here: the planner reads the
    program it traced for its own decision and hands the pattern to the run of the same
    call (``sparsity=``). ``prog``: ``closed`` flattened already (the planner's)."""
    where = f"sparsity({name})"
    (var,) = closed.jaxpr.invars
    out = closed.out_avals[0]
    _check_inputs(var.aval, where)
    _check_output(out, where)
    blocks = block_pattern(closed, prog=prog)     # an axis map: no index sets to build
    if blocks is not None:
        return Pattern.from_blocks(blocks, name=name)
    mat = jacobian_pattern(closed, name)
    m = math.prod(out.shape)
    return Pattern(mat[:m] if mat.shape[0] != m else mat, out.shape, var.aval.shape, name=name,
                   source="jaxpr")


# ----------------------------------------------------------------------------- helpers


def _check_output(out: Any, where: str, fallback: str = "use sparse=False") -> None:
    if (not isinstance(out, (jax.Array, np.ndarray, jax.ShapeDtypeStruct, jax.core.ShapedArray))
            and not hasattr(out, "aval")):
        raise TypeError(
            f"{where}: a sparse derivative needs f to return one array; got {_args.describe(out)}. "
            f"Return a single array (e.g. jnp.concatenate the pieces) or {fallback}.")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"{where}: sparse=True needs a real floating-point output; got dtype {out.dtype}. "
                        "Return a float array (e.g. out.astype(jnp.float32); for complex outputs "
                        "stack the real and imaginary parts).")


def _check_inputs(flat: Any, where: str) -> None:
    if not jnp.issubdtype(flat.dtype, jnp.floating):
        raise TypeError(f"{where}: sparse=True needs real floating-point inputs; got dtype {flat.dtype}. "
                        "Pass float arrays (complex inputs: differentiate w.r.t. the real and "
                        "imaginary parts as separate real arguments).")


def _seeds(colors: np.ndarray, dtype) -> np.ndarray:
    """One row per color: the sum of the basis vectors of that color (-1: no color)."""
    k = _coloring.ncolors(colors)
    seeds = np.zeros((k, colors.size), dtype)
    where = np.flatnonzero(colors >= 0)
    seeds[colors[where], where] = 1
    return seeds


def _jvp_row(fn: Callable) -> Callable:
    """``setup(x) -> (s -> J(x) s)``: the JVPs of ``fn`` at ``x``."""
    return lambda x: (lambda s: jax.jvp(fn, (x,), (s,))[1])


def _vjp_row(fn: Callable) -> Callable:
    """``setup(x) -> (w -> w^T J(x))``: one stored forward pass, then VJPs."""
    def setup(x):
        pullback = jax.vjp(fn, x)[1]
        return lambda w: pullback(w)[0]
    return setup


def _products(setup: Callable, flat: jax.Array, colors: np.ndarray, dtype, chunk_size: int | None,
              split: tuple | None, where: str) -> jax.Array:
    """``row(s_k)`` for the seed ``s_k`` of each color ``k``, stacked ``(colors, ...)``.

    ``setup(flat)`` builds ``row`` once (a forward pass, a linearization). The seeds run
    vectorised (``vmap``), or ``chunk_size`` at a time (``lax.map``); with ``split =
    (mesh, axis)`` the colors are divided over the mesh's devices
    (:func:`functorch_lite._mesh.sharded_basis_map`: each device sets up ``row`` itself
    and runs its share, ``chunk_size`` at a time; a padding color past the last seeds
    nothing, a zero row, dropped).
    """
    if split is None:
        row = setup(flat)
        seeds = jnp.asarray(_seeds(colors, dtype))
        if chunk_size is None or chunk_size >= seeds.shape[0]:
            return jax.vmap(row)(seeds)
        return jax.lax.map(row, seeds, batch_size=chunk_size)
    ids = np.asarray(colors, np.int32)

    def make_row(x):
        row = setup(x)
        return lambda i: row((jnp.asarray(ids) == i).astype(dtype))

    return _mesh.sharded_basis_map(make_row, _coloring.ncolors(colors), mesh=split[0], axis=split[1],
                                   chunk_size=chunk_size, operands=(flat,), where=where)


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
                       chunk_size: int | None, out_dtype=None, split: tuple | None = None,
                       where: str = "jacobian(sparse=True)") -> jax.Array:
    """The pattern's nonzero values (row-major order) of the Jacobian of ``fo`` at
    ``flat``: the JVP products ``B`` and VJP products ``W`` (both when bicolored), then
    one gather with static indices from their concatenation."""
    dtype = np.dtype(flat.dtype)
    fwd_idx, rev_idx, from_fwd = decompression(pattern, plan)
    if pattern.nnz == 0:
        return jnp.zeros(0, dtype)
    products = []
    if plan.n_jvp:
        B = _products(_jvp_row(fo), flat, plan.col_colors, dtype, chunk_size, split, where)   # (p, m)
        products.append(B.reshape(-1))
    if plan.n_vjp:
        out_dtype = np.dtype(out_dtype if out_dtype is not None else jax.eval_shape(fo, flat).dtype)
        W = _products(_vjp_row(fo), flat, plan.row_colors, out_dtype, chunk_size, split, where)  # (q, n)
        products.append(W.reshape(-1))
    if len(products) == 2:
        # one gather from both products: JVP entries index B, VJP entries W (after B)
        idx = np.where(from_fwd, fwd_idx, products[0].shape[0] + rev_idx)
        return jnp.concatenate(products)[idx]
    return products[0][fwd_idx if plan.n_jvp else rev_idx]


def _hvp_values(grad_f: Callable, flat: jax.Array, pattern: Pattern, plan: Plan,
                chunk_size: int | None, outer: str, split: tuple | None = None,
                where: str = "hessian(sparse=True)") -> jax.Array:
    """Nonzero values of the Hessian from one HVP per star color: JVPs of the gradient
    (``outer="fwd"``) or, by symmetry the same products, its VJPs (``"rev"``)."""
    colors = plan.col_colors
    if _coloring.ncolors(colors) == 0:
        return jnp.zeros(pattern.nnz, flat.dtype)
    setup = _jvp_row(grad_f) if outer == "fwd" else _vjp_row(grad_f)
    B = _products(setup, flat, colors, np.dtype(flat.dtype), chunk_size, split, where)
    idx = _star_indices(pattern, colors, pattern.rows, pattern.cols, pattern.matrix_shape[0])
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


class _Problem:
    """One call's differentiated arguments (``args[argnums]``) flattened to one vector
    ``flat``; :meth:`call` runs ``func`` with them replaced by ``unravel(xf)``."""

    def __init__(self, func: Callable, args: tuple, kwargs: dict, argnums, as_tuple: bool, where: str):
        self.func, self.args, self.kwargs, self.as_tuple = func, args, kwargs, as_tuple
        self.positions = _args.differentiable_positions(args, argnums, where)
        diff = tuple(args[p] for p in self.positions)
        primal = diff if as_tuple else diff[0]
        self.leaves = jax.tree_util.tree_leaves(primal)
        self.tree = jax.tree_util.tree_structure(primal)
        self.flat, self._unravel = ravel_pytree(primal)
        _check_inputs(self.flat, where)
        self.in_shape = (self.flat.size,) if len(self.leaves) != 1 else tuple(np.shape(self.leaves[0]))

    def call(self, xf):
        new = self._unravel(xf)
        args = _args.replace_args(self.args, self.positions, new if self.as_tuple else (new,))
        return self.func(*args, **self.kwargs)

    def others_traced(self) -> bool:
        """Whether the arguments not differentiated are tracers (inside jit/vmap)."""
        others = [a for k, a in enumerate(self.args) if k not in self.positions]
        return _has_tracers((others, self.kwargs))

    def pattern(self, fn: Callable | None, out_shape: tuple, sparsity: Any, name: str, transform: str,
                symmetric: bool = False, closed: Any = None) -> Pattern:
        """The user's ``sparsity=``, else the pattern of ``fn`` (or of its program
        ``closed``, staged already) read from its jaxpr."""
        if sparsity is not None:
            return as_pattern(sparsity, out_shape, self.in_shape, f"{transform}({name}, sparsity=...)",
                              symmetric=symmetric, name=name)
        closed = _staged(fn, self.flat) if closed is None else closed
        return _detect(closed, out_shape, self.in_shape, name, symmetric=symmetric)

    def check(self, dense_fn: Callable, pattern: Pattern, name: str, transform: str) -> None:
        """``check=True``: the pattern against the dense derivative at a random point."""
        _check_against_dense(dense_fn, self.flat, pattern, f"{transform}({name}, check=True)",
                             self.others_traced())


# ----------------------------------------------------------------------------- transforms


def _validate(func, argnums, has_aux, chunk_size, layout, output, check, transform, sparse,
              mesh=None, mesh_axis=None, gather=False):
    """The options of a sparse transform; returns ``(as_tuple, chunk_size, split)``,
    ``split = (mesh, axis)`` with ``mesh=`` (else None)."""
    _args.check_callable(func, transform)
    _, as_tuple = _args.check_argnums(argnums, transform)
    _args.check_bool(has_aux, transform, "has_aux")
    _args.check_bool(check, transform, "check")
    chunk_size = _args.check_chunk_size(chunk_size, transform)
    _args.check_choice(layout, ("numerator", "denominator"), transform, "layout")
    _args.check_choice(output, OUTPUTS, transform, "output")
    if not sparse and (output != "bcoo" or check):
        raise ValueError(f"{transform}: output= and check= apply to sparse derivatives; pass sparse=True.")
    axis = _mesh.check(mesh, mesh_axis, gather, transform)
    return as_tuple, chunk_size, (None if mesh is None else (mesh, axis, gather))


def _replicated(values: jax.Array, split: tuple | None) -> jax.Array:
    """With ``gather=True``: the nonzeros replicated on every device of the mesh."""
    if split is None or not split[2]:
        return values
    return jax.lax.with_sharding_constraint(values, NamedSharding(split[0], PartitionSpec()))


def jacobian(func: Callable, argnums: _args.Argnums = 0, *, mode: str = "auto",
             layout: str = "numerator", chunk_size: int | None = None, has_aux: bool = False,
             sparsity: Any = None, output: str = "bcoo", check: bool = False,
             sparse: bool = True, mesh: Any = None, mesh_axis: str | None = None,
             gather: bool = False) -> Callable:
    """Sparse Jacobian: pattern from the jaxpr (or ``sparsity=``), a coloring chosen by
    passes (``mode="auto"``: fewest of columns/JVPs, rows/VJPs and a bicoloring;
    ``"fwd"``/``"rev"`` force one side), compressed passes, a gather.

    Returns a ``jax.experimental.sparse.BCOO`` of shape ``out.shape + in.shape``
    (``output="dense"``: a dense array), nested like ``argnums`` for several inputs.
    ``mesh=`` (a ``jax.sharding.Mesh``; ``mesh_axis=`` default its first axis) splits
    the compressed passes (the colors) over the mesh's devices, ``chunk_size`` at a time
    on each; the values equal one device's (``gather=True``: replicated on every device).

    >>> import jax.numpy as jnp
    >>> f = lambda x: x[1:] ** 2 - x[:-1]
    >>> J = jacobian(f)(jnp.arange(4.0))
    >>> J.todense()
    Array([[-1.,  2.,  0.,  0.],
           [ 0., -1.,  4.,  0.],
           [ 0.,  0., -1.,  6.]], dtype=float32)
    """
    as_tuple, chunk_size, split = _validate(func, argnums, has_aux, chunk_size, layout, output, check,
                                            "jacobian", sparse, mesh, mesh_axis, gather)
    _args.check_choice(mode, ("auto", "fwd", "rev"), "jacobian", "mode")
    name = _args.func_name(func)
    opts = dict(func=func, argnums=argnums, as_tuple=as_tuple, mode=mode, layout=layout,
                chunk_size=chunk_size, has_aux=has_aux, sparsity=sparsity, output=output,
                check=check, split=split, name=name)

    def jac_f(*args, **kwargs):
        return _jacobian_at(args, kwargs, **opts)

    return _args.named(jac_f, func, f"jacobian({name}, sparse=True)",
                       f"Sparse Jacobian of {name} w.r.t. argnums={argnums}.")


def _jacobian_at(args, kwargs, *, func, argnums, as_tuple, mode, layout, chunk_size, has_aux,
                 sparsity, output, check, split, name):
    """The sparse Jacobian of ``func`` at ``args`` (the body of :func:`jacobian`)."""
    where = f"jacobian({name}, sparse=True)(*args)"
    prob = _Problem(func, args, kwargs, argnums, as_tuple, where)

    def call(xf):
        out, aux = prob.call(xf), None
        if has_aux:
            out, aux = _args.split_aux(out, where)
        _check_output(out, where)
        return out, aux

    def out_of(xf):
        return call(xf)[0]

    def fo(xf):
        return out_of(xf).reshape(-1)

    # one trace gives the output's shape and, unless sparsity= is given, the program
    # whose pattern is read (row-major, as fo's)
    closed = _staged(out_of, prob.flat) if sparsity is None else None
    out_struct = closed.out_avals[0] if closed is not None else jax.eval_shape(out_of, prob.flat)
    out_shape = tuple(out_struct.shape)
    pattern = prob.pattern(None, out_shape, sparsity, name, "jacobian", closed=closed)
    if check:
        prob.check(jax.jacfwd(fo), pattern, name, "jacobian")
    plan = pattern.plan(mode)
    run = lambda plan: _compressed_values(fo, prob.flat, pattern, plan, chunk_size, out_struct.dtype,  # noqa: E731
                                          split and split[:2], where)
    try:
        values = run(plan)
    except TypeError as exc:
        # a jax.custom_vjp has no forward mode: auto falls back to rows (VJPs only)
        if mode != "auto" or not plan.n_jvp or "custom_vjp" not in str(exc):
            raise
        values = run(pattern.plan("rev"))
    blocks = _leaf_blocks(_replicated(values, split), pattern, out_shape, prob.leaves, output, layout)[0]
    jac = jax.tree_util.tree_unflatten(prob.tree, blocks)
    return (jac, call(prob.flat)[1]) if has_aux else jac


HESSIAN_MODES = ("auto", "fwd-over-rev", "rev-over-rev", "rev-over-fwd", "fwd-over-fwd")


def hessian(func: Callable, argnums: _args.Argnums = 0, *, mode: str = "auto",
            chunk_size: int | None = None, sparsity: Any = None, output: str = "bcoo",
            check: bool = False, sparse: bool = True, mesh: Any = None,
            mesh_axis: str | None = None, gather: bool = False) -> Callable:
    """Sparse Hessian of a scalar function: the pattern of ``J(∇f)`` from the jaxpr of
    the gradient (or ``sparsity=``), symmetrized and star colored; one HVP per color.

    ``mode``: ``"auto"``/``"fwd-over-rev"`` push the seeds forward through the gradient
    (JVPs); ``"rev-over-rev"`` pull them back (VJPs of the gradient, by symmetry the same
    products). Returns a BCOO ``x.shape + x.shape`` (``output="dense"``: dense), nested
    tuples ``H[a][b]`` for tuple ``argnums``. ``mesh=`` splits the HVPs over a mesh's
    devices, as in :func:`jacobian`.

    >>> import jax.numpy as jnp
    >>> H = hessian(lambda x: jnp.sum(x[1:] * x[:-1]) + jnp.sum(x ** 3))(jnp.ones(3))
    >>> H.todense()
    Array([[6., 1., 0.],
           [1., 6., 1.],
           [0., 1., 6.]], dtype=float32)
    """
    as_tuple, chunk_size, split = _validate(func, argnums, False, chunk_size, "numerator", output, check,
                                            "hessian", sparse, mesh, mesh_axis, gather)
    _args.check_choice(mode, HESSIAN_MODES, "hessian", "mode")
    name = _args.func_name(func)
    opts = dict(func=func, argnums=argnums, as_tuple=as_tuple, outer=mode.split("-")[0] if mode != "auto" else "fwd",
                chunk_size=chunk_size, sparsity=sparsity, output=output, check=check, split=split, name=name)

    def hess_f(*args, **kwargs):
        return _hessian_at(args, kwargs, **opts)

    return _args.named(hess_f, func, f"hessian({name}, sparse=True)",
                       f"Sparse Hessian of {name} w.r.t. argnums={argnums}.")


def _hessian_at(args, kwargs, *, func, argnums, as_tuple, outer, chunk_size, sparsity, output, check,
                split, name):
    """The sparse Hessian of ``func`` at ``args`` (the body of :func:`hessian`)."""
    where = f"hessian({name}, sparse=True)(*args)"
    prob = _Problem(func, args, kwargs, argnums, as_tuple, where)

    def scalar(xf):
        out = prob.call(xf)
        _args.check_scalar(out, where, "jacobian(..., sparse=True) of its gradient", has_aux_hint=False)
        return out

    grad_f = jax.grad(scalar)
    in_shape = prob.in_shape
    pattern = prob.pattern(grad_f, in_shape, sparsity, name, "hessian", symmetric=True)
    if check:
        prob.check(jax.hessian(scalar), pattern, name, "hessian")
    values = _hvp_values(grad_f, prob.flat, pattern, pattern.plan("star"), chunk_size, outer,
                         split and split[:2], where)
    values = _replicated(values, split)
    if prob.tree == jax.tree_util.tree_structure(0):          # one array: one block
        return _leaf_blocks(values, pattern, in_shape, prob.leaves, output, "numerator")[0][0]
    return _nest(prob.tree, _leaf_blocks(values, pattern, in_shape, prob.leaves, output, "numerator",
                                         row_leaves=True))


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
    _args.check_callable(func, "sparsity")
    _, as_tuple = _args.check_argnums(argnums, "sparsity")
    name = _args.func_name(func)
    where = f"sparsity({name}, *args)"
    prob = _Problem(func, args, kwargs, argnums, as_tuple, where)
    if hessian:
        def scalar(xf):
            out = prob.call(xf)
            _args.check_scalar(out, where, "sparsity(...) of its gradient", has_aux_hint=False)
            return out

        return _detect(_staged(jax.grad(scalar), prob.flat), prob.in_shape, prob.in_shape, name,
                       symmetric=True)

    def out_of(xf):
        out = prob.call(xf)
        _check_output(out, where, fallback="take the pattern of each output separately")
        return out

    closed = _staged(out_of, prob.flat)      # the program jacobian(..., sparse=True) reads too
    return _detect(closed, tuple(closed.out_avals[0].shape), prob.in_shape, name, symmetric=False)


jacobian_sparsity = sparsity


def hessian_sparsity(func: Callable, *args: Any, argnums: _args.Argnums = 0, **kwargs: Any) -> Pattern:
    """:func:`sparsity` of the Hessian."""
    return sparsity(func, *args, argnums=argnums, hessian=True, **kwargs)
