"""functorch_lite._chunking (vmap(chunk_size=c)): both loop forms equal unchunked vmap,
remainders, pytrees, out_dims, and out_dims=None checked in every chunk."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functorch_lite as fl
from functorch_lite import _chunking

from conftest import assert_tree_allclose


def f(tree, w):
    return {"a": jnp.tanh(tree["x"] @ w), "b": tree["y"] * 2.0}, jnp.sum(w)


@pytest.mark.parametrize("form", ["unrolled", "map"])
@pytest.mark.parametrize("n,chunk", [(12, 4), (13, 4), (5, 7), (9, 1)])
def test_both_forms_equal_unchunked_vmap(form, n, chunk):
    k = jax.random.split(jax.random.key(0), 3)
    tree = {"x": jax.random.normal(k[0], (n, 3)), "y": jax.random.normal(k[1], (2, n))}
    w = jax.random.normal(k[2], (3, 4))
    args = (tree, w)
    dims = [0, 1, None]   # leaves of (tree, w): x, y, w
    out_dims = ({"a": 0, "b": 1}, None)
    want = jax.vmap(f, in_axes=({"x": 0, "y": 1}, None), out_axes=out_dims)(*args)
    got = _chunking.chunked_vmap(f, args, dims, out_dims, chunk, "test", form=form)
    assert_tree_allclose(got, want, rtol=1e-6)
    jitted = jax.jit(lambda t, w: _chunking.chunked_vmap(f, (t, w), dims, out_dims, chunk, "t", form=form))
    assert_tree_allclose(jitted(tree, w), want, rtol=1e-6)


def test_loop_form_threshold():
    assert _chunking.loop_form(1) == _chunking.loop_form(_chunking.UNROLL_MAX_CHUNKS) == "unrolled"
    assert _chunking.loop_form(_chunking.UNROLL_MAX_CHUNKS + 1) == "map"
    with pytest.raises(ValueError, match="unknown loop form"):
        _chunking.chunked_vmap(jnp.sin, (jnp.ones(4),), [0], 0, 2, "t", form="scan")


@pytest.mark.parametrize("chunk", [2, 1])   # 3 and 6 chunks: the unrolled form
def test_vmap_chunk_size_uses_it_and_matches(chunk):
    x = jnp.arange(12.0).reshape(6, 2)
    g = fl.vmap(fl.grad(lambda v: jnp.sum(jnp.sin(v) ** 2)), chunk_size=chunk)(x)
    assert_tree_allclose(g, jax.vmap(jax.grad(lambda v: jnp.sum(jnp.sin(v) ** 2)))(x), rtol=1e-6)
    many = jnp.arange(40.0)
    assert_tree_allclose(fl.vmap(jnp.cos, chunk_size=3)(many), jnp.cos(many), rtol=1e-6)  # 14 chunks: map


def test_out_dims_none_is_checked_in_every_chunk():
    x = jnp.arange(6.0)
    # a batched output declared unbatched raises as plain vmap does (not one chunk's value)
    with pytest.raises(ValueError, match="out_dims=None for an output that depends"):
        fl.vmap(lambda v: v * 2, out_dims=None, chunk_size=2)(x)
    with pytest.raises(ValueError, match="out_axes"):  # the loop itself: JAX's own check
        _chunking.chunked_vmap(lambda v: v * 2, (jnp.arange(30.0),), [0], None, 2, "t", form="map")
    # an unbatched output with out_dims=None is returned once
    out = fl.vmap(lambda v, c: (v * c, c + 1), in_dims=(0, None), out_dims=(0, None), chunk_size=4)(x, 3.0)
    assert_tree_allclose(out, (x * 3.0, jnp.asarray(4.0)))


def load_example(name):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # long: CI's slow step runs it
def test_per_sample_cnn_chunked_equals_unchunked():
    ex = load_example("per_sample_cnn")

    params = ex.init(jax.random.key(0))
    xs, ys = ex.data(jax.random.key(1), 6)
    full = jax.jit(ex.per_sample_grads)(params, xs, ys)
    chunked = jax.jit(lambda p, x, y: ex.per_sample_grads(p, x, y, chunk_size=4))(params, xs, ys)
    assert_tree_allclose(chunked, full, rtol=1e-5, atol=1e-7)
    loop = [jax.grad(ex.loss)(params, xs[i], ys[i]) for i in range(len(xs))]
    want = jax.tree_util.tree_map(lambda *g: jnp.stack(g), *loop)
    assert_tree_allclose(full, want, rtol=1e-4, atol=1e-6)
    raw = jax.jit(jax.vmap(jax.grad(lambda p, x, y: ex.loss(p, x, y, forward=ex.lax_model)),
                           in_axes=(None, 0, 0)))(params, xs, ys)
    assert_tree_allclose(full, raw, rtol=1e-4, atol=1e-6)
    assert np.isfinite(np.asarray(full["fc1"]["w"])).all()
