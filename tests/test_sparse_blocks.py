"""Axis-map (block-diagonal) patterns: the same matrix as the index sets on random
programs, optimal colorings, the fall-backs, and sparse Jacobians run on them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import functorch_lite as fl
from functorch_lite._jaxpr.blocks import block_pattern
from functorch_lite._jaxpr.sparsity import jacobian_pattern
from functorch_lite._planner import api
from functorch_lite._sparse import Pattern
from functorch_lite._sparse.driver import program_pattern


def _colors_valid(matrix, colors, by_columns: bool) -> bool:
    """Columns (or rows) of one color share no row (or column)."""
    m = matrix.tocsr() if by_columns else matrix.T.tocsr()
    for r in range(m.shape[0]):
        c = colors[m.indices[m.indptr[r]:m.indptr[r + 1]]]
        if len(np.unique(c)) != len(c):
            return False
    return True


def _check_against_index_sets(closed, in_shape=None):
    """The axis map (or ``None``) of ``closed``; where given, its matrix must be the index
    sets' and its colorings valid and as few as the densest row / column."""
    blocks = block_pattern(closed, in_shape)
    if blocks is None:
        return None
    exact = jacobian_pattern(closed)[:int(np.prod(closed.out_avals[0].shape))]
    mat = blocks.matrix()
    assert mat.shape == exact.shape and (mat != exact).nnz == 0
    assert blocks.nnz == exact.nnz
    col, row = blocks.column_colors(), blocks.row_colors()
    assert _colors_valid(mat, col, True) and _colors_valid(mat, row, False)
    densest_row = int(np.diff(exact.indptr).max())
    densest_col = int(np.bincount(exact.indices, minlength=exact.shape[1]).max())
    assert col.max() + 1 == blocks.n_col_colors == densest_row
    assert row.max() + 1 == blocks.n_row_colors == densest_col
    return blocks


def _same(a, b) -> bool:
    """Both ``None``, or the same pattern (pairs may differ by input axes of length 1)."""
    if a is None or b is None:
        return a is None and b is None
    return a.out_shape == b.out_shape and (a.matrix() != b.matrix()).nnz == 0


# A random program: a chain of steps, each an op the axis map reads (supported) or one
# it does not (a slice, a cumulative sum, a merging reshape, a known zero), on a random
# input shape. Constants are drawn nonzero unless the step asks for zeros.
_SUPPORTED = ["sin", "square", "scale", "add_const", "relu", "transpose", "sum", "contract",
              "expand", "broadcast", "jit"]
_UNSUPPORTED = ["slice", "cumsum", "flatten", "zeros_contract", "zeros_mul"]


def _apply_step(step, y, rng):
    nd = y.ndim
    if step == "sin":
        return jnp.sin(y)
    if step == "square":
        return y * y
    if step == "scale":
        return y * jnp.asarray(rng.uniform(0.5, 2.0, y.shape))
    if step == "add_const":
        return y + 1.5
    if step == "relu":
        return jax.nn.relu(y)            # a custom_jvp call
    if step == "transpose":
        return jnp.transpose(y, rng.permutation(nd))
    if step == "sum":
        if nd < 2:
            return jnp.tanh(y)
        return jnp.sum(y, axis=int(rng.integers(nd)))
    if step in ("contract", "zeros_contract"):
        a = int(rng.integers(nd))
        W = rng.uniform(0.5, 2.0, (int(rng.integers(1, 4)), y.shape[a]))
        if step == "zeros_contract":
            W[0, 0] = 0.0
        return jnp.moveaxis(jnp.tensordot(jnp.asarray(W), y, axes=([1], [a])), 0, a)
    if step == "expand":
        return jnp.expand_dims(y, int(rng.integers(nd + 1)))
    if step == "broadcast":
        return jnp.broadcast_to(y[None], (int(rng.integers(1, 4)),) + y.shape)
    if step == "jit":
        return jax.jit(jnp.tanh)(y)
    if step == "slice":
        return y[1:] if y.shape[0] > 1 else y[::-1] * 2
    if step == "cumsum":
        return jnp.cumsum(y, axis=0)
    if step == "flatten":
        return y.reshape(-1) if nd > 1 and all(s > 1 for s in y.shape) else jnp.cumsum(y, axis=0)
    if step == "zeros_mul":
        c = np.ones(y.shape)
        c.flat[0] = 0.0
        return y * jnp.asarray(c)
    raise AssertionError(step)


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       steps=st.lists(st.sampled_from(_SUPPORTED + _UNSUPPORTED), min_size=1, max_size=5),
       seed=st.integers(0, 10_000))
