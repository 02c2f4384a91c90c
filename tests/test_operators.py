"""laplacian / diff_operator / biharmonic / divergence: collapsed Taylor mode against
closed forms, the trace of jax.hessian, folx, and finite differences."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

import functorch_lite as fl
from functorch_lite._operators import OperatorCost, UnsupportedPrimitiveError, biharmonic_directions

from conftest import assert_tree_allclose


def hess_trace(f, x):
    """Reference: trace of the full Hessian (of each output), raw JAX."""
    H = jax.jit(jax.hessian(f))(x)
    return jnp.trace(H, axis1=-2, axis2=-1)


def fl_hess_trace(f, x):
    """Reference for functions with fl.nn layers (raw jax.hessian cannot run custom_vjp
    forward): this library's jacfwd(jacrev)."""
    H = jax.jit(fl.jacfwd(fl.jacrev(f)))(x)
    return jnp.trace(H, axis1=-2, axis2=-1)


def init_mlp(key, sizes, dtype=jnp.float64):
    keys = jax.random.split(key, len(sizes))
    return [(jax.random.normal(k, (a, b), dtype) / math.sqrt(a), 0.1 * jax.random.normal(k, (b,), dtype))
            for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


ACTIVATIONS = {
    "tanh": jnp.tanh,
    "softplus": jax.nn.softplus,
    "gelu": jax.nn.gelu,
    "gelu_exact": lambda z: jax.nn.gelu(z, approximate=False),
    "sigmoid": jax.nn.sigmoid,
    "sin": jnp.sin,
    "silu": jax.nn.silu,
}


def mlp_apply(params, x, act, norm=None):
    h = x
    for i, (W, b) in enumerate(params):
        h = h @ W + b
        if i < len(params) - 1:
            if norm == "layer_norm":
                h = fl.nn.layer_norm(h, jnp.ones_like(b) * 1.3, b)
            elif norm == "rms_norm":
                h = fl.nn.rms_norm(h, jnp.ones_like(b) * 0.7)
            h = act(h)
    return h


# ----------------------------------------------------------------------------- closed forms

@pytest.mark.parametrize("d", [1, 3, 7])
def test_laplacian_of_squared_norm_is_2d(x64, d):
    x = jnp.linspace(-1.0, 2.0, d)
    got = jax.jit(fl.laplacian(lambda x: jnp.sum(x ** 2)))(x)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, 2 * d, rtol=1e-13)


@pytest.mark.parametrize("d", [1, 5])
def test_laplacian_of_product_of_sines(x64, d):
    x = jnp.linspace(0.2, 1.3, d)
    f = lambda x: jnp.prod(jnp.sin(x))  # noqa: E731
    np.testing.assert_allclose(jax.jit(fl.laplacian(f))(x), -d * np.prod(np.sin(np.asarray(x))), rtol=1e-12)


