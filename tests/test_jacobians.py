"""jacrev / jacfwd / hessian: structures, chunking, layouts, modes, against raw JAX."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_tree_allclose

import functorch_lite as fl


def pytree_fn(p, scale):
    h = jnp.tanh(p["w"] @ p["x"]) * scale
    return {"h": h, "s": jnp.sum(h ** 2), "m": jnp.outer(h, p["x"])}


P = {"w": jnp.arange(12.0).reshape(3, 4) / 10, "x": jnp.array([0.5, -1.0, 2.0, 0.1])}


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 7, 1000])
def test_jacrev_jacfwd_pytrees_match_jax(chunk_size):
    want = jax.jacrev(pytree_fn)(P, 1.5)
    assert_tree_allclose(fl.jacrev(pytree_fn, chunk_size=chunk_size)(P, 1.5), want, rtol=1e-5, atol=1e-6)
    assert_tree_allclose(fl.jacfwd(pytree_fn, chunk_size=chunk_size)(P, 1.5), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_tuple_argnums_and_has_aux(chunk_size):
    f = lambda a, b, c: (jnp.sin(a) * b[:, None] + c, {"n": jnp.sum(b)})
    a, b, c = jnp.ones((3, 2)), jnp.arange(3.0), jnp.array(0.5)
    want = jax.jacrev(f, argnums=(0, 2), has_aux=True)(a, b, c)
    for t in (fl.jacrev, fl.jacfwd):
        jac, aux = t(f, argnums=(0, 2), has_aux=True, chunk_size=chunk_size)(a, b, c)
        assert float(aux["n"]) == 3.0 and isinstance(jac, tuple) and len(jac) == 2
        assert jac[0].shape == (3, 2, 3, 2) and jac[1].shape == (3, 2)
        assert_tree_allclose(jac, want[0], rtol=1e-6)


@pytest.mark.parametrize("chunk_size", [None, 5])
@pytest.mark.parametrize("transform", ["jacrev", "jacfwd"])
def test_denominator_layout_transposes_tensors(transform, chunk_size):
    f = lambda x: jnp.einsum("ij,jk->ik", x, x)[:, :, None] * jnp.arange(2.0)[None, None, :]   # (2,3)->(2,3... )
    x = jnp.arange(6.0).reshape(2, 3)[:, :2] + 1          # (2, 2) -> out (2, 2, 2)
    T = getattr(fl, transform)
    num = T(f, chunk_size=chunk_size)(x)
    den = T(f, layout="denominator", chunk_size=chunk_size)(x)
    assert num.shape == (2, 2, 2, 2, 2) and den.shape == (2, 2, 2, 2, 2)
    np.testing.assert_allclose(den, jnp.transpose(num, (3, 4, 0, 1, 2)))
    g = lambda x: jnp.stack([x.sum(), (x ** 2).sum()])           # (4,3) -> (2,)
    x = jnp.ones((4, 3))
    den = T(g, layout="denominator", chunk_size=chunk_size)(x)
    assert den.shape == (4, 3, 2)
    np.testing.assert_allclose(den[..., 1], 2 * x)


@pytest.mark.parametrize("mode", ["auto", "fwd-over-rev", "rev-over-rev", "rev-over-fwd", "fwd-over-fwd"])
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_hessian_modes_agree(mode, chunk_size, x64):
    f = lambda x, y: jnp.sum(jnp.sin(x) ** 2) * jnp.sum(y) + jnp.prod(x) * jnp.sum(y ** 3)
    x, y = jnp.array([0.3, -0.7, 1.1]), jnp.array([2.0, 0.5])
    want = jax.hessian(f, argnums=(0, 1))(x, y)
    got = fl.hessian(f, argnums=(0, 1), mode=mode, chunk_size=chunk_size)(x, y)
    assert isinstance(got, tuple) and all(isinstance(r, tuple) and len(r) == 2 for r in got)
    assert got[0][1].shape == (3, 2) and got[1][0].shape == (2, 3)
    assert_tree_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fl.hessian(f, mode=mode, chunk_size=chunk_size)(x, y), want[0][0], rtol=1e-12)


def test_chunked_jacrev_bounds_planned_memory():
    # a wide hidden layer: backward intermediates dominate; temp memory ~ chunk_size
    k1, k2 = jax.random.split(jax.random.key(0))
    W1 = jax.random.normal(k1, (4096, 256)) / 32
    W2 = jax.random.normal(k2, (256, 4096)) / 32
    f = lambda x: W2 @ jnp.tanh(W1 @ x)
    x = jnp.ones(256)
    temp = lambda c: jax.jit(fl.jacrev(f, chunk_size=c)).lower(x).compile().memory_analysis().temp_size_in_bytes
    full, c8, c32, c64 = temp(None), temp(8), temp(32), temp(64)
    assert c8 < c32 < c64 < full
    assert c32 < 0.2 * full       # 256 output rows, 32 at a time: ~1/8 of the backward temps
    assert_tree_allclose(jax.jit(fl.jacrev(f, chunk_size=8))(x), jax.jacrev(f)(x), rtol=1e-5, atol=1e-6)


def test_chunked_jacobian_never_builds_identity():
    # the lowered program of a chunked jacrev loops (while) over chunks
    f = lambda x: jnp.sin(x) * 2
    text = jax.jit(fl.jacrev(f, chunk_size=4)).lower(jnp.ones(64)).as_text()
    assert "stablehlo.while" in text
    main = text[text.index("func.func public @main"):]
    body = main.split("\n", 1)[1]                    # skip the signature (the result is 64x64)
    before_loop = body.split("stablehlo.while")[0]
    assert "64x64" not in before_loop                 # no identity basis is built up front
    assert "tensor<4x64x" in text                     # the loop body works on 4 rows at a time


def test_jacobians_compile_to_the_same_program_as_jax():
    f = lambda x: jnp.tanh(jnp.outer(x, x)).sum(0)
    x = jnp.linspace(0, 1, 16)
    for ours, theirs in [(fl.jacrev(f), jax.jacrev(f)), (fl.jacfwd(f), jax.jacfwd(f)),
                         (fl.hessian(lambda x: f(x).sum()), jax.hessian(lambda x: f(x).sum()))]:
        a = jax.jit(ours).lower(x).compile().cost_analysis()
        b = jax.jit(theirs).lower(x).compile().cost_analysis()
        assert a["flops"] == b["flops"]


def _planned_temp(fn, *args):
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_chunked_hessian_and_vmap_bound_planned_memory():
    W = jax.random.normal(jax.random.key(1), (2048, 128)) / 32
    f = lambda x: jnp.sum(jnp.tanh(W @ x) ** 2)
    x = jnp.ones(128)
    full, c8, c32 = (_planned_temp(fl.hessian(f, chunk_size=c), x) for c in (None, 8, 32))
    assert c8 < c32 < 0.5 * full
    assert_tree_allclose(jax.jit(fl.hessian(f, chunk_size=8))(x), jax.hessian(f)(x), rtol=1e-4, atol=1e-6)
    g = lambda x: W.T @ jnp.tanh(W @ x)
    xs = jnp.ones((256, 128))
    full, c8, c32 = (_planned_temp(fl.vmap(g, chunk_size=c), xs) for c in (None, 8, 32))
    assert c8 < c32 < 0.25 * full
