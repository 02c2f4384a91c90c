"""Under jax.jit every core transform compiles to the program raw JAX compiles.

Self-contained (public JAX APIs only): the benchmark suite makes the same comparison at
larger sizes, but the tests do not import it."""

import collections
import re

import jax
import jax.numpy as jnp
import pytest

import functorch_lite as fl


def _net(n: int):
    """A tanh layer ``R^n -> R^n`` through ``4n`` hidden units, and a point."""
    k1, k2 = jax.random.split(jax.random.key(0))
    w1 = jax.random.normal(k1, (4 * n, n)) / jnp.sqrt(n)
    w2 = jax.random.normal(k2, (n, 4 * n)) / jnp.sqrt(4 * n)
    return (lambda x: w2 @ jnp.tanh(w1 @ x)), jnp.linspace(-1.0, 1.0, n)


# Each job written once over a namespace T of transforms: functorch_lite's or raw JAX's
# (grad_and_value is JAX's value_and_grad). ``f`` is the layer, ``loss`` a scalar of it.
JOBS = {
    "grad": lambda T, f, loss, u: T.grad(loss),
    "grad_and_value": lambda T, f, loss, u: (T.grad_and_value if T is fl else T.value_and_grad)(loss),
    "vjp + apply": lambda T, f, loss, u: lambda x: T.vjp(f, x)[1](x),
    "jvp": lambda T, f, loss, u: lambda x: T.jvp(f, (x,), (u,)),
    "linearize + apply": lambda T, f, loss, u: lambda x: T.linearize(f, x)[1](u),
    "jacrev": lambda T, f, loss, u: T.jacrev(f),
    "jacfwd": lambda T, f, loss, u: T.jacfwd(f),
    "hessian": lambda T, f, loss, u: T.hessian(loss),
    "vmap(grad)": lambda T, f, loss, u: T.vmap(T.grad(loss)),
}


def _compiled(f, *args):
    return jax.jit(f).lower(*args).compile()


def _flops(c) -> float:
    cost = c.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
        cost = cost[0] if cost else {}
    return float(cost.get("flops", 0.0))


def _hlo_ops(c) -> collections.Counter:
    """The multiset of (shape, opcode) of every instruction of the optimized HLO: two
    programs with equal ``_hlo_ops`` do the same work (names and debug info aside)."""
    return collections.Counter(m.group(1) + " " + m.group(2)
                               for m in re.finditer(r"= (\S+) ([a-z][\w-]*)\(", c.as_text()))


@pytest.mark.parametrize("job", list(JOBS))
def test_same_optimized_program_as_raw_jax(job):
    f, x = _net(16)
    loss = lambda x: jnp.sum(f(x) ** 2)
    ours, theirs = (JOBS[job](T, f, loss, jnp.ones_like(x)) for T in (fl, jax))
    if job == "vmap(grad)":
        x = jnp.stack([x * (1 + 0.1 * i) for i in range(32)])
    c_ours, c_jax = _compiled(ours, x), _compiled(theirs, x)
    assert _flops(c_ours) == _flops(c_jax) > 0
    assert _hlo_ops(c_ours) == _hlo_ops(c_jax)
    assert sum(_hlo_ops(c_ours).values()) > 5          # the comparison saw real programs