def test_laplacian_of_vector_output_is_per_output(x64):
    x = jnp.array([0.3, -0.4, 1.1])
    f = lambda x: jnp.stack([jnp.sum(x ** 2), jnp.prod(jnp.sin(x)), x[0] * x[1] ** 3])  # noqa: E731
    expected = [6.0, -3 * np.prod(np.sin(np.asarray(x))), 6 * 0.3 * -0.4]
    np.testing.assert_allclose(jax.jit(fl.laplacian(f))(x), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("d", [1, 3, pytest.param(6, marks=pytest.mark.slow)])
def test_biharmonic_of_quartics(x64, d):
    """Δ²|x|⁴ = 8d(d+2); Δ²(a·x)⁴ = 24|a|⁴; Δ² Σ x_i⁴ = 24 d; each method."""
    x = jnp.linspace(-0.7, 1.9, d)
    a = jnp.linspace(0.5, -1.5, d)
    cases = [(lambda x: jnp.sum(x ** 2) ** 2, 8 * d * (d + 2)),
             (lambda x: (a @ x) ** 4, 24 * float(a @ a) ** 2),
             (lambda x: jnp.sum(x ** 4), 24 * d)]
    for f, expected in cases:
        for method in ("exact", "taylor4"):
            np.testing.assert_allclose(jax.jit(fl.biharmonic(f, method=method))(x), expected, rtol=1e-11)


def test_biharmonic_directions_reproduce_the_tensor_identity(x64):
    """Σ_r w_r v_r⊗4 contracted with any symmetric 4-tensor T gives Σ_ij T_iijj."""
    d = 4
    V, w = biharmonic_directions(d, jnp.float64)
    assert V.shape == (d * d, d)
    T = jax.random.normal(jax.random.key(0), (d,) * 4, jnp.float64)
    T = np.asarray(T)
    T = sum(np.transpose(T, p) for p in itertools.permutations(range(4)))  # symmetric
    got = np.einsum("r,ra,rb,rc,rd,abcd->", w, V, V, V, V, T)
    np.testing.assert_allclose(got, np.einsum("iijj->", T), rtol=1e-12)


def test_fokker_planck_operator_of_a_quadratic(x64):
    """f = x^T A x / 2 + b·x: Σ C_ij ∂_ij f = tr(C A), C = σσ^T or a matrix (any sign)."""
    key = jax.random.key(1)
    A = jax.random.normal(key, (4, 4), jnp.float64)
    A = A + A.T
    b = jnp.arange(4.0)
    sigma = jax.random.normal(jax.random.fold_in(key, 1), (4, 2), jnp.float64)
    f = lambda x: x @ A @ x / 2 + b @ x  # noqa: E731
    x = jnp.array([0.1, 0.2, -0.3, 0.4])
    np.testing.assert_allclose(jax.jit(fl.diff_operator(f, factor=sigma))(x), jnp.trace(sigma @ sigma.T @ A), rtol=1e-12)
    C = jnp.array([[1.0, 2.0, 0, 0], [0.0, -1.0, 0.5, 0], [0, 0.5, 3.0, 0], [0, 0, 0, 0.0]])
    # only the symmetric part counts; C is indefinite
    np.testing.assert_allclose(jax.jit(fl.diff_operator(f, C))(x), jnp.sum((C + C.T) / 2 * A), rtol=1e-12)


def test_divergence_of_linear_and_nonlinear_fields(x64):
    A = jnp.arange(9.0).reshape(3, 3)
    x = jnp.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(jax.jit(fl.divergence(lambda x: A @ x))(x), jnp.trace(A), rtol=1e-13)
    F = lambda x: jnp.sin(x) * jnp.roll(x, 1)  # noqa: E731
    np.testing.assert_allclose(jax.jit(fl.divergence(F))(x), jnp.trace(jax.jacfwd(F)(x)), rtol=1e-13)


# ------------------------------------------------------------ random MLPs vs jax.hessian

@pytest.mark.parametrize("act", [
    "tanh", "softplus", "gelu",
    *[pytest.param(a, marks=pytest.mark.slow) for a in ("gelu_exact", "sigmoid", "sin", "silu")]])
def test_laplacian_of_mlp_matches_hessian_trace(x64, act):
    params = init_mlp(jax.random.key(2), [5, 16, 16, 3])
    f = lambda x: mlp_apply(params, x, ACTIVATIONS[act])  # noqa: E731
    x = jax.random.normal(jax.random.key(3), (5,), jnp.float64)
    np.testing.assert_allclose(jax.jit(fl.laplacian(f))(x), hess_trace(f, x), rtol=1e-10, atol=1e-12)


@pytest.mark.slow   # 11 s
def test_identity_seed_takes_the_weights_rows_without_a_matmul(x64):
    """The exact Laplacian's seed is the identity: x @ W, W @ x and an einsum against a
    3-D weight give the right answer, and the program holds only the primal dots."""
    k1, k2, k3 = jax.random.split(jax.random.key(4), 3)
    W = jax.random.normal(k1, (5, 7), jnp.float64)
    A = jax.random.normal(k2, (7, 5), jnp.float64)
    T = jax.random.normal(k3, (3, 5, 4), jnp.float64)
    f = lambda x: jnp.tanh(x @ W).sum() + jnp.sin(A @ x).prod() + jnp.tanh(jnp.einsum("j,ijk->ik", x, T)).sum()  # noqa: E731,E501
    x = jax.random.normal(jax.random.key(5), (5,), jnp.float64)
    np.testing.assert_allclose(fl.laplacian(f)(x), hess_trace(f, x), rtol=1e-12)
    np.testing.assert_allclose(fl.divergence(lambda x: jnp.tanh(A.T @ jnp.sin(A @ x)))(x),
                               jnp.trace(jax.jacfwd(lambda x: jnp.tanh(A.T @ jnp.sin(A @ x)))(x)), rtol=1e-12)
    g = lambda x: jnp.tanh(x @ W).sum()  # noqa: E731
    dots = [e for e in jax.make_jaxpr(fl.laplacian(g))(x).jaxpr.eqns if e.primitive.name == "dot_general"]
    assert len(dots) == 1, dots   # the primal x @ W; no eye(5) @ W


@pytest.mark.parametrize("norm", ["layer_norm", "rms_norm"])
def test_operators_run_through_fl_nn_layers(x64, norm):
    params = init_mlp(jax.random.key(4), [4, 8, 8, 2])
    f = lambda x: mlp_apply(params, x, jnp.tanh, norm=norm)  # noqa: E731
    x = jax.random.normal(jax.random.key(5), (4,), jnp.float64)
    np.testing.assert_allclose(jax.jit(fl.laplacian(f))(x), fl_hess_trace(f, x), rtol=1e-10, atol=1e-12)
    g = lambda x: fl.nn.linear(x, params[0][0], params[0][1])[:4] * fl.nn.l2_norm(x)  # noqa: E731
    np.testing.assert_allclose(jax.jit(fl.divergence(g))(x), jnp.trace(fl.jacfwd(g)(x)), rtol=1e-11)
    small = init_mlp(jax.random.key(4), [2, 4, 1])
    s = lambda x: mlp_apply(small, x, jnp.tanh, norm=norm)[0]  # noqa: E731
    # two different propagations (4th order; 2nd order over 2nd order) agree
    bih = jax.jit(fl.biharmonic(s))(x[:2])
    np.testing.assert_allclose(bih, jax.jit(fl.biharmonic(s, method="taylor4"))(x[:2]), rtol=1e-8)


@pytest.mark.slow
def test_biharmonic_through_layer_norm_matches_nested_hessians(x64):
    params = init_mlp(jax.random.key(4), [3, 6, 1])
    s = lambda x: mlp_apply(params, x, jnp.tanh, norm="layer_norm")[0]  # noqa: E731
    x = jax.random.normal(jax.random.key(5), (3,), jnp.float64)
    ref = jax.jit(lambda x: fl_hess_trace(lambda y: fl_hess_trace(s, y), x))(x)
    np.testing.assert_allclose(jax.jit(fl.biharmonic(s))(x), ref, rtol=1e-8)


def test_laplacian_matches_folx(x64):
    folx = pytest.importorskip("folx")
    params = init_mlp(jax.random.key(6), [6, 32, 32, 1])
    f = lambda x: mlp_apply(params, x, jnp.tanh)[0]  # noqa: E731
    X = jax.random.normal(jax.random.key(7), (5, 6), jnp.float64)
    ours = jax.vmap(fl.laplacian(f))(X)
    with jax.numpy_rank_promotion("allow"):  # folx broadcasts ranks implicitly
        theirs = jax.vmap(folx.forward_laplacian(f, sparsity_threshold=0))(X).laplacian
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)