def test_axis_maps_equal_the_index_sets_on_random_programs(shape, steps, seed):
    rng = np.random.default_rng(seed)

    def f(x):
        y = x
        r = np.random.default_rng(seed)
        for s in steps:
            y = _apply_step(s, y, r)
        return y

    del rng
    closed = jax.make_jaxpr(f)(jnp.ones(shape))
    blocks = _check_against_index_sets(closed)
    # the same program reading its input flattened (as sparsity() and sparse=True stage it)
    flat = jax.make_jaxpr(lambda v: f(v.reshape(shape)))(jnp.ones(int(np.prod(shape))))
    flat_blocks = _check_against_index_sets(flat, tuple(shape))
    assert _same(flat_blocks, blocks)
    if all(s in _SUPPORTED for s in steps):
        assert blocks is not None, steps       # every step is one the axis map reads
    if any(s in ("cumsum", "zeros_contract", "zeros_mul") for s in steps):
        assert blocks is None, steps           # never a block pattern


def test_batched_layer_is_an_axis_map_with_optimal_colorings():
    W = jax.random.normal(jax.random.key(0), (64, 32))
    closed = jax.make_jaxpr(lambda X: jnp.tanh(X @ W.T))(jnp.ones((48, 32)))
    blocks = _check_against_index_sets(closed)
    assert blocks.pair == ((0,), None) and blocks.full_axes == (1,) and blocks.free_axes == (1,)
    assert (blocks.n_col_colors, blocks.n_row_colors, blocks.nnz) == (32, 64, 48 * 64 * 32)
    pattern = program_pattern(closed, "layer")
    assert pattern.blocks is not None and pattern.plan("auto").describe() == "32 JVPs (column coloring)"
    # the same choice, and no more passes, than the index sets' own coloring
    exact = Pattern(jacobian_pattern(closed), (48, 64), (48, 32))
    assert exact.plan("auto").kind == "fwd" and exact.plan("auto").passes >= 32
    assert pattern.passes() == {"fwd": 32, "rev": 64, "dense fwd": 1536, "dense rev": 3072}


@pytest.mark.parametrize("case", ["zeros in W", "zeros in a scaled W.T", "a slice", "a reshape that splits an input axis",
                                  "two different maps", "no dependence", "a while loop"])
def test_programs_that_are_not_axis_maps_fall_back_to_index_sets(x64, case):
    W = np.ones((5, 4))
    W[2, 1] = 0.0
    f, shape = {
        "zeros in W": (lambda X: jnp.tanh(X @ jnp.asarray(W).T), (3, 4)),
        "zeros in a scaled W.T": (lambda X: jnp.tanh(X @ (jnp.asarray(W).T * 2.0)), (3, 4)),
        "a slice": (lambda x: x[1:] - x[:-1], (6,)),
        "a reshape that splits an input axis": (lambda x: jnp.sin(x).reshape(2, 3), (6,)),
        "two different maps": (lambda X: X + X.T, (4, 4)),
        "no dependence": (lambda x: jnp.zeros(3) * jnp.floor(x).sum(), (3,)),
        "a while loop": (lambda x: jax.lax.fori_loop(0, 3, lambda i, v: jnp.sin(v), x), (4,)),
    }[case]
    closed = jax.make_jaxpr(f)(jnp.ones(shape))
    assert block_pattern(closed) is None
    if case != "no dependence":
        pattern = program_pattern(closed, "f")     # the index sets: the same matrix as before
        assert pattern.blocks is None
        exact = jacobian_pattern(closed)
        assert (pattern.matrix != exact).nnz == 0


