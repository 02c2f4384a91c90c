"""Every fl.nn layer under raw JAX transforms and Equinox (no context manager), the seed's
reverse rules against what reverse mode now runs (residuals and cotangents), residual
budgets under jax.vjp and fl.vjp, and nn.mlp's bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functorch_lite as fl
from functorch_lite import nn

from conftest import assert_tree_allclose
from test_nn import cases, rand, ref_layer_norm, ref_rms_norm, residual_bytes, scalar


def _fused(x, w, b, s, o):
    return nn.linear_norm_act(x, w, b, s, o, activation=jnp.tanh)


def _fused_ref(x, w, b, s, o):
    return jnp.tanh(ref_layer_norm(x @ w + b[None], s, o))


def _mlp_case(dtype):
    block = nn.mlp([4, 6, 3], norm="rms", activation=jnp.tanh, dtype=dtype)
    params = block.init(jax.random.key(0))

    def plain(x, params=params):
        h = jnp.tanh(ref_rms_norm(x @ params[0]["w"] + params[0]["b"][None], params[0]["scale"]))
        return h @ params[1]["w"] + params[1]["b"][None]

    return (lambda x: block.apply(params, x)), plain


def layer_cases(dtype=jnp.float64):
    """name -> (ours, reference), both functions of x alone (other args closed over)."""
    out = {}
    for name, (ours, ref, args) in cases(dtype).items():
        rest = args[1:]
        out[name] = ((lambda x, o=ours, r=rest: o(x, *r)), (lambda x, f=ref, r=rest: f(x, *r)),
                     args[0])
    x = rand(50, (3, 4), dtype)
    w, b, s, o = rand(51, (4, 5), dtype), rand(52, (5,), dtype), 1 + rand(53, (5,), dtype), rand(54, (5,), dtype)
    out["fused"] = (lambda x: _fused(x, w, b, s, o), lambda x: _fused_ref(x, w, b, s, o), x)
    m, mref = _mlp_case(dtype)
    out["mlp"] = (m, mref, rand(55, (2, 4), dtype))
    return out


NAMES = ["linear", "layer_norm", "mlp"] + [
    pytest.param(n, marks=pytest.mark.slow) for n in ("linear_1d_nobias", "rms_norm", "l2_norm", "fused")]


@pytest.mark.parametrize("name", NAMES)
def test_every_raw_jax_transform(x64, name):
    ours, ref, x = layer_cases()[name]
    s, t = scalar(ours), scalar(ref)
    u = rand(60, x.shape, x.dtype)
    xs = jnp.stack([x, 0.5 * x])

    def all_of(f, g):
        out, lin = jax.linearize(f, x)
        return (jax.grad(g)(x), jax.vjp(f, x)[1](f(x))[0], jax.jvp(f, (x,), (u,))[1], out, lin(u),
                jax.jacfwd(f)(x), jax.jacrev(f)(x), jax.hessian(g)(x), jax.vmap(f)(xs),
                jax.vmap(jax.grad(g))(xs), jax.jacfwd(jax.jacrev(g))(x), jax.jacrev(jax.jacrev(g))(x),
                jax.jacfwd(jax.jacfwd(g))(x))

    got = jax.jit(lambda x: all_of(ours, s))(x)
    want = jax.jit(lambda x: all_of(ref, t))(x)
    assert_tree_allclose(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["conv", pytest.param("layer_norm", marks=pytest.mark.slow),
                                  pytest.param("max_pool", marks=pytest.mark.slow)])
def test_equinox_filter_transforms(name):
    eqx = pytest.importorskip("equinox")
    if name == "conv":
        w = rand(1, (3, 2, 2, 2))
        f = lambda x: nn.conv(x, w, padding=1)
        x = rand(0, (2, 2, 4, 4))
    elif name == "max_pool":
        f = lambda x: nn.max_pool(x, 2)
        x = rand(0, (1, 2, 4, 4))
    else:
        scale, offset = 1 + rand(1, (4,)), rand(2, (4,))
        f = lambda x: nn.layer_norm(x, scale, offset)
        x = rand(0, (3, 4))
    s = scalar(f)
    g = eqx.filter_grad(s)(x)
    assert_tree_allclose(g, jax.grad(s)(x), rtol=1e-6)
    u = rand(3, x.shape)
    _, t = eqx.filter_jvp(f, (x,), (u,))
    want = jax.jvp(f, (x,), (u,))[1]
    assert_tree_allclose(t, want, rtol=1e-6, atol=1e-6)
    # against the derivative of s along u, computed from the gradient
    assert np.allclose(jnp.vdot(g, u), jax.jvp(s, (x,), (u,))[1], rtol=1e-5, atol=1e-5)


SEEDED = {
    "linear": lambda d: (nn.linear, (rand(0, (5, 3), d), rand(1, (3, 4), d), rand(2, (4,), d))),
    "layer_norm": lambda d: (lambda x, s, o: nn.layer_norm(x, s, o),
                             (rand(0, (5, 6), d), 1 + rand(1, (6,), d), rand(2, (6,), d))),
    "rms_norm": lambda d: (nn.rms_norm, (rand(0, (5, 6), d), 1 + rand(1, (6,), d))),
    "l2_norm": lambda d: (lambda x: nn.l2_norm(x, axis=-1), (rand(0, (5, 6), d),)),
    "fused": lambda d: (_fused, (rand(0, (5, 3), d), rand(1, (3, 6), d), rand(2, (6,), d),
                                 1 + rand(3, (6,), d), rand(4, (6,), d))),
}


def _seed_rule(name):
    """The seed's hand-written custom_vjp of the same layer (``.seed`` of the rule)."""
    from functorch_lite.nn import _fused as fused_mod, _linear, _norms
    if name == "linear":
        return _linear._make(True).seed
    if name == "layer_norm":
        return _norms._make_norm("layer", (1,), 1e-5, True, True).seed
    if name == "rms_norm":
        return _norms._make_norm("rms", (1,), 1e-6, True, False).seed
    if name == "l2_norm":
        return _norms._make_l2((1,), False, 0.0).seed
    return fused_mod._make("layer", jnp.tanh, 1e-5, True).seed