def test_pytree_and_tuple_argnums_count_every_element(x64):
    def f(p, q, c):
        return jnp.sum(jnp.tanh(p["a"]) * jnp.sin(q)) + jnp.sum(p["b"] ** 3) * c

    p = {"a": jnp.array([0.1, 0.4]), "b": jnp.array([[0.5, -0.2]])}
    q, c = jnp.array([0.3, 0.9]), jnp.float64(2.0)

    def flat(v):
        return f({"a": v[:2], "b": v[2:4].reshape(1, 2)}, v[4:], c)

    v = jnp.concatenate([p["a"], p["b"].ravel(), q])
    np.testing.assert_allclose(jax.jit(fl.laplacian(f, argnums=(0, 1)))(p, q, c), hess_trace(flat, v), rtol=1e-12)
    only_q = lambda q: f(p, q, c)  # noqa: E731
    np.testing.assert_allclose(jax.jit(fl.laplacian(f, argnums=1))(p, q, c), hess_trace(only_q, q), rtol=1e-12)


def test_laplacian_of_matrix_input_and_output_pytree(x64):
    X = jnp.array([[0.2, 0.3], [0.7, -0.1]])
    f = lambda X: {"det": jnp.linalg.det(X + 2 * jnp.eye(2)), "quad": jnp.sum(X ** 2)}  # noqa: E731
    got = jax.jit(fl.laplacian(f))(X)
    g = lambda v: jnp.linalg.det(v.reshape(2, 2) + 2 * jnp.eye(2))  # noqa: E731
    np.testing.assert_allclose(got["det"], hess_trace(g, X.ravel()), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got["quad"], 8.0)


