"""Property tests: random shapes, dtypes and pytrees; modes agree with each other and JAX."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_tree_allclose, keys_at_every_depth
from hypothesis import given, settings, strategies as st

import functorch_lite as fl

SETTINGS = settings(max_examples=10, deadline=None, derandomize=True)

shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)
dtypes = st.sampled_from([jnp.float32, jnp.float64])
TOLERANCE = {jnp.float32: dict(rtol=1e-4, atol=1e-4), jnp.float64: dict(rtol=1e-10, atol=1e-10)}


def _array(draw, shape, dtype):
    seed = draw(st.integers(0, 2 ** 16))
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


@st.composite
def pytrees(draw, dtype):
    kind = draw(st.sampled_from(["array", "dict", "tuple", "nested"]))
    if kind == "array":
        return _array(draw, draw(shapes), dtype)
    if kind == "dict":
        return {k: _array(draw, draw(shapes), dtype) for k in ("a", "b")}
    if kind == "tuple":
        return tuple(_array(draw, draw(shapes), dtype) for _ in range(draw(st.integers(1, 3))))
    return {"x": (_array(draw, draw(shapes), dtype), _array(draw, draw(shapes), dtype)), "y": _array(draw, draw(shapes), dtype)}


def smooth(tree):
    """A smooth pytree -> pytree function mixing all leaves."""
    leaves = jax.tree_util.tree_leaves(tree)
    total = sum(jnp.sum(jnp.sin(l)) for l in leaves)
    return {"first": jnp.tanh(leaves[0]) * total, "scalar": total ** 2 + sum(jnp.sum(l ** 2) for l in leaves)}


def scalar(tree):
    return smooth(tree)["scalar"]


@contextlib.contextmanager
def drawn_case(data):
    """A drawn dtype, a pytree of it and the dtype's tolerance, float64 enabled for float64."""
    dtype = data.draw(dtypes)
    with jax.enable_x64(dtype == jnp.float64):
        yield dtype, data.draw(pytrees(dtype)), TOLERANCE[dtype]


@pytest.mark.slow  # long: CI's slow step runs it
@SETTINGS
@given(data=st.data())
def test_jacobians_agree_across_modes_and_chunks(data):
    with drawn_case(data) as (dtype, tree, tol):
        want = jax.jacrev(smooth)(tree)
        chunk = data.draw(st.sampled_from([None, 1, 2, 5]))
        rev = fl.jacrev(smooth, chunk_size=chunk)(tree)
        fwd = fl.jacfwd(smooth, chunk_size=chunk)(tree)
        assert_tree_allclose(rev, want, **tol)
        assert_tree_allclose(fwd, want, **tol)
        for leaf in jax.tree_util.tree_leaves(rev):
            assert leaf.dtype == dtype


@pytest.mark.slow  # 18 s: CI's slow step runs it
@SETTINGS
@given(data=st.data())
def test_grad_equals_jacrev_and_vjp_of_one(data):
    with drawn_case(data) as (dtype, tree, tol):
        g = fl.grad(scalar)(tree)
        assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure(tree)
        assert_tree_allclose(g, jax.grad(scalar)(tree), **tol)
        _, vjp_fn = fl.vjp(scalar, tree)
        assert_tree_allclose(vjp_fn(jnp.ones((), dtype))[0], g, **tol)
        # <J u, 1> by forward mode equals <g, u>
        u = jax.tree_util.tree_map(jnp.ones_like, tree)
        _, t = fl.jvp(scalar, (tree,), (u,))
        dot = sum(jnp.sum(a * b) for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(u)))
        np.testing.assert_allclose(t, dot, **tol)


@SETTINGS
@given(batch=st.integers(1, 9), chunk=st.integers(1, 10), width=st.integers(1, 4), axis=st.integers(0, 1))
def test_vmap_chunked_equals_jax_vmap(batch, chunk, width, axis):
    x = jnp.arange(batch * width, dtype=jnp.float32).reshape((batch, width) if axis == 0 else (width, batch))
    f = lambda r, c: {"s": jnp.sum(jnp.sin(r)) * c, "r": r * c}
    want = jax.vmap(f, in_axes=(axis, None))(x, 2.0)
    assert_tree_allclose(fl.vmap(f, in_dims=(axis, None), chunk_size=chunk)(x, 2.0), want, rtol=1e-6)


@SETTINGS
@given(n=st.integers(1, 5), mode=st.sampled_from(["fwd-over-rev", "rev-over-rev", "rev-over-fwd", "fwd-over-fwd"]),
       chunk=st.sampled_from([None, 1, 3]))
@pytest.mark.slow  # long: CI's slow step runs it
def test_hessian_is_symmetric_and_matches_jax(n, mode, chunk):
    with jax.enable_x64(True):
        x = jnp.linspace(-1.0, 1.0, n, dtype=jnp.float64) + 0.3
        f = lambda x: jnp.sum(jnp.exp(x) * jnp.sin(x[::-1])) + jnp.prod(x) ** 2
        H = fl.hessian(f, mode=mode, chunk_size=chunk)(x)
        np.testing.assert_allclose(H, H.T, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(H, jax.hessian(f)(x), rtol=1e-12, atol=1e-12)


@st.composite
def ordered_dicts(draw, depth=2):
    """Nested dicts whose insertion order is a random permutation of their keys."""
    keys = draw(st.permutations(["q", "b", "z", "a"]))[: draw(st.integers(1, 4))]
    out = {}
    for k in keys:
        if depth and draw(st.booleans()):
            out[k] = draw(ordered_dicts(depth=depth - 1))
        else:
            out[k] = _array(draw, draw(shapes), jnp.float32)
    return out


_key_orders = keys_at_every_depth


@pytest.mark.slow  # long: CI's slow step runs it
@settings(max_examples=5, deadline=None, derandomize=True)
@given(ordered_dicts())
def test_dict_order_kept_by_every_transform(p):
    """Results that mirror a dict keep its insertion order at every depth (JAX sorts)."""
    f = lambda p: sum(jnp.sum(jnp.sin(l) * (i + 1)) for i, l in enumerate(jax.tree_util.tree_leaves(p)))
    order = _key_orders(p)
    g = fl.grad(f)(p)
    assert _key_orders(g) == order
    assert_tree_allclose(g, jax.grad(f)(p), rtol=1e-5, atol=1e-6)
    assert _key_orders(fl.vjp(lambda p: p, p)[1](p)) == order
    assert _key_orders(fl.jvp(lambda p: p, (p,), (p,))[1]) == order
    assert _key_orders(fl.vmap(lambda x: p, out_dims=None)(jnp.ones(2))) == order
    J = fl.jacrev(lambda p: {"s": f(p), "c": f(p) * 2})(p)
    assert _key_orders(J) == [["s", "c"]] + order + order