@pytest.mark.parametrize("name", list(SEEDED))
def test_reverse_mode_equals_the_seed_rule(x64, name):
    """What jax.vjp now runs (the transpose of the checkpointed tangent rule) stores the
    same residuals as the seed's custom_vjp and gives the same cotangents."""
    f, args = SEEDED[name](jnp.float64)
    seed = _seed_rule(name)
    y, pull = jax.vjp(f, *args)
    y_seed, pull_seed = jax.vjp(seed, *args)
    assert_tree_allclose(y, y_seed, rtol=1e-12, atol=1e-12)
    g = rand(9, y.shape, y.dtype)
    assert_tree_allclose(pull(g), pull_seed(g), rtol=1e-10, atol=1e-12)
    shapes = lambda p: sorted((tuple(l.shape), str(l.dtype)) for l in  # noqa: E731
                              {id(l): l for l in jax.tree_util.tree_leaves(p)}.values())
    assert shapes(pull) == shapes(pull_seed)


def fl_residual_bytes(f, *args) -> int:
    return residual_bytes(f, *args, vjp=fl.vjp)


@pytest.mark.parametrize("measure", [residual_bytes, fl_residual_bytes])
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_norm_residuals_under_jax_and_fl_vjp(kind, measure):
    x = rand(0, (64, 128))
    scale, offset = 1 + rand(1, (128,)), rand(2, (128,))
    if kind == "layer":
        ours = measure(lambda x, s, o: nn.layer_norm(x, s, o), x, scale, offset)
        plain = measure(ref_layer_norm, x, scale, offset)
    else:
        ours = measure(nn.rms_norm, x, scale)
        plain = measure(ref_rms_norm, x, scale)
    assert ours <= 0.55 * plain, (ours, plain)
    # one input-sized array plus per-row statistics and the scale
    assert ours <= x.size * 4 + 2 * 64 * 4 + 128 * 4


def test_layers_do_not_read_the_old_forward_switch():
    """No custom_vjp in any layer's trace, inside or outside forward_mode()."""
    x = rand(0, (3, 4))
    for ours, _, x in layer_cases(jnp.float32).values():
        for ctx in (nn.forward_mode, lambda: __import__("contextlib").nullcontext()):
            with ctx():
                assert "custom_vjp" not in str(jax.make_jaxpr(jax.grad(scalar(ours)))(x))


def test_mlp_bad_input_messages():
    with pytest.raises(TypeError, match=r"nn.mlp\(sizes\).*dtype.*int32.*floating"):
        nn.mlp([2, 3], dtype=jnp.int32)
    block = nn.mlp([2, 3, 1])
    with pytest.raises(TypeError, match=r"nn.mlp\(sizes=\[2, 3, 1\]\).init\(key\).*jax.random.key"):
        block.init("key")
    # the same key check as dropout, hessian_diag, the stochastic operators and fit
    with pytest.raises(ValueError, match=r"nn.mlp\(sizes=\[2, 3, 1\]\).init\(key\): key must be one PRNG key, "
                                         r"got an array of 3 keys \(jax.random.split returns several\)"):
        block.init(jax.random.split(jax.random.key(0), 3))
    with pytest.raises(TypeError, match=r"nn.dense\(2, 3\).init\(key\): key is required"):
        nn.dense(2, 3).init(None)
    assert nn.dense(2, 3).init(jax.random.PRNGKey(0))["w"].shape == (2, 3)   # a raw key works
    other = nn.mlp([2, 5, 1]).init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"apply\(params, x\).*params\[0\]\['w'\] has shape \(2, 5\).*"
                                         r"expected \(2, 3\)"):
        block.apply(other, jnp.ones((1, 2)))
    normed = nn.mlp([2, 3, 1], norm="layer").init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"params\[0\].*keys \['b', 'offset', 'scale', 'w'\].*"
                                         r"expected \['b', 'w'\]"):
        block.apply(normed, jnp.ones((1, 2)))
    with pytest.raises(ValueError, match=r"x has shape \(1, 4\).*last axis.*2"):
        block.apply(block.init(jax.random.key(0)), jnp.ones((1, 4)))