def test_diff_operator_of_mlp_matches_hessian(x64):
    params = init_mlp(jax.random.key(8), [3, 12, 1])
    f = lambda x: mlp_apply(params, x, jax.nn.softplus)[0]  # noqa: E731
    x = jnp.array([0.3, -0.2, 0.8])
    C = jnp.array([[2.0, 0.3, -0.5], [0.3, -1.0, 0.2], [-0.5, 0.2, 0.5]])
    H = jax.hessian(f)(x)
    np.testing.assert_allclose(jax.jit(fl.diff_operator(f, C))(x), jnp.sum(C * H), rtol=1e-11)
    sigma = jnp.array([[1.0, 0.0], [0.5, 2.0], [0.0, -1.0]])
    np.testing.assert_allclose(jax.jit(fl.diff_operator(f, factor=sigma))(x), jnp.sum(sigma @ sigma.T * H), rtol=1e-11)


@pytest.mark.parametrize("method", ["exact", "taylor4"])
def test_biharmonic_of_mlp_matches_nested_hessians(x64, method):
    params = init_mlp(jax.random.key(9), [3, 8, 8, 2])
    f = lambda x: mlp_apply(params, x, jnp.tanh)  # noqa: E731
    x = jnp.array([0.3, -0.2, 0.8])
    ref = hess_trace(lambda y: hess_trace(f, y), x)
    np.testing.assert_allclose(jax.jit(fl.biharmonic(f, method=method))(x), ref, rtol=1e-9)


@settings(max_examples=4, deadline=None)
@given(d=st.integers(1, 5), width=st.integers(1, 6), seed=st.integers(0, 2 ** 16),
       act=st.sampled_from(sorted(ACTIVATIONS)))
def test_property_laplacian_equals_hessian_trace(d, width, seed, act):
    with jax.enable_x64(True):
        params = init_mlp(jax.random.key(seed), [d, width, 1])
        f = lambda x: jnp.sum(mlp_apply(params, x, ACTIVATIONS[act]) ** 2)  # noqa: E731
        x = jax.random.normal(jax.random.key(seed + 1), (d,), jnp.float64)
        np.testing.assert_allclose(jax.jit(fl.laplacian(f))(x), hess_trace(f, x), rtol=1e-9, atol=1e-11)


