"""check_grad accepts correct derivatives and rejects wrong ones."""

import jax
import jax.numpy as jnp
import pytest

import functorch_lite as fl
from functorch_lite._check import GradCheckError, check_grad


def test_accepts_correct_functions_to_order_two():
    f = lambda w, X, y: jnp.sum((X @ w - y) ** 2) + jnp.sum(jnp.exp(jnp.sin(w)))
    report = fl.check_grad(f, jnp.ones(3), jnp.ones((4, 3)), jnp.arange(4.0), order=2)
    assert report.passed and len(report.comparisons) == 9
    assert report.max_error < 1e-8
    assert "d2 of rev" in str(report)


def test_pytree_inputs_and_outputs_and_argnums():
    f = lambda p, scale: {"a": jnp.tanh(p["w"] * scale), "b": jnp.sum(p["v"] ** 3)}
    p = {"w": jnp.array([0.1, 0.4]), "v": jnp.array([[1.0, 2.0]])}
    assert fl.check_grad(f, p, 2.0, argnums=0, order=2).passed


def _sin_with_rule(factor):
    @jax.custom_vjp
    def f(x):
        return jnp.sin(x)

    f.defvjp(lambda x: (jnp.sin(x), jnp.cos(x)), lambda c, g: (c * g * factor,))
    return f


def test_rejects_a_deliberately_wrong_reverse_rule():
    x = jnp.array([0.3, 0.7, -1.1])
    assert fl.check_grad(_sin_with_rule(1.0), x, modes=("rev",)).passed
    with pytest.raises(fl.GradCheckError, match=r"d1 by rev = .* but finite differences give") as e:
        fl.check_grad(_sin_with_rule(1.001), x, modes=("rev",))          # off by 0.1%
    assert not e.value.report.passed


def test_rejects_a_wrong_forward_rule_and_reports_without_raising():
    @jax.custom_jvp
    def f(x):
        return x ** 3

    f.defjvp(lambda p, t: (p[0] ** 3, 3.003 * p[0] ** 2 * t[0]))
    report = fl.check_grad(f, jnp.array([1.0, 2.0]), raise_on_error=False)
    assert not report.passed
    assert {(c.method, c.passed) for c in report.comparisons if c.reference == "finite differences"} == {("fwd", False), ("rev", False)}


def test_rejects_wrong_second_derivative():
    # first derivative right, its derivative wrong: only order=2 sees it
    @jax.custom_jvp
    def f(x):
        return jnp.sin(x)

    @jax.custom_jvp
    def cos_wrong(x):
        return jnp.cos(x)

    cos_wrong.defjvp(lambda p, t: (jnp.cos(p[0]), -1.01 * jnp.sin(p[0]) * t[0]))
    f.defjvp(lambda p, t: (jnp.sin(p[0]), cos_wrong(p[0]) * t[0]))
    x = jnp.array([0.4, 1.3])
    assert fl.check_grad(f, x, order=1).passed
    with pytest.raises(fl.GradCheckError, match=r"d2 of"):
        fl.check_grad(f, x, order=2)


def test_non_differentiated_float_args_are_cast_too():
    # a function that insists its arguments share a dtype still checks with argnums
    def f(x, w):
        assert x.dtype == w.dtype, (x.dtype, w.dtype)
        return jnp.tanh(x @ w)

    assert fl.check_grad(f, jnp.ones((2, 3)), jnp.ones((3, 2)) * 0.1, argnums=1, order=2).passed


# ----------------------------------------------------------------------------- issue 13 / 12


def test_function_returning_none_is_an_error():
    with pytest.raises(ValueError, match=r"check_grad\(<lambda>, \*args\): expected func to return at least "
                                         r"one float array, got None"):
        check_grad(lambda t: None, jnp.ones(2))


def test_complex_arguments_are_checked_as_real_pairs():
    z = jnp.array([1.0 + 2.0j, -0.5 + 0.3j])
    report = check_grad(lambda w: jnp.abs(w) ** 2 + jnp.real(w * w), z)
    assert report.passed and len(report.comparisons) == 3
    # and a wrong rule on a complex function is still caught
    @jax.custom_jvp
    def bad(w):
        return w * w

    bad.defjvp(lambda p, t: (p[0] * p[0], 2.002 * p[0] * t[0]))
    with pytest.raises(GradCheckError, match=r"derivatives disagree"):
        check_grad(lambda w: bad(w), z, modes=("fwd",))


@pytest.mark.parametrize("kw, msg", [
    (dict(eps=0), r"eps must be a positive finite float, got 0; the finite-difference step cannot be 0"),
    (dict(eps=float("nan")), r"eps must be a positive finite float, got nan"),
    (dict(rtol=-1), r"rtol must be a non-negative finite float, got -1"),
    (dict(atol=float("inf")), r"atol must be a non-negative finite float, got inf"),
])
def test_bad_tolerances_are_reported_as_such(kw, msg):
    with pytest.raises(ValueError, match=r"check_grad\(sin, \*args\): " + msg):
        check_grad(jnp.sin, jnp.ones(2), **kw)


@pytest.mark.parametrize("f", [jax.nn.relu, jnp.abs], ids=["relu", "abs"])
def test_subgradient_at_a_kink_is_skipped_with_a_note(f):
    report = check_grad(f, jnp.zeros(3))
    assert report.passed
    assert [c.skipped for c in report.comparisons] == [True, True, False]
    assert "x is at a kink" in str(report) and "one subgradient" in report.notes[0]
    # off the kink nothing is skipped
    assert not any(c.skipped for c in check_grad(f, jnp.array([0.5, -0.7, 1.2])).comparisons)


def test_nan_headline_names_the_non_finite_comparison():
    with pytest.raises(GradCheckError, match=r"d1 is not finite at this point: fwd gives nan.*singular here") as e:
        check_grad(jnp.sqrt, jnp.zeros(2))
    assert not e.value.report.passed


def test_custom_vjp_with_default_modes_suggests_rev_only():
    @jax.custom_vjp
    def f(x):
        return jnp.sin(x)

    f.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (jnp.cos(x) * g,))
    with pytest.raises(TypeError, match=r"check_grad\(f, \*args\): forward mode cannot differentiate this "
                                        r"function: it uses a jax.custom_vjp.*modes=\(\"rev\",\)"):
        check_grad(f, jnp.ones(2))
    assert check_grad(f, jnp.ones(2), modes=("rev",)).passed


def test_under_jit_is_a_clear_error():
    with pytest.raises(TypeError, match=r"check_grad\(sin, \*args\): check_grad compares numbers on the host, "
                                        r"so it cannot run under jax.jit"):
        jax.jit(lambda x: check_grad(jnp.sin, x).passed)(jnp.ones(2))


def test_check_grads_tuple_form():
    W, b = jnp.ones((2, 2)), jnp.array([0.5, -1.0])
    f = lambda W, b: jnp.sum(jnp.tanh(W @ b))  # noqa: E731
    with pytest.raises(TypeError, match=r"func takes 2 arguments but got one tuple; check_grad takes func's "
                                        r"arguments one by one: check_grad\(f, W, b\), or as check_grad\(f, args=\(W, b\)\)"):
        check_grad(f, (W, b))
    assert check_grad(f, args=(W, b)).passed
    with pytest.raises(TypeError, match=r"either positionally, check_grad\(f, x, y\), or as args=\(x, y\), not both"):
        check_grad(f, W, args=(W, b))
