"""torch.func semantics of the core transforms, checked against raw JAX and closed forms."""

import dataclasses
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_tree_allclose

import functorch_lite as fl


def f2(x, y):
    return jnp.sum(jnp.sin(x) * y ** 2)


X = jnp.array([0.3, -1.2, 2.0])
Y = jnp.array([1.5, 0.5, -0.7])


# ----------------------------------------------------------------------------- grad


def test_grad_argnums_int_tuple_negative():
    gx = jnp.cos(X) * Y ** 2
    gy = 2 * jnp.sin(X) * Y
    assert_tree_allclose(fl.grad(f2)(X, Y), gx)
    assert_tree_allclose(fl.grad(f2, argnums=1)(X, Y), gy)
    assert_tree_allclose(fl.grad(f2, argnums=-1)(X, Y), gy)
    g = fl.grad(f2, argnums=(0, 1))(X, Y)
    assert isinstance(g, tuple) and len(g) == 2
    assert_tree_allclose(g, (gx, gy))
    assert_tree_allclose(fl.grad(f2, argnums=(1,))(X, Y), (gy,))


def test_grad_has_aux_and_kwargs_not_differentiated():
    def f(x, *, scale, tag):
        assert tag == "hello"
        return jnp.sum(x ** 2) * scale, {"norm": jnp.linalg.norm(x)}

    g, aux = fl.grad(f, has_aux=True)(X, scale=3.0, tag="hello")
    assert_tree_allclose(g, 6 * X)
    np.testing.assert_allclose(aux["norm"], jnp.linalg.norm(X), rtol=1e-6)


def test_grad_and_value_is_torch_order_value_and_grad_is_jax_order():
    g, v = fl.grad_and_value(f2)(X, Y)
    assert_tree_allclose((v, g), jax.value_and_grad(f2)(X, Y))
    v2, g2 = fl.value_and_grad(f2)(X, Y)
    assert_tree_allclose((v2, g2), (v, g))
    g3, (v3, aux) = fl.grad_and_value(lambda x: (f2(x, Y), jnp.int32(7)), has_aux=True)(X)
    assert aux == 7
    assert_tree_allclose((g3, v3), (g, v))
    (v4, aux4), g4 = fl.value_and_grad(lambda x: (f2(x, Y), jnp.int32(7)), has_aux=True)(X)
    assert aux4 == 7 and np.allclose(v4, v)


class Params(NamedTuple):
    w: jax.Array
    b: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DataParams:
    w: jax.Array
    b: jax.Array


class EqxLinear(eqx.Module):
    w: jax.Array
    b: jax.Array


@pytest.mark.parametrize("make", [
    lambda w, b: {"w": w, "b": b},
    lambda w, b: (w, b),
    lambda w, b: Params(w, b),
    lambda w, b: DataParams(w, b),
    lambda w, b: EqxLinear(w, b),
], ids=["dict", "tuple", "namedtuple", "dataclass", "equinox"])
def test_grad_over_pytrees(make):
    w = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    b = jnp.array([0.5, -0.5])
    x = jnp.array([1.0, -1.0])
    get = lambda p: (p["w"], p["b"]) if isinstance(p, dict) else (p[0], p[1]) if isinstance(p, tuple) else (p.w, p.b)

    def loss(p):
        w_, b_ = get(p)
        return jnp.sum((w_ @ x + b_) ** 2)

    p = make(w, b)
    g = fl.grad(loss)(p)
    assert type(g) is type(p)
    assert_tree_allclose(g, jax.grad(loss)(p))
    assert_tree_allclose(fl.jacrev(loss)(p), jax.grad(loss)(p))
    assert_tree_allclose(fl.jacfwd(loss)(p), jax.grad(loss)(p), rtol=1e-5)
    assert_tree_allclose(fl.hessian(loss)(p), jax.hessian(loss)(p), rtol=1e-5)


def test_python_float_inputs():
    assert np.allclose(fl.grad(lambda x: x ** 3)(2.0), 12.0)
    assert np.allclose(fl.jacfwd(lambda x: x ** 3)(2.0), 12.0)
    assert np.allclose(fl.jacrev(lambda x: x ** 3, chunk_size=1)(2.0), 12.0)


