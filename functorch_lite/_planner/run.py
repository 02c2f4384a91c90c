"""Running a mixed plan: the primal pass, the stages' JVPs and VJPs, the products.

The program (a :class:`functorch_lite._jaxpr.cuts.Program`, traced at this call's
arguments) is evaluated once; the stage between two cuts becomes a map between flat
vectors (:func:`functorch_lite._jaxpr.cuts.stage_function`); the :class:`Step` tree of
the plan says which dense blocks to push forward (JVPs, ``vmap``-ed over the columns),
pull back (VJPs over the rows) or multiply.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._jaxpr import cuts as _cuts
from .._mode import forward_mode
from .chain import Plan as ChainPlan, Step

__all__ = ["execute_chain", "run_mixed", "matrix_to_tree"]


def _batched(fn: Callable, m: jax.Array, axis: int, chunk_size: int | None) -> jax.Array:
    """Apply ``fn`` to each slice of ``m`` along ``axis`` (vmap, or chunked lax.map)."""
    if chunk_size is None:
        return jax.vmap(fn, in_axes=axis, out_axes=axis)(m)
    moved = jnp.moveaxis(m, axis, 0)
    out = jax.lax.map(fn, moved, batch_size=chunk_size)
    return jnp.moveaxis(out, 0, axis)


def execute_chain(plan: ChainPlan, stages: Sequence[Callable], primals: Sequence[jax.Array],
                  dtype: Any, chunk_size: int | None = None) -> jax.Array:
    """The dense ``J_K ... J_1`` (``n_K x n_0``) of flat ``stages`` at the flat
    ``primals`` (stage ``l``'s input is ``primals[l - 1]``), by ``plan``'s Step tree."""
    n = plan.widths

    def dense(s: Step | None, i: int) -> jax.Array:
        if s is None:  # identity seed, n_{i-1} x n_{i-1}
            return jnp.eye(n[i - 1], dtype=dtype)
        if s.kind == "fwd":
            m = dense(s.sub, s.i)
            for l in range(s.k + 1, s.j + 1):
                f, p = stages[l - 1], primals[l - 1]
                with forward_mode():
                    m = _batched(lambda t, f=f, p=p: jax.jvp(f, (p,), (t.astype(p.dtype),))[1],
                                 m, 1, chunk_size)
            return m
        if s.kind == "rev":
            m = dense(s.sub, s.k + 1) if s.sub is not None else jnp.eye(n[s.j], dtype=dtype)
            for l in range(s.k, s.i - 1, -1):
                _, pull = jax.vjp(stages[l - 1], primals[l - 1])
                m = _batched(lambda c, pull=pull: pull(c)[0], m, 0, chunk_size)
            return m
        return dense(s.left, s.k + 1) @ dense(s.right, s.i)

    return dense(plan.root, plan.root.i)


def run_mixed(plan: Any, prog: _cuts.Program, info: _cuts.Analysis, inputs: Sequence[Any],
              n_outputs: int, chunk_size: int | None) -> tuple[jax.Array, list]:
    """``(J, outputs)``: the flat ``m x n`` Jacobian of ``prog`` at ``inputs`` by the mixed
    ``plan`` (a :class:`~functorch_lite._planner.plans.JacobianPlan`), and the values of
    all of the program's outputs (differentiated ones first, then e.g. aux)."""
    env = prog.evaluate(list(inputs))
    N = len(prog.nodes)
    bounds = [0] + list(plan.cuts) + [N]
    refs = [_cuts.boundary(prog, info, b, n_outputs) for b in bounds]
    dtypes = [_cuts.ref_dtype(prog, r) for rs in refs for r in rs]
    dtype = jnp.result_type(*[d for d in dtypes if np.issubdtype(d, np.inexact)] or [jnp.float32])
    stages, primals = [], []
    for k in range(len(bounds) - 1):
        primals.append(_cuts.flat_values(prog, env, refs[k], dtype))
        stages.append(_cuts.stage_function(prog, env, bounds[k], bounds[k + 1], refs[k],
                                           refs[k + 1], dtype))
    matrix = execute_chain(plan.chain, stages, primals, dtype, chunk_size)
    return matrix, prog.read(env, prog.outputs)


def matrix_to_tree(matrix: jax.Array, out: Any, primal: Any) -> Any:
    """Split the flat ``n_out x n_in`` Jacobian into the numerator-layout pytree: nested
    like ``out``, then like ``primal``; each leaf ``out.shape + in.shape``."""
    out_leaves, out_tree = jax.tree_util.tree_flatten(out)
    in_leaves, in_tree = jax.tree_util.tree_flatten(primal)
    rows, r = [], 0
    for o in out_leaves:
        size_o = math.prod(np.shape(o))
        cols, c = [], 0
        for leaf in in_leaves:
            shape = np.shape(leaf)
            size_i = math.prod(shape)
            block = matrix[r:r + size_o, c:c + size_i]
            cols.append(block.reshape(tuple(np.shape(o)) + tuple(shape)).astype(o.dtype))
            c += size_i
        rows.append(jax.tree_util.tree_unflatten(in_tree, cols))
        r += size_o
    return jax.tree_util.tree_unflatten(out_tree, rows)