def test_elementwise_and_structural_primitives(x64):
    """One function through many primitive kinds: pow, div, sqrt, rsqrt, log, exp, erf,
    max, select_n, concatenate, slices, transpose, reductions, integer_pow, jit."""
    def f(x):
        y = jnp.concatenate([x, x[::-1] * 2.0])
        z = jnp.where(y > 0.2, jnp.sqrt(1 + y ** 2), jnp.exp(y) / (2 + y))
        m = jnp.maximum(y, 0.5 * y) + jax.lax.rsqrt(3.0 + y * y) + jnp.log1p(y ** 2)
        t = jax.jit(lambda u: jax.scipy.special.erf(u) * u ** 1.5)(jnp.abs(y) + 0.1)
        q = jnp.power(2.0 + y, y) + (1 + y) ** 3
        M = jnp.outer(z, m)
        return jnp.sum(M.T[1:3]) + jnp.max(t) + jnp.mean(q) + jax.nn.logsumexp(y)

    x = jnp.array([0.3, -0.7, 1.2])
    np.testing.assert_allclose(jax.jit(fl.laplacian(f))(x), hess_trace(f, x), rtol=1e-10)


def test_stop_gradient_blocks_the_coefficients(x64):
    f = lambda x: jnp.sum(jax.lax.stop_gradient(x ** 2) * x ** 2)  # noqa: E731
    x = jnp.array([1.0, 2.0])
    np.testing.assert_allclose(jax.jit(fl.laplacian(f))(x), 2 * np.sum(np.asarray(x) ** 2), rtol=1e-13)


# ------------------------------------------------------------------- transforms compose

def test_jit_vmap_and_float32():
    params = init_mlp(jax.random.key(10), [4, 16, 1], jnp.float32)
    f = lambda x: mlp_apply(params, x, jnp.tanh)[0]  # noqa: E731
    X = jax.random.normal(jax.random.key(11), (6, 4))
    got = jax.jit(jax.vmap(fl.laplacian(f)))(X)
    assert got.shape == (6,) and got.dtype == jnp.float32
    ref = jax.vmap(lambda x: hess_trace(f, x))(X)
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)


def test_grad_of_a_loss_containing_the_laplacian_matches_finite_differences():
    """check_grad: forward, reverse and finite differences of a PINN-style residual loss."""
    X = jnp.array([[0.1, 0.5], [0.7, -0.3], [-0.4, 0.2]])

    def loss(params):
        u = lambda x: mlp_apply(params, x, jnp.tanh)[0]  # noqa: E731
        res = jax.vmap(fl.laplacian(u))(X) + jnp.sin(X[:, 0])
        return jnp.mean(res ** 2)

    with jax.enable_x64(True):
        params = init_mlp(jax.random.key(12), [2, 6, 1])
    report = fl.check_grad(loss, params)
    assert report.passed


def test_check_grad_detects_a_wrong_laplacian_gradient():
    """The check above can fail: a loss whose 'gradient' is off by a factor is caught."""
    X = jnp.array([[0.1, 0.5], [0.7, -0.3]])

    @jax.custom_vjp
    def lap_sum(W):
        return jnp.sum(jax.vmap(fl.laplacian(lambda x: jnp.sum(jnp.tanh(x @ W))))(X))

    lap_sum.defvjp(lambda W: (lap_sum(W), W),
                   lambda W, g: (1.01 * g * jax.grad(lambda W: jnp.sum(
                       jax.vmap(fl.laplacian(lambda x: jnp.sum(jnp.tanh(x @ W))))(X)))(W),))
    with jax.enable_x64(True):
        W = jax.random.normal(jax.random.key(0), (2, 3), jnp.float64)
    report = fl.check_grad(lap_sum, W, modes=("rev",), raise_on_error=False)
    assert not report.passed


def test_pinn_loss_with_the_laplacian_trains():
    """Poisson -Δu = f on a few points, zero boundary by construction: the loss falls."""
    pts = jax.random.uniform(jax.random.key(13), (32, 2))
    params = init_mlp(jax.random.key(14), [2, 16, 1], jnp.float32)

    def u(params, x):
        return x[0] * (1 - x[0]) * x[1] * (1 - x[1]) * mlp_apply(params, x, jnp.tanh)[0]

    def loss(params):
        lap = jax.vmap(fl.laplacian(lambda x: u(params, x)))(pts)
        return jnp.mean((lap + 2 * jnp.pi ** 2 * jnp.sin(jnp.pi * pts[:, 0]) * jnp.sin(jnp.pi * pts[:, 1])) ** 2)

    opt = optax.adam(1e-2)
    state = opt.init(params)
    step = jax.jit(lambda p, s: _step(loss, opt, p, s))
    first = float(loss(params))
    for _ in range(150):
        params, state = step(params, state)
    assert float(loss(params)) < 0.1 * first