def test_non_differentiated_args_may_be_anything():
    def f(x, name, n):
        assert name == "abc" and n == 3
        return jnp.sum(x ** n)

    assert_tree_allclose(fl.grad(f)(X, "abc", 3), 3 * X ** 2, rtol=1e-6)


# ------------------------------------------------------------------------------ vjp


def test_vjp_returns_one_cotangent_per_primal():
    out, vjp_fn = fl.vjp(lambda x, y: x * y, X, Y)
    assert_tree_allclose(out, X * Y)
    ct = vjp_fn(jnp.ones(3))
    assert isinstance(ct, tuple) and len(ct) == 2
    assert_tree_allclose(ct, (Y, X))
    # a pytree output takes a pytree cotangent
    out, vjp_fn = fl.vjp(lambda x: {"a": x ** 2, "b": x.sum()}, X)
    (ct,) = vjp_fn({"a": jnp.ones(3), "b": jnp.array(2.0)})
    assert_tree_allclose(ct, 2 * X + 2.0)


def test_vjp_has_aux_and_crosses_jit():
    out, vjp_fn, aux = fl.vjp(lambda x: (jnp.sin(x), jnp.cos(x)), X, has_aux=True)
    assert_tree_allclose(aux, jnp.cos(X))
    apply = jax.jit(lambda fn, v: fn(v))
    assert_tree_allclose(apply(vjp_fn, jnp.ones(3)), (jnp.cos(X),))


def test_vjp_accepts_python_scalar_cotangent_for_scalar_output():
    _, vjp_fn = fl.vjp(lambda x: jnp.sum(x ** 2), X)
    assert_tree_allclose(vjp_fn(1.0), (2 * X,))


# ------------------------------------------------------------------------- jvp/linearize


def test_jvp_matches_jax_and_closed_form():
    out, t = fl.jvp(f2, (X, Y), (jnp.ones(3), jnp.zeros(3)))
    assert_tree_allclose((out, t), jax.jvp(f2, (X, Y), (jnp.ones(3), jnp.zeros(3))))
    np.testing.assert_allclose(t, jnp.sum(jnp.cos(X) * Y ** 2), rtol=1e-6)
    out, t, aux = fl.jvp(lambda x: (x ** 2, {"k": jnp.int32(1)}), (X,), (jnp.ones(3),), has_aux=True)
    assert aux == {"k": 1}
    assert_tree_allclose(t, 2 * X)


def test_jvp_accepts_lists_and_python_scalars():
    out, t = fl.jvp(lambda x: x ** 3, [2.0], [1.0])
    assert np.allclose(out, 8.0) and np.allclose(t, 12.0)


def test_linearize_reuses_forward_pass():
    out, jvp_fn = fl.linearize(lambda x, y: jnp.sin(x) * y, X, Y)
    assert_tree_allclose(out, jnp.sin(X) * Y)
    assert_tree_allclose(jvp_fn(jnp.ones(3), jnp.zeros(3)), jnp.cos(X) * Y, rtol=1e-6)
    assert_tree_allclose(jvp_fn(jnp.zeros(3), jnp.ones(3)), jnp.sin(X), rtol=1e-6)


# ----------------------------------------------------------------------------- vmap


def test_vmap_in_dims_out_dims_and_kwargs():
    A = jnp.arange(12.0).reshape(3, 4)
    v = jnp.arange(4.0)
    assert_tree_allclose(fl.vmap(jnp.dot, in_dims=(0, None))(A, v), A @ v)
    assert_tree_allclose(fl.vmap(jnp.dot, in_dims=(1, None))(A.T, v), A @ v)
    assert_tree_allclose(fl.vmap(lambda a: a * 2, out_dims=1)(A), (A * 2).T)
    assert_tree_allclose(fl.vmap(lambda a, *, s: a * s)(A, s=jnp.ones(4)), A)
    out = fl.vmap(lambda a: {"s": a.sum(), "m": a.max()})(A)
    assert_tree_allclose(out, {"s": A.sum(1), "m": A.max(1)})
    # pytree in_dims
    out = fl.vmap(lambda p: p["a"] @ p["b"], in_dims=({"a": 0, "b": None},))({"a": A, "b": v})
    assert_tree_allclose(out, A @ v)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 7, 100])