def test_sparse_jacobian_on_an_axis_map_matches_jacrev(x64):
    W = jax.random.normal(jax.random.key(1), (6, 5))
    b = jax.random.normal(jax.random.key(2), (6,))

    def f(X):          # per-sample layer, then a per-sample sum: pairs axis 0 with axis 0
        return jnp.sum(jnp.tanh(X @ W.T + b[None, :]), axis=1) + jnp.sin(X).sum(axis=1)

    x = jax.random.normal(jax.random.key(3), (40, 5))
    pattern = fl.sparsity(f, x)
    assert pattern.blocks is not None and pattern.blocks.pair == ((0,),)
    ref = jax.jacrev(f)(x)
    for sparse_kw in ({"sparse": True}, {"sparsity": pattern}):
        J = fl.jacobian(f, output="dense", check=True, **sparse_kw)(x)
        np.testing.assert_allclose(np.asarray(J), np.asarray(ref), rtol=1e-12, atol=1e-13)
    Jb = fl.jacobian(f, sparsity=pattern)(x)                          # BCOO: the map's nonzeros
    assert Jb.nse == pattern.nnz == 200
    np.testing.assert_allclose(np.asarray(Jb.todense()), np.asarray(ref), rtol=1e-12, atol=1e-13)
    assert pattern.plan("auto").describe() == "1 VJP (row coloring)"    # each input, one output
    assert pattern.nnz == 40 * 5 and np.isclose(pattern.density, 1 / 40)
    assert "nnz=200" in repr(pattern)


def test_planner_sparse_plan_on_an_axis_map_matches_jacrev_in_float64(x64):
    W = jax.random.normal(jax.random.key(4), (64, 32))
    x = jax.random.normal(jax.random.key(5), (48, 32))
    f = lambda X: jnp.tanh(X @ W.T)  # noqa: E731
    fl.clear_caches()
    plan, traced = api.plan_jacobian(f, (x,))
    assert plan.kind == "sparse" and traced.pattern.blocks is not None
    assert plan.sparse["n_jvp"] == 32 and plan.sparse["nnz"] == 48 * 64 * 32
    for g in (fl.jacobian(f), jax.jit(fl.jacobian(f))):
        np.testing.assert_allclose(np.asarray(g(x)), np.asarray(jax.jacrev(f)(x)),
                                   rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("f, shape, pair", [
    (lambda X: jnp.sin(X).reshape(-1), (3, 4), ((0, 1),)),              # a merge in order
    (lambda X: jnp.sin(X).reshape(-1), (3, 1, 4), ((0, 2),)),           # a length-1 axis between
    (lambda X: jnp.sin(X).reshape(6, 2), (3, 2, 2), ((0, 1), (2,))),    # merge, keep
    (lambda X: (X * 2.0).reshape(3, 4).sum(0), (12,), None),            # splits an input axis
    (lambda X: jnp.sin(X.T).reshape(-1), (3, 4), None),                 # merges out of order
    (lambda X: jnp.sum(X.reshape(2, 3, 4), axis=1), (6, 4), None),      # splits input axis 0
    (lambda X: jnp.sum(X.reshape(2, 3, 4), axis=1), (2, 3, 4), ((0,), (2,))),  # via the flat input
    (lambda X: jnp.sin(jnp.broadcast_to(X, (3, 4))), (3, 1), ((0,), None)),  # length 1 stretched
])
def test_reshapes_merge_and_split_whole_input_axes(f, shape, pair):
    closed = jax.make_jaxpr(f)(jnp.ones(shape))
    blocks = _check_against_index_sets(closed)
    assert (blocks.pair if blocks is not None else None) == pair
    flat = jax.make_jaxpr(lambda v: f(v.reshape(shape)))(jnp.ones(int(np.prod(shape))))
    assert _same(_check_against_index_sets(flat, shape), blocks)


@pytest.mark.parametrize("f, shape, pair", [
    (lambda X: X @ jnp.ones((4, 3)), (5, 4), ((0,), None)),                 # a literal broadcast
    (lambda X: X @ (jnp.ones((4, 3)) * 2.0), (5, 4), None),                 # folded: may hold zeros
    (lambda X: X @ jnp.zeros((4, 3)), (5, 4), None),                        # a literal zero broadcast
    (lambda X: X @ jnp.zeros((4, 3)).at[0, 0].set(1.0), (5, 4), None),      # a zero, read by index sets
    (lambda X: jnp.where(X > 0, X, 2 * X), (5, 4), ((0,), (1,))),          # a traced predicate
    (lambda X: jnp.where(jnp.arange(4) > 1, X, 0.0), (5, 4), None),        # a known predicate
    (lambda X: jax.nn.relu(X) @ jnp.full((4, 2), 3.0), (5, 4), ((0,), None)),  # custom_jvp call
    (lambda X: jnp.round(X) * X, (5, 4), ((0,), (1,))),                    # zero-derivative factor
])
def test_axis_maps_through_constants_calls_and_predicates(f, shape, pair):
    closed = jax.make_jaxpr(f)(jnp.ones(shape))
    blocks = _check_against_index_sets(closed)
    assert (blocks.pair if blocks is not None else None) == pair