def _step(loss, opt, params, state):
    g = jax.grad(loss)(params)
    updates, state = opt.update(g, state, params)
    return optax.apply_updates(params, updates), state


# -------------------------------------------------------------------------- stochastic

def _mlp_point(seed, d, act):
    """A scalar MLP R^d -> R (width 16), a float64 point and its exact Laplacian."""
    params = init_mlp(jax.random.key(seed), [d, 16, 1])
    f = lambda x: mlp_apply(params, x, act)[0]  # noqa: E731
    x = jax.random.normal(jax.random.key(seed + 1), (d,), jnp.float64)
    return f, x, float(jax.jit(fl.laplacian(f))(x))


def test_stochastic_laplacian_mean_within_four_standard_errors(x64):
    f, x, exact = _mlp_point(15, 6, jnp.tanh)
    keys = jax.random.split(jax.random.key(0), 5)
    for dist in ("rademacher", "gaussian"):
        def both(key, dist=dist):
            est, se = fl.laplacian(f, method="stochastic", num_samples=64, key=key, distribution=dist,
                                   return_std=True)(x)
            plain = fl.laplacian(f, method="stochastic", num_samples=64, key=key, distribution=dist)(x)
            return est, se, plain

        est, se, plain = (np.asarray(a) for a in jax.jit(jax.vmap(both))(keys))
        assert np.all(se > 0)
        assert np.all(np.abs(est - exact) < 4 * se), (dist, est, se, exact)
        # the plain estimate sums the directions before scaling, return_std averages them:
        # the same value up to float64 rounding of terms of size ~1 (one lands near 0)
        np.testing.assert_allclose(plain, est, rtol=1e-12, atol=1e-14)


def test_stochastic_standard_error_falls_as_one_over_sqrt_k(x64):
    f, x, exact = _mlp_point(17, 8, jnp.sin)
    keys = jax.random.split(jax.random.key(0), 200)

    def stats(k):
        one = lambda key: fl.laplacian(f, method="stochastic", num_samples=k, key=key, return_std=True)(x)  # noqa: E731
        est, se = jax.jit(jax.vmap(one))(keys)
        # se² is an unbiased estimate of the variance of the estimate
        return np.asarray(est), float(np.sqrt(np.mean(np.asarray(se) ** 2)))

    e16, se16 = stats(16)
    e256, se256 = stats(256)
    assert 3.5 < se16 / se256 < 4.5                                 # sqrt(256 / 16) = 4
    # the reported standard error matches the spread of the estimates over seeds
    assert 0.8 < np.std(e16 - exact) / se16 < 1.25
    assert 0.8 < np.std(e256 - exact) / se256 < 1.25


def test_rademacher_is_exact_for_a_diagonal_hessian(x64):
    f = lambda x: jnp.sum(jnp.sin(x))  # noqa: E731
    x = jnp.array([0.1, 0.7, 1.3])
    est, se = jax.jit(fl.laplacian(f, method="stochastic", num_samples=4, key=jax.random.key(0), return_std=True))(x)
    np.testing.assert_allclose(est, -np.sum(np.sin(np.asarray(x))), rtol=1e-12)
    np.testing.assert_allclose(se, 0.0, atol=1e-12)


