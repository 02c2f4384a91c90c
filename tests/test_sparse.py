"""Sparse Jacobians and Hessians: detected patterns against dense Jacobians, coloring
validity, values against jax.jacfwd / jax.hessian in float64, transforms, bad input."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st
from jax.experimental import sparse as jsparse

import functorch_lite as fl
from functorch_lite._sparse import coloring
from functorch_lite._sparse.driver import _seeds, decompression
from functorch_lite._sparse.report import explain_sparse, sparse_cost
from functorch_lite._jaxpr.sparsity import SparsityWarning

# ----------------------------------------------------------------------------- catalogue


def _banded(n, k):
    a = np.zeros((n, n))
    for d in range(-k, k + 1):
        a += np.diag(np.arange(1.0, n - abs(d) + 1), d)
    return a


def lap2d(u):
    g = u.reshape(6, 6)
    p = jnp.pad(g, 1)
    return (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * g).ravel()


def nine_point(u):
    g = u.reshape(5, 5)
    p = jnp.pad(g, 1)
    s = sum(p[1 + a:6 + a, 1 + b:6 + b] * (1.0 + a + 2 * b) for a in (-1, 0, 1) for b in (-1, 0, 1))
    return (s * g).ravel()


def rd1d(u):
    p = jnp.pad(u, 1)
    return (p[:-2] - 2 * u + p[2:]) * 4.0 + u * (1 - u)


@jax.custom_vjp
def _cube(x):
    return x ** 3


_cube.defvjp(lambda x: (x ** 3, x), lambda x, g: (3 * x ** 2 * g,))

@jax.custom_jvp
def _ste_round(x):
    """Straight-through rounding: the value of round, the derivative of the identity."""
    return jnp.round(x)


_ste_round.defjvp(lambda p, t: (jnp.round(p[0]), t[0]))

_A_BAND = _banded(12, 1)
_IDX = np.array([3, 1, 1, 7, 11, 0])
_SEG = np.array([0, 0, 1, 2, 2, 2, 3, 3, 1, 0, 3, 2])
_W5 = np.random.default_rng(1).standard_normal((3, 3))
# a batch of two 2 x 3 constants, each with its own zeros (the batched contraction)
_B2 = np.random.default_rng(2).standard_normal((2, 2, 3)) * np.array([[[1, 0, 1], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]])
_K2 = np.random.default_rng(2).standard_normal((2, 1, 3, 3))


def _conv2d(x):
    return jax.lax.conv_general_dilated(x.reshape(1, 1, 4, 3), jnp.asarray(_K2[:, :, :2, :2]), (2, 1),
                                        "SAME").ravel()


def _depthwise(x):
    return jax.lax.conv_general_dilated(x.reshape(1, 2, 6), jnp.ones((2, 1, 3)), (1,), "VALID",
                                        feature_group_count=2).ravel()


def _while(x):
    def body(c):
        i, v = c
        return i + 1, v + 0.5 * jnp.sin(v)
    return jax.lax.while_loop(lambda c: c[0] < 2, body, (0, x))[1]


# (name, function, input size, exact): exact means the detected pattern equals the union
# of the nonzeros of the dense Jacobian at random points (else: a strict superset is fine)
CASES = [
    ("diff", lambda x: x[1:] - x[:-1], 12, True),
    ("reaction-diffusion 1d", rd1d, 12, True),
    ("laplacian 2d", lap2d, 36, True),
    ("nine-point stencil", nine_point, 25, True),
    ("periodic roll", lambda x: jnp.roll(x, 1) + jnp.roll(x, -1) - 2 * x ** 2, 12, True),
    ("gather const index", lambda x: x[_IDX] * x[jnp.asarray(_IDX[::-1])], 12, True),
    ("gather 2-d columns", lambda x: jnp.sin(x.reshape(3, 4)[:, jnp.array([0, 3])]).ravel(), 12, True),
    ("take_along_axis", lambda x: jnp.take_along_axis(x.reshape(3, 4), jnp.array([[1], [0], [3]]), 1).ravel(), 12, True),
    ("gather pairs of indices", lambda x: x.reshape(3, 4)[jnp.array([0, 2, 2]), jnp.array([1, 3, 0])] ** 2, 12, True),
    ("gather rows with slice", lambda x: x.reshape(3, 4)[jnp.array([[0, 1], [2, 2]]), 1:3].ravel(), 12, True),
    ("gather fill mode", lambda x: x.at[jnp.array([5, 20, 1])].get(mode="fill", fill_value=0.0), 12, True),
    ("gather clip mode", lambda x: jnp.take(x.reshape(3, 4), jnp.array([0, 7]), axis=1, mode="clip").ravel(), 12, True),
    ("scatter-add", lambda x: jnp.zeros(5).at[jnp.array([0, 2, 2, 4])].add(x[:4] ** 2), 12, True),
    ("scatter set (boundary)", lambda x: (x ** 2).at[jnp.array([0, 11])].set(1.0), 12, True),
    ("segment_sum", lambda x: jax.ops.segment_sum(jnp.exp(x), jnp.asarray(_SEG), 4), 12, True),
    ("row sums", lambda x: (x.reshape(3, 4) ** 2).sum(1), 12, True),
    ("centering (dense blocks)", lambda x: (x.reshape(3, 4) - x.reshape(3, 4).mean(1, keepdims=True)).ravel(), 12, True),
    ("row norms", lambda x: jnp.linalg.norm(x.reshape(4, 3), axis=1), 12, True),
    ("cumsum", lambda x: jnp.cumsum(x), 12, True),
    ("reverse cumprod", lambda x: jax.lax.cumprod(x, reverse=True), 6, True),
    ("convolve 1d", lambda x: jnp.convolve(x, jnp.array([1.0, 2.0, 3.0]), mode="same"), 12, True),
    ("conv 2d stride 2", _conv2d, 12, True),
    ("depthwise conv", _depthwise, 12, True),
    ("banded matmul (constant)", lambda x: jnp.asarray(_A_BAND) @ x, 12, True),
    ("block-diagonal matmul", lambda x: (x.reshape(4, 3) @ jnp.asarray(_W5)).ravel(), 12, True),
    ("kron structure einsum", lambda x: jnp.einsum("ij,jk->ik", jnp.asarray(np.kron(np.eye(2), _W5[:2, :2])), x.reshape(4, 3)).ravel(), 12, True),
    ("batched einsum, sparse constant per batch", lambda x: jnp.einsum("bmk,bkn->bmn", x.reshape(2, 3, 2), jnp.asarray(_B2)).ravel(), 12, True),
    ("sums of inputs through a sparse constant", lambda x: ((x[:6] + x[6:]).reshape(2, 3) @ jnp.asarray(_B2[0].T)).ravel(), 12, True),
    ("bilinear x^T x blocks", lambda x: (x.reshape(2, 2, 3) @ x.reshape(2, 3, 2)).ravel(), 12, True),
    ("transpose reshape", lambda x: jnp.tanh(x.reshape(3, 4).T).ravel(), 12, True),
    ("interior/negative pad", lambda x: jax.lax.pad(x, 0.0, ((-1, 2, 1),)) ** 2, 12, True),
    ("concatenate + split", lambda x: jnp.concatenate(jnp.split(x, 3)[::-1]) * x, 12, True),
    ("where constant mask", lambda x: jnp.where(jnp.arange(12) % 3 == 0, x ** 2, 0.0), 12, True),
    ("dynamic_slice", lambda x: jax.lax.dynamic_slice(x, (3,), (5,)) ** 2, 12, True),
    ("dynamic_update_slice", lambda x: jax.lax.dynamic_update_slice(x ** 2, x[:3] * 2, (7,)), 12, True),
    ("fori_loop stencil", lambda x: jax.lax.fori_loop(0, 2, lambda i, c: c + jnp.roll(c, 1) ** 2, x), 12, True),
    ("scan", lambda x: jax.lax.scan(lambda c, xi: (c * xi, c + xi), 1.0, x)[1], 6, True),
    ("while_loop", _while, 8, True),
    ("cond on x", lambda x: jax.lax.cond(x[0] > 0, lambda a: a * 2, lambda a: jnp.roll(a, 1), x), 8, False),
    ("sort", lambda x: jnp.sort(x.reshape(3, 4), axis=1).ravel(), 12, False),
    ("custom_jvp (softplus, logsumexp)", lambda x: jax.nn.softplus(x) + jax.nn.logsumexp(x.reshape(3, 4), axis=1).repeat(4), 12, True),
    ("straight-through custom_jvp", lambda x: _ste_round(x)[::-1] * 2.0, 12, True),
    ("custom_vjp", lambda x: _cube(x[::2]) + x[1::2], 12, True),
    ("nested jit", lambda x: jax.jit(lambda y: y[2:] * y[:-2])(x), 12, True),
    ("avg pool", lambda x: jax.lax.reduce_window(x.reshape(4, 3), 0.0, jax.lax.add, (2, 2), (1, 1), "VALID").ravel(), 12, True),
    ("max pool", lambda x: jax.lax.reduce_window(x.reshape(4, 3), -jnp.inf, jax.lax.max, (2, 1), (2, 1), "VALID").ravel(), 12, False),
    ("outer product", lambda x: (x[:4, None] * x[None, 4:8]).ravel(), 12, True),
    ("flip", lambda x: jnp.flip(x) * x, 12, True),
    ("data-dependent gather", lambda x: x[jnp.argsort(x)[:3]], 12, False),
    ("integer and zero-derivative ops", lambda x: x * jnp.floor(x) + jnp.sign(x) + (x > 0), 12, True),
    # a known mask that takes one case everywhere (select_n once dropped the other case)
    ("where one-sided constant mask", lambda x: jnp.where(jnp.arange(12) < 0, x ** 2, x[::-1]), 12, True),
    ("interp at constant points", lambda x: jnp.interp(jnp.array([0.5, 1.5, 7.25]), jnp.arange(12.0), x), 12, True),
    ("checkpoint (remat)", lambda x: jax.checkpoint(lambda y: jnp.sin(y[1:]) * y[:-1])(x), 12, True),
    ("tile", lambda x: jnp.tile(x[:3], 2) * x[6:], 12, True),
    ("PRNG-key constant", lambda x: x[::-1] * jax.random.normal(jax.random.key(0), (12,), x.dtype), 12, True),
]


def _dense_jacobian(f):
    """jax.jacfwd, or jax.jacrev where forward mode cannot run (custom_vjp)."""
    def jac(x):
        try:
            return jax.jacfwd(f)(x)
        except TypeError:
            return jax.jacrev(f)(x)
    return jac


def _dense_nonzeros(f, n, points=2):
    xs = jax.random.normal(jax.random.key(1), (points, n), jnp.float64)
    J = np.asarray(jax.jit(jax.vmap(_dense_jacobian(f)))(xs)).reshape(points, -1, n) != 0
    return J.any(0)


@pytest.mark.parametrize("name,f,n,exact", CASES, ids=[c[0] for c in CASES])
def test_pattern_contains_every_nonzero(x64, name, f, n, exact):
    x = jnp.zeros(n, jnp.float64)
    pattern = fl.sparsity(f, x)
    P = pattern.matrix.toarray()
    nz = _dense_nonzeros(f, n)
    assert P.shape == nz.shape
    assert not (nz & ~P).any(), f"{name}: missed {np.argwhere(nz & ~P)[:3]}"
    if exact:
        assert (nz == P).all(), f"{name}: {int((P & ~nz).sum())} extra entries"


def test_catalogue_has_at_least_30_functions():
    assert len(CASES) >= 30


@pytest.mark.slow
@pytest.mark.parametrize("name,f,n,exact", CASES[::3], ids=[c[0] for c in CASES[::3]])
def test_values_match_jacfwd_float64(x64, name, f, n, exact):
    x = jax.random.normal(jax.random.key(7), (n,), jnp.float64)
    ref = np.asarray(jax.jit(_dense_jacobian(f))(x))
    assert isinstance(fl.jacobian(f, sparse=True)(x), jsparse.BCOO)
    modes = ("auto", "fwd", "rev")
    if name == "custom_vjp":          # no forward mode: auto falls back to VJPs
        with pytest.raises(TypeError, match="custom_vjp"):
            fl.jacobian(f, sparse=True, mode="fwd")(x)
        modes = ("auto", "rev")
    both = jax.jit(lambda x: [fl.jacobian(f, sparse=True, mode=m)(x).todense() for m in modes])
    for J in both(x):
        np.testing.assert_allclose(np.asarray(J), ref, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- colorings


def _patterns_for_coloring():
    out = []
    for name, f, n, _ in CASES:
        with jax.enable_x64(True):
            out.append((name, fl.sparsity(f, jnp.zeros(n, jnp.float64)).matrix))
    arrow = np.eye(30, dtype=bool)
    arrow[0, :] = arrow[:, 0] = True
    out.append(("arrowhead", sp.csr_matrix(arrow)))
    out.append(("random", sp.random(40, 30, density=0.1, random_state=0, format="csr") != 0))
    return out


def _bicoloring_valid(P, bi):
    P = sp.csr_matrix(P, dtype=bool)
    rows = np.repeat(np.arange(P.shape[0]), np.diff(P.indptr))
    cols = P.indices
    dense = P.toarray()
    for (i, j), fwd in zip(zip(rows, cols), bi.fwd_entry):
        if fwd:
            if bi.col_colors[j] < 0:
                return False
            same = np.flatnonzero(bi.col_colors == bi.col_colors[j])
            if dense[i, same].sum() != 1:
                return False
        else:
            if bi.row_colors[i] < 0:
                return False
            same = np.flatnonzero(bi.row_colors == bi.row_colors[i])
            if dense[same, j].sum() != 1:
                return False
    return True


def test_colorings_are_valid():
    for name, P in _patterns_for_coloring():
        c = coloring.column_coloring(P)
        assert coloring.is_valid_column_coloring(P, c), name
        r = coloring.row_coloring(P)
        assert coloring.is_valid_column_coloring(sp.csr_matrix(P.T), r), name
        bi = coloring.bicoloring(P)
        if bi is not None:
            assert _bicoloring_valid(P, bi), name


def test_cyclic_coloring_is_optimal_where_valid_and_falls_back_otherwise():
    block = sp.block_diag([np.ones((6, 4), bool)] * 5, format="csr")         # a batch
    band = sp.diags([np.ones(19), np.ones(20), np.ones(19)], [-1, 0, 1], shape=(20, 20), format="csr")
    for P, k in ((block, 4), (band, 3)):
        assert coloring._cyclic(P, k) is not None
        c = coloring.column_coloring(P)
        assert coloring.is_valid_column_coloring(P, c) and coloring.ncolors(c) == k
        greedy = coloring._greedy(coloring._intersection_graph(P), np.arange(P.shape[1]))
        assert coloring.ncolors(c) <= coloring.ncolors(greedy)
    # a 5-point stencil on a 6 x 6 grid: row v holds columns v - 6 and v - 1, congruent
    # mod 5, so the cyclic coloring is not valid and the graph coloring runs
    g = 6
    tri = sp.diags([np.ones(g - 1), np.ones(g), np.ones(g - 1)], [-1, 0, 1])
    lap = sp.csr_matrix(sp.kronsum(tri, tri) != 0)
    assert coloring._cyclic(lap, 5) is None
    c = coloring.column_coloring(lap)
    assert coloring.is_valid_column_coloring(lap, c) and coloring.ncolors(c) >= 5
    # mostly empty rows: the check sorts instead of counting per (row, color)
    tall = np.zeros((20000, 6), bool)
    tall[0, [0, 1]] = tall[7, [2, 3]] = True
    assert coloring._cyclic(sp.csr_matrix(tall), 2) is not None
    tall[9, [0, 2]] = True                          # 0 and 2 are both even
    assert coloring._cyclic(sp.csr_matrix(tall), 2) is None
    assert coloring.is_valid_column_coloring(sp.csr_matrix(tall), coloring.column_coloring(tall))


def test_validity_checkers_can_fail():
    P = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 1]], bool))
    assert not coloring.is_valid_column_coloring(P, np.array([0, 0, 1]))
    assert coloring.is_valid_column_coloring(P, np.array([0, 1, 0]))
    path = sp.diags([np.ones(3), np.ones(3)], [-1, 1], shape=(4, 4), format="csr")
    assert not coloring.is_valid_star_coloring(path, np.array([0, 1, 0, 1]))   # 2-colored P4
    assert coloring.is_valid_star_coloring(path, np.array([0, 1, 2, 0]))
    bad = coloring.Bicoloring(np.array([-1, -1]), np.array([0, 0, 0]), np.ones(4, bool), "rows")
    assert not _bicoloring_valid(P, bad)


def test_arrowhead_bicoloring_needs_three_passes():
    n = 200
    x = jnp.ones(n)
    p = fl.sparsity(lambda x: jnp.concatenate([jnp.sum(x ** 2)[None], x[1:] ** 3 + x[0]]), x)
    passes = p.passes()
    assert passes["fwd"] == n and passes["rev"] == n and passes["bi"] == 3
    assert p.plan().kind == "bi"


def test_stencil_color_counts():
    N = 20
    lap = lambda u: (lambda g, p: (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * g).ravel())(
        u.reshape(N, N), jnp.pad(u.reshape(N, N), 1))
    assert fl.sparsity(lap, jnp.ones(N * N)).plan().passes == 5
    assert fl.sparsity(rd1d, jnp.ones(50)).plan().passes == 3


def _rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


_SLOW = pytest.mark.slow
HESSIAN_CASES = [
    ("rosenbrock", _rosenbrock, 20),
    pytest.param(*("sum of cubes + chain", lambda x: jnp.sum(x ** 3) + jnp.sum(x[1:] * x[:-1]), 10), marks=_SLOW),
    pytest.param(*("laplacian energy", lambda u: jnp.sum(lap2d(u) ** 2), 36), marks=_SLOW),
    pytest.param(*("arrowhead", lambda x: x[0] * jnp.sum(x ** 2) + jnp.sum(jnp.sin(x)), 15), marks=_SLOW),
    pytest.param(*("gathered pairs", lambda x: jnp.sum(x[_IDX] * x[jnp.asarray(_IDX[::-1])]), 12), marks=_SLOW),
    pytest.param(*("block quadratic", lambda x: jnp.sum((x.reshape(4, 3) @ jnp.asarray(_W5)) ** 2), 12), marks=_SLOW),
    # the gradient of a max pool is select_and_scatter_add
    ("max pool", lambda x: jnp.sum(jax.lax.reduce_window(x.reshape(4, 4), -jnp.inf, jax.lax.max, (2, 2), (2, 2),
                                                         "SAME") ** 3), 16),
]


@pytest.mark.parametrize("name,f,n", HESSIAN_CASES)
def test_hessian_pattern_star_coloring_and_values(x64, name, f, n):
    x = jax.random.normal(jax.random.key(3), (n,), jnp.float64)
    p = fl.sparsity(f, x, hessian=True)
    H = np.asarray(jax.jit(jax.hessian(f))(x))
    assert not ((H != 0) & ~p.matrix.toarray()).any()
    assert coloring.is_valid_star_coloring(p.matrix, p.star_colors())
    both = jax.jit(lambda x: (fl.hessian(f, sparse=True)(x).todense(),
                              fl.hessian(f, sparse=True, output="dense", mode="rev-over-rev")(x)))
    for out in both(x):
        np.testing.assert_allclose(np.asarray(out), H, rtol=1e-12, atol=1e-12)


def test_rosenbrock_needs_three_hvps():
    p = fl.sparsity(_rosenbrock, jnp.ones(1000), hessian=True)
    assert p.passes()["star"] == 3


@settings(max_examples=25, deadline=None)
@given(st.integers(5, 40), st.floats(0.02, 0.3), st.integers(0, 10_000))
def test_star_coloring_property_random(n, density, seed):
    R = sp.random(n, n, density=density, random_state=seed, format="csr") != 0
    S = sp.csr_matrix(R + R.T + sp.identity(n, format="csr", dtype=bool))
    colors = coloring.star_coloring(S)
    assert coloring.is_valid_star_coloring(S, colors)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 30), st.integers(2, 30), st.floats(0.02, 0.4), st.integers(0, 10_000))
def test_column_row_bicoloring_random(m, n, density, seed):
    P = sp.random(m, n, density=density, random_state=seed, format="csr") != 0
    P = sp.csr_matrix(P)
    assert coloring.is_valid_column_coloring(P, coloring.column_coloring(P))
    assert coloring.is_valid_column_coloring(sp.csr_matrix(P.T), coloring.row_coloring(P))
    bi = coloring.bicoloring(P)
    if bi is not None:
        assert _bicoloring_valid(P, bi)
    # the driver's decompression recovers every entry of a random J with this pattern
    J = P.toarray() * np.random.default_rng(seed).standard_normal((m, n))
    pat = fl.Pattern(P)
    for mode in ("fwd", "rev", "auto"):
        plan = pat.plan(mode)
        fwd_idx, rev_idx, from_fwd = decompression(pat, plan)
        got = np.zeros(pat.nnz)
        if plan.n_jvp:
            B = (J @ _seeds(plan.col_colors, np.float64).T).T          # JVPs: colors x m
            got = np.where(from_fwd, B.reshape(-1)[fwd_idx], got)
        if plan.n_vjp:
            W = _seeds(plan.row_colors, np.float64) @ J                # VJPs: colors x n
            got = np.where(from_fwd, got, W.reshape(-1)[rev_idx])
        np.testing.assert_allclose(got, J[pat.rows, pat.cols], rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- API


@pytest.mark.slow
def test_options_layout_chunks_argnums_aux(x64):
    f = lambda a, b: jnp.concatenate([a[1:] * b[:-1], jnp.sin(a) * b[0]])
    a = jax.random.normal(jax.random.key(0), (6,), jnp.float64)
    b = jax.random.normal(jax.random.key(1), (6,), jnp.float64)
    g = lambda x, y: jnp.sum(x ** 2 * y) + jnp.sum(x[1:] * x[:-1])

    @jax.jit
    def ours(a, b):
        Ja, Jb = fl.jacobian(f, argnums=(0, 1), sparse=True, chunk_size=2)(a, b)
        Jd = fl.jacobian(f, sparse=True, layout="denominator", output="dense", mode="rev", chunk_size=1)(a, b)
        J2, aux = fl.jacobian(lambda x: (x[1:] ** 2, x.sum()), sparse=True, has_aux=True)(a)
        tree = fl.jacobian(lambda d: d["u"] * d["v"][::-1], sparse=True)({"u": a, "v": b})
        H = fl.hessian(g, argnums=(0, 1), sparse=True, output="dense")(a, b)
        return Ja.todense(), Jb.todense(), Jd, J2.todense(), aux, {k: v.todense() for k, v in tree.items()}, H

    Ja, Jb, Jd, J2, aux, tree, H = ours(a, b)
    ra, rb = jax.jacfwd(f, argnums=(0, 1))(a, b)
    np.testing.assert_allclose(Ja, ra, rtol=1e-12)
    np.testing.assert_allclose(Jb, rb, rtol=1e-12)
    np.testing.assert_allclose(Jd, ra.T, rtol=1e-12)
    np.testing.assert_allclose(J2, 2 * np.diag(np.asarray(a[1:])) @ np.eye(6)[1:], rtol=1e-12)
    assert float(aux) == pytest.approx(float(a.sum()))
    assert set(tree) == {"u", "v"}
    np.testing.assert_allclose(tree["u"], np.diag(np.asarray(b[::-1])), rtol=1e-12)
    ref = jax.hessian(g, argnums=(0, 1))(a, b)
    for i in range(2):
        for j in range(2):
            np.testing.assert_allclose(H[i][j], ref[i][j], rtol=1e-12, atol=1e-12)


def test_tensor_shapes(x64):
    f = lambda x: jnp.pad(x, 1)[1:-1, 2:] * x
    x = jax.random.normal(jax.random.key(0), (3, 4), jnp.float64)
    assert jax.eval_shape(fl.jacobian(f, sparse=True), x).shape == (3, 4, 3, 4)
    J = jax.jit(lambda x: fl.jacobian(f, sparse=True)(x).todense())(x)
    np.testing.assert_allclose(J, jax.jacfwd(f)(x), rtol=1e-12)


@pytest.mark.slow
def test_user_given_patterns_skip_detection(x64):
    f = lambda x: x[1:] * x[:-1]
    x = jax.random.normal(jax.random.key(0), (8,), jnp.float64)
    ref = jax.jacfwd(f)(x)
    true = np.asarray(ref) != 0
    givens = (true, sp.csr_matrix(true), jsparse.BCOO.fromdense(true.astype(np.float32)),
              true.reshape(7, 8), fl.sparsity(f, x))
    outs = jax.jit(lambda x: [fl.jacobian(f, sparsity=g, output="dense")(x) for g in givens])(x)
    for J in outs:
        np.testing.assert_allclose(J, ref, rtol=1e-12)


@pytest.mark.slow
def test_works_under_jit_vmap_and_grad(x64):
    xs = jax.random.normal(jax.random.key(0), (4, 10), jnp.float64)
    jac = fl.jacobian(rd1d, sparse=True, output="dense")
    np.testing.assert_allclose(jax.jit(jax.vmap(jac))(xs), jax.vmap(jax.jacfwd(rd1d))(xs), rtol=1e-12)
    bcoo = jax.jit(fl.jacobian(rd1d, sparse=True))(xs[0])
    np.testing.assert_allclose(bcoo.todense(), jax.jacfwd(rd1d)(xs[0]), rtol=1e-12)
    loss = lambda x: jnp.sum(fl.jacobian(rd1d, sparse=True)(x).data ** 2)
    ref = lambda x: jnp.sum(jax.jacfwd(rd1d)(x) ** 2)
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(xs[0]), jax.jit(jax.grad(ref))(xs[0]), rtol=1e-10)
    hl = lambda x: jnp.sum(fl.hessian(_rosenbrock, sparse=True)(x).data)
    np.testing.assert_allclose(jax.jit(jax.grad(hl))(xs[0]),
                               jax.jit(jax.grad(lambda x: jnp.sum(jax.hessian(_rosenbrock)(x))))(xs[0]), rtol=1e-10)
    # a closed-over traced value: the pattern does not depend on it
    scale = lambda s, x: fl.jacobian(lambda y: s * y[1:] * y[:-1], sparse=True, output="dense")(x)
    np.testing.assert_allclose(jax.jit(scale)(2.0, xs[0]),
                               jax.jacfwd(lambda y: 2.0 * y[1:] * y[:-1])(xs[0]), rtol=1e-12)


def test_detection_is_cached_and_cleared():
    fl.clear_caches()
    f = lambda x: x[1:] - x[:-1]
    p1 = fl.sparsity(f, jnp.ones(9))
    p2 = fl.sparsity(f, jnp.ones(9))
    assert p1 is p2
    fl.clear_caches()
    assert fl.sparsity(f, jnp.ones(9)) is not p1


def test_pattern_repr_plot_and_report(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    p = fl.sparsity(rd1d, jnp.ones(20))
    text = repr(p)
    assert "nnz=58" in text and "3 JVPs" in text and "#" in text
    fig = p.plot()
    fig.savefig(tmp_path / "spy.png")
    assert (tmp_path / "spy.png").stat().st_size > 0
    report = explain_sparse(p, dense_plan="rev")
    assert "columns colored (JVPs)" in report and "dense forward" in report
    cost = sparse_cost(p)
    assert cost["best"] == "sparse" and cost["passes"] == 3 and cost["sparse"] < cost["fwd"]
    dense = fl.Pattern(np.ones((5, 5), bool))
    assert sparse_cost(dense)["best"] != "sparse" or sparse_cost(dense)["sparse"] <= sparse_cost(dense)["fwd"]


# ----------------------------------------------------------------------------- bad input


def test_error_non_array_output():
    with pytest.raises(TypeError, match=r"jacobian\(<lambda>, sparse=True\).*one array"):
        fl.jacobian(lambda x: (x, x), sparse=True)(jnp.ones(3))


def test_error_sparse_hessian_of_a_tuple_does_not_suggest_has_aux():
    # the sparse Hessian takes no has_aux: its message must not send the user there
    with pytest.raises(TypeError, match=r"hessian\(<lambda>, sparse=True\).*got tuple\. Return one "
                                        r"scalar, or use jacobian\(\.\.\., sparse=True\)") as info:
        fl.hessian(lambda x: (jnp.sum(x ** 2), x), sparse=True)(jnp.ones(3))
    assert "has_aux" not in str(info.value)
    with pytest.raises(TypeError, match="has_aux=True to also return other values"):
        fl.grad(lambda x: (jnp.sum(x ** 2), x))(jnp.ones(3))   # grad does take it


def test_error_pattern_wrong_shape():
    with pytest.raises(ValueError, match=r"jacobian\(<lambda>, sparsity=\.\.\.\).*shape \(3, 3\).*expected \(2, 3\)"):
        fl.jacobian(lambda x: x[1:], sparsity=np.eye(3, dtype=bool))(jnp.ones(3))
    with pytest.raises(TypeError, match="sparsity must be"):
        fl.jacobian(lambda x: x[1:], sparsity=object())(jnp.ones(3))


def test_error_pattern_missing_a_nonzero():
    def shifted(x):
        return x[1:] * x[:-1]
    wrong = np.eye(4, 5, dtype=bool)           # misses the superdiagonal
    with pytest.raises(ValueError, match=r"jacobian\(shifted, check=True\).*misses 4 nonzero"):
        fl.jacobian(shifted, sparsity=wrong, check=True)(jnp.ones(5))
    fl.jacobian(shifted, sparse=True, check=True)(jnp.ones(5))          # detected: passes
    with pytest.raises(ValueError, match=r"hessian\(<lambda>, check=True\).*misses"):
        fl.hessian(lambda x: jnp.sum(x[1:] * x[:-1]), sparsity=np.eye(5, dtype=bool), check=True)(jnp.ones(5))


def test_error_check_with_traced_closure():
    f = lambda s, x: fl.jacobian(lambda y: s * y, sparse=True, check=True)(x)
    with pytest.raises(ValueError, match="check=True.*outside jax.jit"):
        jax.jit(f)(1.0, jnp.ones(3))


def test_error_options_without_sparse():
    with pytest.raises(ValueError, match="pass sparse=True"):
        fl.jacobian(jnp.sin, output="dense")
    with pytest.raises(ValueError, match="output"):
        fl.jacobian(jnp.sin, sparse=True, output="csr")
    with pytest.raises(ValueError, match=r"hessian\(f\)\(\*args\)|scalar"):
        fl.hessian(lambda x: x ** 2, sparse=True)(jnp.ones(3))


def test_unknown_primitive_is_dense_with_a_warning():
    def f(x):
        y = jax.pure_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
        return y[:3] + x[:3]
    with pytest.warns(SparsityWarning, match="pure_callback"):
        p = fl.sparsity(f, jnp.ones(6))
    assert p.matrix.toarray().all()


# ----------------------------------------------------------------------------- example


def test_reaction_diffusion_newton_example_converges_quadratically():
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples",
                        "reaction_diffusion_newton.py")
    spec = importlib.util.spec_from_file_location("example_rd_newton", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    norms = module.main(n=16, verbose=False)
    assert norms[-1] < 1e-8 * norms[0]
    # quadratic: once close, each residual is far below the previous one squared-ish
    assert norms[3] < 1e-2 * norms[2]
    with jax.enable_x64(True):
        assert module.dense_check(8) < 1e-10


def test_max_pool_hessian_needs_no_dense_fallback():
    f = lambda x: jnp.sum(jax.lax.reduce_window(x.reshape(4, 4), -jnp.inf, jax.lax.max, (2, 2), (2, 2), "SAME") ** 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SparsityWarning)
        p = fl.sparsity(f, jnp.ones(16), hessian=True)
    # each output of the pool sees only its own 2x2 window: block diagonal, 4 blocks of 4x4
    assert p.nnz == 64 and p.passes()["star"] == 4


def test_user_given_pattern_skips_detection(monkeypatch):
    from functorch_lite._sparse import driver

    def no_detection(*args, **kwargs):
        raise AssertionError("detection ran although sparsity= was given")

    monkeypatch.setattr(driver, "jacobian_pattern", no_detection)
    fl.clear_caches()
    f = lambda x: x[1:] * x[:-1]
    x = jnp.arange(1.0, 6.0)
    given = sp.csr_matrix(np.eye(4, 5, dtype=bool) | np.eye(4, 5, k=1, dtype=bool))
    J = fl.jacobian(f, sparsity=given, output="dense")(x)
    np.testing.assert_allclose(J, jax.jacfwd(f)(x))
    with pytest.raises(AssertionError, match="detection ran"):
        fl.jacobian(f, sparse=True)(x)


def test_spy_text_and_plot_colors():
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    p = fl.Pattern(np.eye(4, dtype=bool) | np.eye(4, k=1, dtype=bool), name="bidiag")
    assert p.spy() == "##..\n.##.\n..##\n...#"
    assert repr(p).endswith(p.spy()) and "Jacobian of bidiag" in repr(p) and "nnz=7" in repr(p)
    fig = p.plot()
    points = fig.axes[0].collections[0]
    np.testing.assert_array_equal(points.get_offsets(), np.stack([p.cols, p.rows], 1))
    plan = p.plan()
    assert plan.kind == "fwd"
    np.testing.assert_array_equal(points.get_array(), plan.col_colors[p.cols])   # a color per JVP
    arrow = np.eye(12, dtype=bool)
    arrow[0, :] = arrow[:, 0] = True
    groups = fl.Pattern(arrow).plot().axes[0].collections[0].get_array()
    assert len(set(np.asarray(groups).tolist())) == fl.Pattern(arrow).plan().passes == 3


def test_error_messages_say_what_to_do():
    with pytest.raises(TypeError, match=r"jacobian\(<lambda>, sparse=True\).*floating-point output.*astype"):
        fl.jacobian(lambda x: (x > 0).astype(jnp.int32), sparse=True)(jnp.ones(3))
    with pytest.raises(TypeError, match=r"jacobian\(<lambda>, sparse=True\).*floating-point inputs.*complex64.*real"):
        fl.jacobian(lambda x: x * 2, sparse=True)(jnp.ones(3, jnp.complex64))
    with pytest.raises(TypeError, match=r"sparsity\(<lambda>, \*args\).*one array.*each output separately"):
        fl.sparsity(lambda x: (x, x), jnp.ones(3))
    with pytest.raises(ValueError, match=r"hessian\(<lambda>, sparsity=\.\.\.\).*shape \(4, 4\); expected \(3, 3\) \("):
        fl.hessian(lambda x: jnp.sum(x ** 3), sparsity=np.eye(4, dtype=bool))(jnp.ones(3))
    for wrong in (jsparse.BCOO.fromdense(jnp.eye(3)), sp.eye(3, format="csr")):
        with pytest.raises(ValueError, match=r"jacobian\(<lambda>, sparsity=\.\.\.\).*shape \(3, 3\); expected \(2, 3\)"):
            fl.jacobian(lambda x: x[1:], sparsity=wrong)(jnp.ones(3))
    with pytest.raises(ValueError, match=r"jacobian\(<lambda>, sparsity=\.\.\.\).*expected \(6, 3\) or \(2, 3, 3\)"):
        fl.jacobian(lambda x: jnp.outer(x[1:], x), sparsity=np.eye(3, dtype=bool))(jnp.ones(3))
