"""Jacobians: ``jacrev``, ``jacfwd``, chunking and layouts.

For ``f: R^n -> R^m`` the Jacobian is the ``m x n`` matrix ``J[i, j] = df_i/dx_j``
(numerator layout; for tensors ``out.shape + in.shape``, the torch/JAX convention). Its
transpose is the denominator layout (``in.shape + out.shape``).

- ``jacrev`` builds ``J`` row by row: one VJP ``e_i^T J`` per output element, m passes
  after one stored forward pass.
- ``jacfwd`` builds it column by column: one JVP ``J e_j`` per input element, n passes.

Without ``chunk_size`` all passes run at once, vectorised (``vmap`` over the whole
identity basis), exactly as ``jax.jacrev``/``jax.jacfwd``. With ``chunk_size=c`` a
``lax.map`` walks the basis ``c`` vectors at a time, and each basis vector is made from
its index inside the loop (a one-hot), so neither the identity nor more than ``c``
simultaneous backward passes ever exist: temp memory scales with ``c``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _args
from ._mode import forward_mode

__all__ = ["jacrev", "jacfwd"]

LAYOUTS = ("numerator", "denominator")


def _basis(index: jax.Array, like: list) -> list:
    """The ``index``-th standard basis vector of the flattened leaves ``like``, as leaves.

    Leaf ``k`` occupies flat positions ``[offset_k, offset_k + size_k)``; outside that
    range its one-hot is all zeros.
    """
    out, offset = [], 0
    for leaf in like:
        size = math.prod(np.shape(leaf))
        dtype = _args.tangent_dtype(_args._leaf_dtype(leaf))
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

    def g(diff):
        diff = diff if as_tuple else (diff,)
        out = func(*_args.replace_args(args, positions, diff), **kwargs)
        aux = None
        if has_aux:
            out, aux = _args.split_aux(out, where)
        _args.check_inexact_output(out, where)
        return out, aux

    return g


def jacrev(func: Callable, argnums: _args.Argnums = 0, *, has_aux: bool = False,
           chunk_size: int | None = None, layout: str = "numerator") -> Callable:
    """Jacobian by reverse accumulation, as ``torch.func.jacrev``.

    One stored forward pass, then one VJP ``e_i^T J`` per output element ``i``.
    ``chunk_size=c`` runs the VJPs ``c`` at a time (memory ~ c backward passes).

    Returns a function giving the Jacobian (``(jac, aux)`` with ``has_aux``): nested
    like the output, then like ``argnums`` (a tuple for tuple argnums); each leaf
    ``out.shape + in.shape`` (``layout="numerator"``) or ``in.shape + out.shape``
    (``"denominator"``).

    >>> import jax.numpy as jnp
    >>> A = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    >>> jacrev(lambda x: A @ x)(jnp.zeros(2))        # d(Ax)/dx = A
    Array([[1., 2.],
           [3., 4.],
           [5., 6.]], dtype=float32)
    >>> jacrev(lambda x: A @ x, layout="denominator")(jnp.zeros(2)).shape
    (2, 3)
    """
    as_tuple, chunk_size = _prepare(func, argnums, has_aux, chunk_size, layout, "jacrev")
    name = _args.func_name(func)

    def jac_f(*args, **kwargs):
        where = f"jacrev({name})(*args)"
        positions = _args.normalize_argnums(argnums, len(args), where)
        diff = tuple(args[p] for p in positions)
        for p, d in zip(positions, diff):
            _args.check_differentiable(d, where, f"args[{p}]")
        g = _closed_over(func, args, kwargs, positions, as_tuple, has_aux, where)
        primal = diff if as_tuple else diff[0]
        if chunk_size is None:
            jac, aux = jax.jacrev(g, has_aux=True)(primal)
        else:
            jac, aux = _jacrev_chunked(g, primal, chunk_size)
        jac = to_layout(jac, primal, layout)
        return (jac, aux) if has_aux else jac

    jac_f.__name__ = f"jacrev({name})"
    jac_f.__doc__ = f"Jacobian of {name} by reverse mode w.r.t. argnums={argnums}."
    return jac_f


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
           layout: str = "numerator") -> Callable:
    """Jacobian by forward accumulation, as ``torch.func.jacfwd``.

    One JVP ``J e_j`` per input element ``j``, each carried along the forward pass;
    nothing is stored between passes. ``chunk_size=c`` linearizes once and pushes ``c``
    basis tangents at a time. Output structure and layouts as :func:`jacrev`.

    >>> import jax.numpy as jnp
    >>> jacfwd(lambda x: x ** 2)(jnp.array([1.0, 2.0]))     # diag(2x)
    Array([[2., 0.],
           [0., 4.]], dtype=float32)
    """
    as_tuple, chunk_size = _prepare(func, argnums, has_aux, chunk_size, layout, "jacfwd")
    _args.check_choice(randomness, ("error", "same"), "jacfwd", "randomness")
    name = _args.func_name(func)

    def jac_f(*args, **kwargs):
        where = f"jacfwd({name})(*args)"
        positions = _args.normalize_argnums(argnums, len(args), where)
        diff = tuple(args[p] for p in positions)
        for p, d in zip(positions, diff):
            _args.check_differentiable(d, where, f"args[{p}]")
        g = _closed_over(func, args, kwargs, positions, as_tuple, has_aux, where)
        primal = diff if as_tuple else diff[0]
        with forward_mode():
            if chunk_size is None:
                jac, aux = jax.jacfwd(g, has_aux=True)(primal)
            else:
                jac, aux = _jacfwd_chunked(g, primal, chunk_size)
        jac = to_layout(jac, primal, layout)
        return (jac, aux) if has_aux else jac

    jac_f.__name__ = f"jacfwd({name})"
    jac_f.__doc__ = f"Jacobian of {name} by forward mode w.r.t. argnums={argnums}."
    return jac_f


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