def test_stochastic_diff_operator_biharmonic_and_divergence(x64):
    params = init_mlp(jax.random.key(19), [3, 8, 1])
    f = lambda x: mlp_apply(params, x, jnp.tanh)[0]  # noqa: E731
    x = jnp.array([0.3, -0.2, 0.8])
    sigma = jnp.array([[1.0, 0.0], [0.5, 2.0], [0.0, -1.0]])
    cases = [
        (fl.diff_operator(f, factor=sigma), lambda k: fl.diff_operator(
            f, factor=sigma, method="stochastic", num_samples=256, key=k, return_std=True)),
        (fl.biharmonic(f), lambda k: fl.biharmonic(f, method="stochastic", num_samples=512, key=k,
                                                   return_std=True)),
        (fl.divergence(jnp.sin), lambda k: fl.divergence(jnp.sin, method="stochastic", num_samples=64,
                                                          key=k, distribution="gaussian", return_std=True)),
    ]
    keys = jax.random.split(jax.random.key(0), 3)
    for exact_op, make in cases:
        exact = float(jax.jit(exact_op)(x))
        est, se = (np.asarray(a) for a in jax.jit(jax.vmap(lambda k, make=make: make(k)(x)))(keys))
        assert np.all(se > 0) and np.all(np.abs(est - exact) < 4 * se), (exact, est, se)


def test_stochastic_works_under_jit_with_a_traced_key():
    f = lambda x: jnp.tanh(x[0] * x[1] + x[2]) ** 2  # noqa: E731  (a non-diagonal Hessian)
    x = jnp.array([0.1, 0.2, 0.3])
    run = jax.jit(lambda x, key: fl.laplacian(f, method="stochastic", num_samples=8, key=key)(x))
    a, b = run(x, jax.random.key(0)), run(x, jax.random.key(1))
    assert a.shape == () and not np.isclose(a, b)


# ------------------------------------------------------------------------------ explain

def test_explain_reports_passes_and_fewer_flops_than_the_hessian():
    params = init_mlp(jax.random.key(20), [16, 32, 1], jnp.float32)
    f = lambda x: mlp_apply(params, x, jnp.tanh)[0]  # noqa: E731
    x = jnp.ones(16)
    cost = fl.laplacian(f).explain(x)
    assert isinstance(cost, OperatorCost) and cost.dim == 16
    assert cost.flops_ratio > 1.3, cost
    assert "16 first-order directions" in str(cost) and "Hessian" in str(cost)
    g = lambda x: f(jnp.concatenate([x, x, x, x]))  # noqa: E731
    assert "16 directions" in str(fl.biharmonic(g, method="taylor4").explain(jnp.ones(4)))
    assert "collapsed Laplacian (4 directions)" in str(fl.biharmonic(g).explain(jnp.ones(4)))
    assert "tangents" in str(fl.divergence(jnp.sin).explain(x))
    c = fl.diff_operator(f, factor=jnp.ones((16, 2))).explain(x)
    assert "2 first-order directions" in str(c) and c.flops_ratio > 1


# ------------------------------------------------------------------------------- errors

def test_bad_input_errors_name_the_operator_and_argument():
    f = lambda x: jnp.sum(x ** 2)  # noqa: E731
    with pytest.raises(TypeError, match=r"laplacian\(<lambda>\)\(\*args\): args\[0\] has dtype int"):
        fl.laplacian(f)(jnp.arange(3))
    with pytest.raises(ValueError, match=r"laplacian\(<lambda>\): num_samples must be a positive int, got 0"):
        fl.laplacian(f, method="stochastic", num_samples=0, key=jax.random.key(0))
    with pytest.raises(TypeError, match="num_samples must be a positive int"):
        fl.laplacian(f, method="stochastic", num_samples=2.5, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"laplacian\(<lambda>\): method='stochastic' .* needs a PRNG key"):
        fl.laplacian(f, method="stochastic", num_samples=4)
    with pytest.raises(ValueError, match="key is only used by method='stochastic'"):
        fl.laplacian(f, key=jax.random.key(0))
    with pytest.raises(ValueError, match="return_std=True needs num_samples >= 2"):
        fl.laplacian(f, method="stochastic", num_samples=1, key=jax.random.key(0), return_std=True)
    with pytest.raises(ValueError, match="unknown method='hutch'"):
        fl.laplacian(f, method="hutch")
    with pytest.raises(ValueError, match="unknown distribution='uniform'"):
        fl.laplacian(f, method="stochastic", num_samples=3, key=jax.random.key(0), distribution="uniform")
    with pytest.raises(TypeError, match="key must be one PRNG key"):
        fl.laplacian(f, method="stochastic", num_samples=3, key=0)
    with pytest.raises(TypeError, match=r"laplacian: expected func to be a callable"):
        fl.laplacian(f(jnp.ones(2)))
    with pytest.raises(TypeError, match=r"laplacian\(<lambda>\)\(\*args\): the output is int32"):
        fl.laplacian(lambda x: jnp.sum(x > 0).astype(jnp.int32))(jnp.ones(2))


