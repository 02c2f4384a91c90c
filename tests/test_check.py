"""check_grad accepts correct derivatives and rejects wrong ones."""

import jax
import jax.numpy as jnp
import pytest

import functorch_lite as fl


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
