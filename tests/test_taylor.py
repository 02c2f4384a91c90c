"""derivative / taylor: Taylor mode against closed forms, nested grad, and the fallback."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import functorch_lite as fl
from functorch_lite._taylor import TaylorFallbackWarning

from conftest import assert_tree_allclose

ORDERS = range(0, 11)
X0 = 0.37


def nested_grad(f, k):
    for _ in range(k):
        f = jax.grad(f)
    return f


# ----------------------------------------------------------------------------- closed forms

CLOSED_FORMS = {
    # name: (f, k-th derivative as a function of (k, x))
    "exp(ax)": (lambda x: jnp.exp(-1.7 * x), lambda k, x: (-1.7) ** k * np.exp(-1.7 * x)),
    "sin": (jnp.sin, lambda k, x: np.sin(x + k * np.pi / 2)),
    "cos(2x)": (lambda x: jnp.cos(2 * x), lambda k, x: 2.0 ** k * np.cos(2 * x + k * np.pi / 2)),
    # 1 / (a - x): k! / (a - x)^(k+1)
    "1/(2-x)": (lambda x: 1 / (2.0 - x), lambda k, x: math.factorial(k) / (2.0 - x) ** (k + 1)),
    # x / (1 + x) = 1 - 1/(1+x): k >= 1 gives -(-1)^k k! / (1+x)^(k+1)
    "x/(1+x)": (lambda x: x / (1 + x),
                lambda k, x: x / (1 + x) if k == 0 else -((-1) ** k) * math.factorial(k) / (1 + x) ** (k + 1)),
    "log(1+x)": (lambda x: jnp.log(1 + x),
                 lambda k, x: np.log(1 + x) if k == 0 else (-1) ** (k - 1) * math.factorial(k - 1) / (1 + x) ** k),
}


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_closed_forms_all_orders_float64(x64, name):
    """All derivatives 0..10 from one Taylor pass: c_k k! = f^(k)(x0)."""
    f, dk = CLOSED_FORMS[name]
    c = fl.taylor(f, order=10)(jnp.float64(X0))
    assert c.dtype == jnp.float64 and c.shape == (11,)
    got = np.asarray(c) * np.array([math.factorial(k) for k in ORDERS], dtype=float)
    np.testing.assert_allclose(got, [dk(k, X0) for k in ORDERS], rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
@pytest.mark.parametrize("k", [0, 1, 4, 10])
def test_closed_forms_derivative_float64(x64, name, k):
    f, dk = CLOSED_FORMS[name]
    got = fl.derivative(f, order=k)(jnp.float64(X0))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), dk(k, X0), rtol=1e-11, atol=1e-11)


POLY = np.array([0.5, -1.0, 2.0, 0.25, -3.0, 1.5, 0.1, -0.2, 0.3, 0.05, -0.01, 0.02])  # degree 11


def poly_f(x):
    return sum(c * x ** i for i, c in enumerate(POLY))


def test_polynomial_all_orders_float64(x64):
    poly = np.polynomial.Polynomial(POLY)
    expected = [poly.deriv(k)(1.3) if k else poly(1.3) for k in ORDERS]
    c = fl.taylor(poly_f, order=10)(1.3)
    got = np.asarray(c) * np.array([math.factorial(k) for k in ORDERS], dtype=float)
    np.testing.assert_allclose(got, expected, rtol=1e-11)
    np.testing.assert_allclose(float(fl.derivative(poly_f, order=10)(1.3)), expected[10], rtol=1e-11)
    # degree 11: the 12th derivative vanishes
    assert float(fl.derivative(poly_f, order=12)(1.3)) == 0.0


@settings(max_examples=10, deadline=None)
@given(coeffs=st.lists(st.floats(-3, 3), min_size=1, max_size=7),
       x=st.floats(-1.5, 1.5), k=st.integers(0, 8))
def test_polynomial_property(coeffs, x, k):
    with jax.enable_x64(True):
        poly = np.polynomial.Polynomial(coeffs)
        f = lambda t: sum(c * t ** i for i, c in enumerate(coeffs))  # noqa: E731
        expected = poly.deriv(k)(x) if k else poly(x)
        got = fl.derivative(f, order=k)(x)
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-9, atol=1e-9)


def test_taylor_coefficients_closed_form(x64):
    c = fl.taylor(lambda x: jnp.exp(2 * x), order=10)(0.0)
    assert c.shape == (11,)
    np.testing.assert_allclose(np.asarray(c), [2.0 ** j / math.factorial(j) for j in range(11)], rtol=1e-13)
    # 1 / (1 - x) = sum x^j: every coefficient at 0 is 1; at x0, 1 / (1 - x0)^(j+1)
    c = fl.taylor(lambda x: 1 / (1 - x), order=10)(0.25)
    np.testing.assert_allclose(np.asarray(c), [1 / 0.75 ** (j + 1) for j in range(11)], rtol=1e-12)


# ----------------------------------------------------------------------------- against nesting


def composite(x):
    return jnp.sin(x) * jnp.exp(-x * x / 3) / (1 + x * x) + jnp.tanh(x) * jnp.log1p(x * x) + x ** 4


@pytest.mark.parametrize("k", range(1, 5))
def test_agrees_with_nested_grad(x64, k):
    xs = jnp.linspace(-2.0, 2.0, 7)
    ours = jax.jit(jax.vmap(fl.derivative(composite, order=k)))(xs)
    ref = jax.jit(jax.vmap(nested_grad(composite, k)))(xs)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-10, atol=1e-10)


def test_float32_close_to_float64():
    k = 6
    got32 = fl.derivative(composite, order=k)(0.4)
    assert got32.dtype == jnp.float32
    with jax.enable_x64(True):
        ref = fl.derivative(composite, order=k)(0.4)
    np.testing.assert_allclose(float(got32), float(ref), rtol=1e-4)


def test_taylor_matches_derivatives(x64):
    c = fl.taylor(composite, order=4)(0.3)
    for j in range(5):
        ref = composite(0.3) if j == 0 else jax.jit(nested_grad(composite, j))(0.3)
        np.testing.assert_allclose(float(c[j]), float(ref) / math.factorial(j), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- shapes, jit, vmap


def test_any_output_shape_and_pytree(x64):
    f = lambda x: {"a": jnp.stack([jnp.sin(x), jnp.exp(2 * x)]), "b": jnp.full((2, 3), x) ** 3}  # noqa: E731
    d = fl.derivative(f, order=3)(0.5)
    assert_tree_allclose(d, {"a": jnp.array([-np.cos(0.5), 8 * np.exp(1.0)]), "b": jnp.full((2, 3), 6.0)},
                         rtol=1e-12)
    c = fl.taylor(f, order=2)(0.5)
    assert c["a"].shape == (3, 2) and c["b"].shape == (3, 2, 3)
    np.testing.assert_allclose(np.asarray(c["b"][2]), np.full((2, 3), 3 * 0.5), rtol=1e-12)


def test_python_float_and_default_dtype():
    d = fl.derivative(lambda x: x ** 5, order=3)(2.0)
    assert d.dtype == jnp.float32
    assert float(d) == 240.0


def test_extra_args_and_kwargs_are_constants(x64):
    f = lambda x, a, *, b: jnp.exp(a * x) * b  # noqa: E731
    got = fl.derivative(f, order=4)(0.2, 1.5, b=3.0)
    np.testing.assert_allclose(float(got), 3.0 * 1.5 ** 4 * np.exp(0.3), rtol=1e-12)


def test_jit_and_vmap(x64):
    xs = jnp.linspace(-1.0, 1.0, 9)
    got = jax.jit(jax.vmap(fl.derivative(jnp.sin, order=7)))(xs)
    np.testing.assert_allclose(np.asarray(got), np.sin(np.asarray(xs) + 7 * np.pi / 2), rtol=1e-12, atol=1e-14)
    coeffs = jax.jit(fl.taylor(jnp.cos, order=3))(0.0)
    np.testing.assert_allclose(np.asarray(coeffs), [1.0, 0.0, -0.5, 0.0], atol=1e-15)


def test_order_zero_is_the_function():
    assert float(fl.derivative(jnp.exp, order=0)(1.0)) == pytest.approx(math.e, rel=1e-6)
    assert fl.taylor(jnp.exp, order=0)(1.0).shape == (1,)


# ----------------------------------------------------------------------------- direction


def test_directional_closed_form(x64):
    # f = sum(x^3): d^3 f[v, v, v] = 6 sum(v^3); d^2 f[v, v] = 6 sum(x v^2)
    x = jnp.array([1.0, -2.0, 0.5])
    v = jnp.array([0.3, 1.0, -2.0])
    f = lambda x: (x ** 3).sum()  # noqa: E731
    np.testing.assert_allclose(float(fl.derivative(f, order=3, direction=v)(x)), 6 * float((v ** 3).sum()))
    np.testing.assert_allclose(float(fl.derivative(f, order=2, direction=v)(x)), 6 * float((x * v ** 2).sum()))
    assert float(fl.derivative(f, order=4, direction=v)(x)) == 0.0


@pytest.mark.parametrize("k", range(1, 5))
def test_directional_agrees_with_nested_jvp(x64, k):
    A = jnp.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.7]])
    f = lambda x: jnp.tanh(A @ x) * jnp.exp(-(x ** 2).sum())  # noqa: E731
    x = jnp.array([0.3, -0.2, 0.4])
    v = jnp.array([1.0, 0.5, -1.5])
    h = lambda t: f(x + t * v)  # noqa: E731
    for _ in range(k):
        h = (lambda g: lambda t: jax.jvp(g, (t,), (1.0,))[1])(h)
    np.testing.assert_allclose(np.asarray(jax.jit(fl.derivative(f, order=k, direction=v))(x)),
                               np.asarray(jax.jit(h)(0.0)), rtol=1e-10, atol=1e-12)


def test_direction_pytree(x64):
    f = lambda p: jnp.sin(p["a"]).sum() * p["b"]  # noqa: E731
    x = {"a": jnp.array([0.1, 0.2]), "b": 2.0}
    v = {"a": jnp.array([1.0, 0.0]), "b": 0.0}
    got = fl.derivative(f, order=3, direction=v)(x)
    np.testing.assert_allclose(float(got), -2.0 * np.cos(0.1), rtol=1e-12)


# ----------------------------------------------------------------------------- fallback


def test_fallback_missing_rule_warns_and_is_right(x64):
    t = np.tan(0.3)
    with pytest.warns(TaylorFallbackWarning, match=r"no faithful rule for tan; falling back to nested jvp"):
        got = fl.derivative(jnp.tan, order=3)(0.3)
    np.testing.assert_allclose(float(got), 2 * (1 + t ** 2) * (1 + 3 * t ** 2), rtol=1e-12)


def test_fallback_names_control_flow(x64):
    f = lambda x: jax.lax.cond(x > 0, jnp.sin, jnp.cos, x)  # noqa: E731
    with pytest.warns(TaylorFallbackWarning, match="cond"):
        got = fl.derivative(f, order=4)(0.4)
    np.testing.assert_allclose(float(got), np.sin(0.4), rtol=1e-12)


def test_fallback_custom_jvp_never_wrong(x64):
    # jnp.sinc is a custom_jvp at 0; jet would ignore the rule and return 0 for f''(0)
    with pytest.warns(TaylorFallbackWarning, match="custom_jvp_call of _sinc_maclaurin"):
        got = fl.derivative(jnp.sinc, order=2)(0.0)
    np.testing.assert_allclose(float(got), -np.pi ** 2 / 3, rtol=1e-10)


def test_fallback_custom_vjp_uses_reverse(x64):
    @jax.custom_vjp
    def s(x):
        return jnp.sin(x)

    s.defvjp(lambda x: (jnp.sin(x), x), lambda x, c: (c * jnp.cos(x),))
    with pytest.warns(TaylorFallbackWarning, match="custom_vjp_call of s.*nested jacrev"):
        got = fl.derivative(lambda x: s(x) * 2.0, order=3)(0.3)
    np.testing.assert_allclose(float(got), -2 * np.cos(0.3), rtol=1e-12)


def test_no_warning_for_constant_only_primitives(x64):
    # iota/tan applied to constants never see a series: no fallback needed
    f = lambda x: (jnp.arange(3.0) * jnp.tan(jnp.ones(3)) * x ** 2).sum()  # noqa: E731
    got = fl.derivative(f, order=2)(1.0)  # filterwarnings=error: a warning would fail
    np.testing.assert_allclose(float(got), 2 * float((jnp.arange(3.0) * np.tan(1.0)).sum()), rtol=1e-12)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("order, exc, msg", [
    (-1, ValueError, r"derivative: order must be a non-negative int, got -1"),
    (2.0, TypeError, r"derivative: order must be a non-negative int, got 2.0 \(float\)"),
    (True, TypeError, r"order must be a non-negative int, got True"),
    ("3", TypeError, r"order must be a non-negative int"),
])
def test_bad_order(order, exc, msg):
    with pytest.raises(exc, match=msg):
        fl.derivative(jnp.sin, order=order)
    with pytest.raises(exc, match=msg.replace("derivative", "taylor")):
        fl.taylor(jnp.sin, order=order)


def test_non_scalar_input_needs_direction():
    with pytest.raises(ValueError, match=r"derivative\(sin, order=2\)\(x\): x must be a scalar when no "
                                         r"direction is given, got shape \(3,\)\. Pass direction=v"):
        fl.derivative(jnp.sin, order=2)(jnp.ones(3))


def test_direction_must_match_input():
    f = fl.derivative(lambda x: x.sum(), order=2, direction=jnp.ones(2))
    with pytest.raises(ValueError, match=r"direction has shape \(2,\) but x has shape \(3,\)"):
        f(jnp.ones(3))
    g = fl.derivative(lambda p: p["a"].sum(), order=2, direction=jnp.ones(2))
    with pytest.raises(ValueError, match="direction must have the same structure as x"):
        g({"a": jnp.ones(2)})


def test_integer_input_and_non_callable():
    with pytest.raises(TypeError, match=r"derivative\(sin, order=1\)\(x\): x has dtype int"):
        fl.derivative(jnp.sin, order=1)(jnp.array(1))
    with pytest.raises(TypeError, match="derivative: expected func to be a callable"):
        fl.derivative(3.0, order=1)


def test_switching_layer_uses_its_forward_rule(x64):
    from test_higher import switching_layer

    layer = switching_layer()
    # under taylor_mode() this layer (unlike functorch_lite.nn's) keeps its custom_vjp, so
    # jet cannot be used; nested jvp runs in forward_mode(), where it has a forward rule
    with pytest.warns(TaylorFallbackWarning, match="custom_vjp_call of rev.*nested jvp"):
        got = fl.derivative(layer, order=3)(0.3)
    np.testing.assert_allclose(float(got), -np.cos(0.3), rtol=1e-12)


@pytest.mark.parametrize("layer", ["l2_norm", "layer_norm"])
def test_nn_layers_run_in_taylor_mode_without_fallback(x64, layer):
    nn = fl.nn
    fn = nn.l2_norm if layer == "l2_norm" else (lambda x: nn.layer_norm(x, None, None))
    x = jnp.array([0.3, -1.2, 2.0, 0.7])
    v = jnp.array([1.0, 0.5, -0.25, 2.0])
    f = lambda x: (fn(x) * jnp.arange(1.0, 5.0)).sum()  # noqa: E731
    # the reference: nested jax.jacfwd (raw JAX, inside forward_mode so the layer has a rule)
    from functorch_lite._mode import forward_mode

    def ref(k):
        h = lambda t: f(x + t * v)  # noqa: E731
        for _ in range(k):
            h = jax.jacfwd(h)
        with forward_mode():
            return jax.jit(h)(0.0)

    for k in (1, 3):     # filterwarnings=error: a fallback warning would fail the test
        np.testing.assert_allclose(float(fl.derivative(f, order=k, direction=v)(x)), float(ref(k)),
                                   rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- high orders (issue 13)


def _sin_derivative(k, x):
    return [np.sin, np.cos, lambda t: -np.sin(t), lambda t: -np.cos(t)][k % 4](x)


@pytest.mark.slow  # long: CI's slow step runs it
@pytest.mark.parametrize("k", [34, 35])
def test_high_orders_float32_do_not_underflow(k):
    """c_34 of sin is ~1e-39 (below float32's normal range) and 34! is above its largest:
    the k-th derivative must still come out right (the true value is +-sin or +-cos)."""
    got = fl.derivative(jnp.sin, order=k)(jnp.float32(0.3))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, _sin_derivative(k, 0.3), rtol=1e-4)


@pytest.mark.slow  # long: CI's slow step runs it
def test_high_order_float64_against_closed_forms(x64):
    np.testing.assert_allclose(fl.derivative(jnp.sin, order=50)(0.3), _sin_derivative(50, 0.3), rtol=1e-10)
    # 1/(1-x): f^(k)(x) = k! / (1-x)^(k+1), far beyond float32 and exactly representable scale
    np.testing.assert_allclose(fl.derivative(lambda x: 1 / (1 - x), order=20)(0.5),
                               math.factorial(20) * 2.0 ** 21, rtol=1e-10)


def test_order_past_the_dtype_is_a_clear_error():
    with pytest.raises(ValueError, match=r"derivative\(sin, order=1000\)\(x\): order=1000 is past what float32 "
                                         r"can represent.*Use order <= \d+ in float32 \(float64 reaches order \d+"):
        fl.derivative(jnp.sin, order=1000)(jnp.float32(0.3))
    with jax.enable_x64(True):
        with pytest.raises(ValueError, match=r"order=5000 is past what float64 can represent.*Use order <= \d+ in float64\."):
            fl.derivative(jnp.sin, order=5000)(0.3)


def test_first_derivative_of_sqrt_at_zero_is_inf_like_grad():
    got = fl.derivative(jnp.sqrt, order=1)(0.0)
    assert got == jax.grad(jnp.sqrt)(0.0) == np.inf


def test_user_custom_vjp_falls_back_to_the_nesting_that_works():
    """The JAX docs' gradient clipping: a custom_vjp whose forward returns its input.
    Nested jvp is traced without error but fails when lowered; nested jacrev works."""
    @jax.custom_vjp
    def clip_gradient(lo, hi, x):
        return x

    clip_gradient.defvjp(lambda lo, hi, x: (x, (lo, hi)),
                         lambda res, g: (None, None, jnp.clip(g, *res)))
    f = lambda x: jnp.sin(clip_gradient(-0.75, 0.75, x))  # noqa: E731
    with pytest.warns(TaylorFallbackWarning, match=r"falling back to nested jacrev \(nested jvp cannot: "
                                                   r"TypeError: can't apply forward-mode"):
        got = fl.derivative(f, order=2)(1.0)
    np.testing.assert_allclose(got, jax.grad(jax.grad(f))(1.0), rtol=1e-6)


def test_no_nesting_works_names_vhp_and_rev_over_rev():
    @jax.custom_vjp
    def opaque(x):
        return jnp.sin(x)

    def bwd(x, g):  # a backward pass that cannot itself be differentiated
        return (jax.pure_callback(lambda a, b: np.cos(a) * b, jax.ShapeDtypeStruct((), jnp.float32), x, g),)

    opaque.defvjp(lambda x: (jnp.sin(x), x), bwd)
    with pytest.raises(TypeError, match=r"neither Taylor mode, nested jvp nor nested jacrev can differentiate this "
                                        r"function 3 times.*fl\.vhp or fl\.hessian\(f, mode=\"rev-over-rev\"\)"):
        fl.derivative(opaque, order=3)(jnp.float32(1.0))