def test_bad_coefficients_and_fields():
    f = lambda x: jnp.sum(x ** 2)  # noqa: E731
    x = jnp.ones(3)
    with pytest.raises(ValueError, match=r"diff_operator\(<lambda>\)\(\*args\): coefficients must be a \(3, 3\) matrix"):
        fl.diff_operator(f, jnp.eye(2))(x)
    with pytest.raises(ValueError, match=r"factor must be a \(3, r\) matrix"):
        fl.diff_operator(f, factor=jnp.ones((2, 3)))(x)
    with pytest.raises(ValueError, match=r"factor must be a \(3, r\) matrix"):
        fl.diff_operator(f, factor=jnp.ones(3))(x)
    with pytest.raises(ValueError, match="pass exactly one of coefficients"):
        fl.diff_operator(f, jnp.eye(3), factor=jnp.eye(3))(x)
    with pytest.raises(ValueError, match="pass coefficients"):
        fl.diff_operator(f)
    with pytest.raises(ValueError, match="method='stochastic' needs factor"):
        fl.diff_operator(f, jnp.eye(3), method="stochastic", num_samples=3, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"divergence\(<lambda>\)\(\*args\): expected field to return a vector field"):
        fl.divergence(lambda x: jnp.sum(x))(x)
    with pytest.raises(TypeError, match=r"divergence: expected field to be a callable"):
        fl.divergence(3)
    with pytest.raises(ValueError, match=r"biharmonic\(<lambda>\): unknown method='fast'"):
        fl.biharmonic(f, method="fast")
    with pytest.raises(ValueError, match=r"biharmonic\(<lambda>\): method='stochastic' .* needs a PRNG key"):
        fl.biharmonic(f, method="stochastic", num_samples=3)


def test_unsupported_primitive_is_named():
    f = lambda x: jax.lax.cond(x[0] > 0, lambda y: jnp.sum(y ** 2), lambda y: jnp.sum(y ** 3), x)  # noqa: E731
    with pytest.raises(UnsupportedPrimitiveError, match=r"laplacian\(<lambda>\)\(\*args\): .* primitive 'cond'"):
        fl.laplacian(f)(jnp.ones(2))
    g = lambda x: jax.lax.fori_loop(0, 3, lambda i, y: jnp.sin(y), x).sum()  # noqa: E731
    with pytest.raises(UnsupportedPrimitiveError, match="primitive 'scan'"):
        fl.biharmonic(g)(jnp.ones(2))


def test_operator_names_and_docs():
    def energy(x):
        return jnp.sum(x ** 2)

    lap = fl.laplacian(energy)
    assert lap.__name__ == "laplacian(energy)" and "Laplacian of energy" in lap.__doc__
    assert repr(fl.divergence(jnp.sin)) == "<divergence(sin)>"
    assert_tree_allclose(lap(jnp.ones(2)), jnp.float32(4.0))


def test_laplacian_of_a_gradient_and_gradient_of_a_laplacian(x64):
    """The interpreter reads reverse-mode programs too: Δ(∇f) = ∇(Δf)."""
    f = lambda x: jnp.sum(jnp.tanh(x) ** 3) * x[0]  # noqa: E731
    x = jnp.array([0.3, 0.6, 0.9])
    ref = jnp.trace(jax.jacfwd(jax.hessian(f))(x), axis1=1, axis2=2)
    np.testing.assert_allclose(jax.jit(fl.laplacian(jax.grad(f)))(x), ref, rtol=1e-12)
    np.testing.assert_allclose(jax.jit(jax.grad(fl.laplacian(f)))(x), ref, rtol=1e-12)