def test_vmap_chunk_size_matches_unchunked(chunk_size):
    A = jnp.arange(35.0).reshape(7, 5)
    f = lambda a, b: {"x": jnp.sin(a) * b, "y": a.sum()}
    want = fl.vmap(f, in_dims=(0, None))(A, jnp.ones(5))
    got = fl.vmap(f, in_dims=(0, None), chunk_size=chunk_size)(A, jnp.ones(5))
    assert_tree_allclose(got, want)
    got_t = fl.vmap(lambda a: a * 2, in_dims=1, out_dims=1, chunk_size=chunk_size)(A.T)
    assert_tree_allclose(got_t, 2 * A.T)


def test_vmap_of_grad_is_per_sample_gradients():
    w = jnp.array([0.5, -1.0])
    xs = jnp.arange(10.0).reshape(5, 2)
    ys = jnp.arange(5.0)
    per = fl.vmap(fl.grad(lambda w, x, y: (x @ w - y) ** 2), in_dims=(None, 0, 0))(w, xs, ys)
    want = 2 * (xs @ w - ys)[:, None] * xs
    assert_tree_allclose(per, want, rtol=1e-6)


# ---------------------------------------------------------------- composition and jit


def test_nesting_and_jit_and_jax_vmap():
    f = lambda x: jnp.sum(jnp.sin(x) ** 2)
    x = jnp.array([0.1, 0.7, -0.4])
    assert_tree_allclose(jax.jit(fl.grad(f))(x), jax.grad(f)(x))
    assert_tree_allclose(fl.grad(lambda x: fl.grad(f)(x).sum())(x), jax.grad(lambda x: jax.grad(f)(x).sum())(x))
    s = lambda x: jnp.sin(x) * x ** 2
    assert_tree_allclose(fl.grad(fl.grad(s))(0.7), jax.grad(jax.grad(s))(0.7))
    assert_tree_allclose(jax.vmap(fl.grad(f))(jnp.stack([x, 2 * x])), jax.vmap(jax.grad(f))(jnp.stack([x, 2 * x])))
    assert_tree_allclose(fl.vmap(fl.grad(f))(jnp.stack([x, 2 * x])), jax.vmap(jax.grad(f))(jnp.stack([x, 2 * x])))
    g = lambda x: jnp.sin(x) * x.sum()
    assert_tree_allclose(fl.jacfwd(fl.jacrev(g))(x), jax.jacfwd(jax.jacrev(g))(x), rtol=1e-5)
    assert_tree_allclose(jax.jit(fl.jacrev(g, chunk_size=2))(x), jax.jacrev(g)(x))
    assert_tree_allclose(jax.jit(fl.hessian(f, chunk_size=2))(x), jax.hessian(f)(x), rtol=1e-5)


def test_float64(x64):
    x = jnp.array([0.1, 0.7, -0.4], dtype=jnp.float64)
    f = lambda x: jnp.sum(jnp.exp(x) * x)
    g = fl.grad(f)(x)
    assert g.dtype == jnp.float64
    np.testing.assert_allclose(g, jnp.exp(x) * (1 + x), rtol=1e-14)
    H = fl.hessian(f)(x)
    assert H.dtype == jnp.float64
    np.testing.assert_allclose(H, jnp.diag(jnp.exp(x) * (2 + x)), rtol=1e-14, atol=1e-300)


def test_returned_functions_have_names_and_docs():
    def loss(x):
        return x.sum()

    for t in (fl.grad, fl.grad_and_value, fl.value_and_grad, fl.jacrev, fl.jacfwd, fl.hessian):
        h = t(loss)
        assert "loss" in h.__name__ and h.__doc__
