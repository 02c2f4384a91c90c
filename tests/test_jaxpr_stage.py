"""``_jaxpr.stage``: the program ``jax.make_jaxpr`` returns, staged through ``jax.jit(f).trace``
where that gives the same program, and through ``make_jaxpr`` where it does not (tracers
closed over from an enclosing transform)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functorch_lite as fl
from functorch_lite._jaxpr import stage

W = jnp.arange(12.0).reshape(3, 4) / 7.0


def _same_program(a, b) -> None:
    assert str(a.jaxpr) == str(b.jaxpr)
    assert len(a.consts) == len(b.consts)
    for c, d in zip(a.consts, b.consts):
        assert c is d or (not isinstance(c, jax.core.Tracer) and np.array_equal(c, d))


@pytest.mark.parametrize("func, args", [
    (lambda x: jnp.tanh(W @ x), (jnp.ones(4),)),                       # a closed-over constant
    (lambda x, y: {"s": jnp.sin(x) * y}, (jnp.ones(3), 2.0)),  # a Python scalar, a dict out
    (lambda t: t["a"] @ t["b"], ({"a": jnp.ones((2, 3)), "b": jnp.ones(3)},)),  # pytree in
    (jax.jit(lambda x: jnp.cos(x) + 1.0), (jnp.ones(5),)),              # a jitted function
    (lambda x: x, (jax.ShapeDtypeStruct((2,), jnp.float32),)),           # avals only
])
def test_stage_is_make_jaxpr_when_nothing_is_traced_around(func, args):
    _same_program(stage(func, *args), jax.make_jaxpr(func)(*args))


def test_closed_over_tracers_stay_constants_as_in_make_jaxpr():
    seen = {}

    @jax.jit
    def outer(scale):
        f = lambda x: jnp.sin(x) * scale   # closes over a tracer, called on a constant
        x = np.ones(3, np.float32)          # concrete (jnp.ones would be traced here)
        seen["stage"], seen["ref"] = stage(f, x), jax.make_jaxpr(f)(x)
        return scale

    outer(2.0)
    closed, ref = seen["stage"], seen["ref"]
    assert len(closed.jaxpr.invars) == 1                   # x only: the tracer is a constant
    assert any(isinstance(c, jax.core.Tracer) for c in closed.consts)
    _same_program(closed, ref)


def test_tracer_arguments_go_to_make_jaxpr_without_a_jit_attempt(monkeypatch):
    seen, jitted = {}, []
    real_jit = jax.jit
    monkeypatch.setattr(jax, "jit", lambda *a, **k: jitted.append(1) or real_jit(*a, **k))

    def per_sample(x):
        f = lambda v: jnp.tanh(W @ v) * x[0]
        seen["stage"], seen["ref"] = stage(f, x), jax.make_jaxpr(f)(x)
        return x

    jax.vmap(per_sample)(jnp.ones((2, 4)))
    _same_program(seen["stage"], seen["ref"])
    assert not jitted            # an enclosing trace is running: no trace thrown away
    stage(lambda v: v * 2.0, np.ones(2, np.float32))
    assert jitted == [1]         # concrete arguments: staged by jit(f).trace


def test_an_unhashable_callable_is_staged_too():
    class Scale:
        __hash__ = None          # as a dataclass with eq=True and no frozen

        def __call__(self, x):
            return 3.0 * x

    closed = stage(Scale(), jnp.ones(2))
    assert [e.primitive.name for e in closed.jaxpr.eqns] == ["mul"]


def test_planner_under_jit_with_a_closed_over_tracer_matches_jacrev():
    A = jax.random.normal(jax.random.PRNGKey(0), (6, 5))

    x = np.linspace(-1.0, 1.0, 5, dtype=np.float32)

    @jax.jit
    def step(s):    # the point is concrete, the scale a tracer the function closes over
        return fl.jacobian(lambda v: jnp.tanh(s * (A @ v)))(x)

    want = jax.jacrev(lambda v: jnp.tanh(1.5 * (A @ v)))(x)
    np.testing.assert_allclose(step(1.5), want, rtol=1e-5, atol=1e-6)
