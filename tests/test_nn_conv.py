"""fl.nn.conv, max_pool, avg_pool, dropout: values and gradients against lax and torch
(float32, float64), check_grad to order 2 (also at 0), raw JAX transforms, per-sample
gradients against a Python loop, and bad input."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import functorch_lite as fl
from functorch_lite import nn

from conftest import assert_tree_allclose
from test_nn import rand, scalar

CONV = {   # name -> (x shape NC..., w shape OI..., kwargs)
    "1d": ((2, 3, 9), (4, 3, 3), dict(stride=2, padding=1)),
    "2d": ((2, 4, 7, 6), (6, 2, 3, 2), dict(stride=(2, 1), padding=((1, 0), (1, 2)), dilation=(1, 2), groups=2)),
    "2d_same": ((2, 3, 6, 5), (4, 3, 2, 3), dict(padding="same")),
    "3d": ((1, 2, 5, 4, 4), (3, 2, 2, 2, 3), dict(padding="valid", stride=(1, 2, 1))),
    # unpadded: on CPU run padded by the stride at the end and the extra column dropped
    "2d_valid": ((2, 3, 8, 9), (4, 3, 3, 2), dict(stride=(1, 2), dilation=(2, 1))),
}


def lax_conv(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1):
    """The same convolution with lax directly (channels-first, OI... weights)."""
    n = w.ndim - 2
    st = (stride,) * n if isinstance(stride, int) else stride
    dl = (dilation,) * n if isinstance(dilation, int) else dilation
    if isinstance(padding, str):
        pads = padding.upper()
    elif isinstance(padding, int):
        pads = [(padding, padding)] * n
    else:
        pads = [p if isinstance(p, tuple) else (p, p) for p in padding]
    sp = "DHW"[-n:] if n > 1 else "W"
    y = lax.conv_general_dilated(x, w, st, pads, rhs_dilation=dl, feature_group_count=groups,
                                 dimension_numbers=("NC" + sp, "OI" + sp, "NC" + sp),
                                 precision=lax.Precision.HIGHEST)
    return y if b is None else y + b.reshape((1, -1) + (1,) * n)


def conv_args(name, dtype):
    xs, ws, kw = CONV[name]
    return rand(0, xs, dtype), rand(1, ws, dtype), rand(2, (ws[0],), dtype), kw


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["1d", "2d", "2d_valid", pytest.param("2d_same", marks=pytest.mark.slow),
                                  pytest.param("3d", marks=pytest.mark.slow)])
def test_conv_matches_lax_and_torch(dtype, name):
    torch = pytest.importorskip("torch")
    with jax.enable_x64(dtype == "float64"):
        x, w, b, kw = conv_args(name, jnp.dtype(dtype))
        tol = 1e-12 if dtype == "float64" else 2e-5
        f = lambda x, w, b: nn.conv(x, w, b, **kw)
        g = lambda x, w, b: lax_conv(x, w, b, **kw)
        assert_tree_allclose(f(x, w, b), g(x, w, b), rtol=tol, atol=tol)
        s, t = scalar(f), scalar(g)
        grads = jax.grad(s, (0, 1, 2))(x, w, b)
        assert_tree_allclose(grads, jax.grad(t, (0, 1, 2))(x, w, b), rtol=tol * 10, atol=tol * 10)
        # torch.nn.functional
        F = torch.nn.functional
        tconv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[x.ndim]
        tkw = dict(kw)
        if isinstance(tkw.get("padding"), tuple) and isinstance(tkw["padding"][0], tuple):
            pads = [v for lo_hi in reversed(tkw.pop("padding")) for v in lo_hi]
            tx_in = lambda a: F.pad(a, pads)  # noqa: E731
        else:
            tx_in = lambda a: a  # noqa: E731
        tx, tw, tb = (torch.tensor(np.asarray(a), requires_grad=True) for a in (x, w, b))
        with warnings.catch_warnings():   # torch: "same" with an even kernel pads a copy
            warnings.simplefilter("ignore", UserWarning)
            ty = tconv(tx_in(tx), tw, tb, **tkw)
        np.testing.assert_allclose(np.asarray(f(x, w, b)), ty.detach().numpy(), rtol=tol * 10, atol=tol * 10)
        weights = np.cos(np.arange(ty.numel())).reshape(ty.shape)
        (ty * torch.tensor(weights, dtype=ty.dtype)).sum().backward()
        for ours, tt in zip(grads, (tx, tw, tb)):
            np.testing.assert_allclose(np.asarray(ours), tt.grad.numpy(), rtol=tol * 50, atol=tol * 50)


def test_conv_channels_last_and_weight_layouts():
    x, w, b, kw = conv_args("2d", jnp.float32)
    want = nn.conv(x, w, b, **kw)
    xl, wl = jnp.moveaxis(x, 1, -1), jnp.transpose(w, (2, 3, 1, 0))      # NHWC, HWIO
    got = nn.conv(xl, wl, b, layout="NHWC", **kw)
    assert_tree_allclose(jnp.moveaxis(got, -1, 1), want, rtol=1e-5, atol=1e-5)
    got = nn.conv(xl, w, b, layout="channels_last", weight_layout="OIHW", **kw)
    assert_tree_allclose(jnp.moveaxis(got, -1, 1), want, rtol=1e-5, atol=1e-5)
    gl = jax.grad(lambda w: jnp.sum(jnp.sin(nn.conv(xl, w, b, layout="NHWC", **kw))))(wl)
    g = jax.grad(lambda w: jnp.sum(jnp.sin(nn.conv(x, w, b, **kw))))(w)
    assert_tree_allclose(jnp.transpose(gl, (3, 2, 0, 1)), g, rtol=1e-4, atol=1e-5)
    # one sample without the batch axis, as torch accepts
    assert_tree_allclose(nn.conv(x[0], w, b, **kw), want[0], rtol=1e-6)


@pytest.mark.parametrize("name", ["1d", "2d"] + [pytest.param(n, marks=pytest.mark.slow) for n in ("2d_same", "3d")])
def test_conv_check_grad_order_2_and_at_zero(x64, name):
    x, w, b, kw = conv_args(name, jnp.float64)
    f = jax.jit(lambda x, w, b: jnp.tanh(nn.conv(x, w, b, **kw)))
    assert fl.check_grad(f, x, w, b, order=2).passed
    assert fl.check_grad(f, jnp.zeros_like(x), jnp.zeros_like(w), jnp.zeros_like(b), order=2).passed


@pytest.mark.parametrize("name", ["2d", pytest.param("1d", marks=pytest.mark.slow)])
def test_conv_every_raw_jax_transform(x64, name):
    x, w, b, kw = conv_args(name, jnp.float64)
    ours = lambda w: nn.conv(x, w, b, **kw)
    ref = lambda w: lax_conv(x, w, b, **kw)
    u = rand(7, w.shape, w.dtype)
    ws = jnp.stack([w, -w])

    def all_of(f):
        s = scalar(lambda w: jnp.tanh(f(w)))
        out, lin = jax.linearize(f, w)
        return (jax.grad(s)(w), jax.vjp(f, w)[1](f(w))[0], jax.jvp(f, (w,), (u,))[1], lin(u), out,
                jax.jacfwd(f)(w), jax.jacrev(f)(w), jax.hessian(s)(w), jax.vmap(f)(ws),
                jax.vmap(jax.grad(s))(ws))

    assert_tree_allclose(jax.jit(lambda w: all_of(ours))(w), jax.jit(lambda w: all_of(ref))(w),
                         rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["2d", "2d_valid"])
def test_conv_per_sample_grads_match_a_loop_and_use_patch_products(name):
    x, w, b, kw = conv_args(name, jnp.float32)
    loss = lambda w, b, x: jnp.sum(jnp.tanh(nn.conv(x, w, b, **kw)) ** 2)
    per = jax.jit(fl.vmap(fl.grad(loss, argnums=(0, 1)), in_dims=(None, None, 0)))(w, b, x)
    loop = [jax.grad(loss, argnums=(0, 1))(w, b, x[i]) for i in range(x.shape[0])]
    want = tuple(jnp.stack([g[k] for g in loop]) for k in range(2))
    assert_tree_allclose(per, want, rtol=1e-5, atol=1e-6)
    # the weight gradient is a dot_general, not a convolution with a batched kernel
    jaxpr = str(jax.make_jaxpr(jax.vmap(jax.grad(loss), in_axes=(None, None, 0)))(w, b, x))
    ref = str(jax.make_jaxpr(jax.vmap(jax.grad(lambda w, b, x: jnp.sum(
        jnp.tanh(lax_conv(x[None], w, b, **kw)) ** 2)), in_axes=(None, None, 0)))(w, b, x))
    assert jaxpr.count("conv_general_dilated") < ref.count("conv_general_dilated")
    assert "dot_general" in jaxpr


def test_unpadded_conv_runs_padded_by_the_stride_on_cpu_with_the_extra_column_dropped():
    x, w, b, kw = conv_args("2d_valid", jnp.float32)
    text = str(jax.make_jaxpr(lambda x: nn.conv(x, w, b, **kw))(x))
    if jax.default_backend() == "cpu":
        assert "padding=((0, 0), (0, 2))" in text and "slice" in text
    else:
        assert "padding=((0, 0), (0, 0))" in text
    y = nn.conv(x, w, b, **kw)
    assert y.shape == (2, 4, 4, 4)
    np.testing.assert_allclose(y, lax_conv(x, w, b, **kw), rtol=2e-5, atol=2e-5)


def test_conv_reverse_mode_stores_x_and_w_and_equals_the_rule(x64):
    x, w, b, kw = conv_args("2d", jnp.float64)
    f = lambda x, w, b: nn.conv(x, w, b, **kw)
    _, pull = jax.vjp(f, x, w, b)
    leaves = {id(l): l for l in jax.tree_util.tree_leaves(pull)}.values()
    assert sum(l.size for l in leaves) == x.size + w.size
    from functorch_lite.nn import _conv
    seed = _conv._conv_rule("NCHW", "OIHW", (2, 1), ((1, 0), (1, 2)), (1, 2), 2, True).seed
    g = rand(5, f(x, w, b).shape, x.dtype)
    assert_tree_allclose(pull(g), jax.vjp(seed, x, w, b)[1](g), rtol=1e-10, atol=1e-12)


def test_conv_half_precision():
    x, w, b, kw = conv_args("2d", jnp.float32)
    y = nn.conv(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), b.astype(jnp.bfloat16), **kw)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), lax_conv(x, w, b, **kw), rtol=5e-2, atol=5e-2)


# --------------------------------------------------------------------------- pooling

POOL = {
    "2x2": ((2, 3, 6, 8), dict(window=2)),
    "3s2p1": ((2, 2, 7, 5), dict(window=3, stride=2, padding=1)),
    "1d": ((2, 3, 9), dict(window=(3,), stride=(2,))),
}


@pytest.mark.parametrize("dtype", ["float32", pytest.param("float64", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", list(POOL))
def test_pools_match_torch(dtype, name):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    with jax.enable_x64(dtype == "float64"):
        shape, kw = POOL[name]
        x = rand(3, shape, jnp.dtype(dtype))
        n = len(shape) - 2
        tkw = dict(kernel_size=kw["window"], stride=kw.get("stride"), padding=kw.get("padding", 0))
        for ours, tpool in ((nn.max_pool, {1: F.max_pool1d, 2: F.max_pool2d}[n]),
                            (nn.avg_pool, {1: F.avg_pool1d, 2: F.avg_pool2d}[n])):
            f = lambda x: ours(x, kw["window"], kw.get("stride"), kw.get("padding", 0))
            tx = torch.tensor(np.asarray(x), requires_grad=True)
            ty = tpool(tx, **tkw)
            np.testing.assert_allclose(np.asarray(f(x)), ty.detach().numpy(), rtol=1e-6, atol=1e-6)
            weights = np.cos(np.arange(ty.numel())).reshape(ty.shape)
            (ty * torch.tensor(weights, dtype=ty.dtype)).sum().backward()
            np.testing.assert_allclose(np.asarray(jax.grad(scalar(f))(x)), tx.grad.numpy(),
                                       rtol=1e-6, atol=1e-6)


def test_avg_pool_count_include_pad_false_matches_torch():
    torch = pytest.importorskip("torch")
    x = rand(4, (1, 2, 5, 5))
    got = nn.avg_pool(x, 3, 2, 1, count_include_pad=False)
    want = torch.nn.functional.avg_pool2d(torch.tensor(np.asarray(x)), 3, 2, 1, count_include_pad=False)
    np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-6)


def lax_max_pool(x, window, stride, padding):
    n = x.ndim - 2
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1) + (window,) * n, (1, 1) + (stride,) * n,
                             ((0, 0), (0, 0)) + ((padding, padding),) * n)


def test_max_pool_raw_transforms_and_check_grad(x64):
    x = rand(5, (2, 2, 5, 5), jnp.float64)
    f, g = (lambda x: nn.max_pool(x, 3, 2, 1)), (lambda x: lax_max_pool(x, 3, 2, 1))
    s, t = scalar(lambda x: jnp.sin(f(x))), scalar(lambda x: jnp.sin(g(x)))
    u = rand(6, x.shape, x.dtype)
    xs = jnp.stack([x, 2 * x])

    def all_of(f, s):
        return (jax.grad(s)(x), jax.jvp(f, (x,), (u,))[1], jax.linearize(f, x)[1](u), jax.jacfwd(f)(x),
                jax.jacrev(f)(x), jax.hessian(s)(x), jax.vmap(jax.grad(s))(xs))

    assert_tree_allclose(jax.jit(lambda x: all_of(f, s))(x), jax.jit(lambda x: all_of(g, t))(x),
                         rtol=1e-10, atol=1e-12)
    assert fl.check_grad(jax.jit(s), x, order=2).passed
    # reverse mode keeps one small integer per output element, not x
    _, pull = jax.vjp(f, x)
    leaves = list({id(l): l for l in jax.tree_util.tree_leaves(pull)}.values())
    assert sum(l.size * l.dtype.itemsize for l in leaves) == f(x).size


def test_max_pool_ties_go_to_the_first_maximum_as_torch():
    torch = pytest.importorskip("torch")
    x = jnp.zeros((1, 1, 4, 4))                                     # all ties, and at 0
    g = jax.grad(lambda x: nn.max_pool(x, 2).sum())(x)
    tx = torch.zeros(1, 1, 4, 4, requires_grad=True)
    torch.nn.functional.max_pool2d(tx, 2).sum().backward()
    np.testing.assert_array_equal(np.asarray(g), tx.grad.numpy())
    assert fl.check_grad(lambda x: jnp.sum(nn.avg_pool(x, 2) ** 2), x, order=2).passed


# --------------------------------------------------------------------------- dropout


def test_dropout_values_gradients_and_keys():
    x = rand(7, (200, 50))
    key = jax.random.key(3)
    y = nn.dropout(x, 0.25, key)
    kept = y != 0
    assert 0.7 < float(kept.mean()) < 0.8
    np.testing.assert_allclose(np.asarray(y[kept]), np.asarray(x[kept] / 0.75), rtol=1e-6)
    g = jax.grad(lambda x: jnp.sum(nn.dropout(x, 0.25, key) * x))(x)
    assert_tree_allclose(g, 2 * y, rtol=1e-6)               # d/dx (x * m x / 0.75) = 2 y
    assert_tree_allclose(jax.jvp(lambda x: nn.dropout(x, 0.25, key), (x,), (x,))[1], y)
    assert_tree_allclose(nn.dropout(x, 0.25, jax.random.PRNGKey(3)).shape, x.shape)
    # a key per sample under vmap: different masks
    ys = jax.vmap(lambda k, x: nn.dropout(x, 0.5, k))(jax.random.split(key, 2), jnp.stack([x, x]))
    assert not bool(jnp.all((ys[0] == 0) == (ys[1] == 0)))
    assert nn.dropout(x, 0.0) is x and nn.dropout(x, 0.9, deterministic=True) is x


# ------------------------------------------------------------------------- bad input


def test_bad_input_names_the_layer_and_argument():
    x, w = jnp.ones((2, 3, 5, 5)), jnp.ones((4, 3, 3, 3))
    with pytest.raises(ValueError, match=r"nn.conv.*x has 3 channels but w .* takes 2 per group"):
        nn.conv(x, jnp.ones((4, 2, 3, 3)))
    with pytest.raises(ValueError, match=r"nn.conv.*kernel spans 7 positions.*padded input has only 5"):
        nn.conv(x, jnp.ones((4, 3, 7, 7)))
    with pytest.raises(ValueError, match=r"nn.conv.*x has shape \(3, 5\).*must have 4 axes"):
        nn.conv(jnp.ones((3, 5)), w)
    with pytest.raises(ValueError, match=r"nn.conv.*w must have 3, 4 or 5 axes"):
        nn.conv(x, jnp.ones((4, 3)))
    with pytest.raises(ValueError, match=r"nn.conv.*unknown padding='full'"):
        nn.conv(x, w, padding="full")
    with pytest.raises(ValueError, match=r"nn.conv.*unknown layout='NCWH'"):
        nn.conv(x, w, layout="NCWH")
    with pytest.raises(ValueError, match=r"nn.conv.*groups=2"):
        nn.conv(jnp.ones((2, 4, 5, 5)), jnp.ones((3, 2, 3, 3)), groups=2)
    with pytest.raises(ValueError, match=r"nn.conv.*b has shape \(3,\).*\(4,\)"):
        nn.conv(x, w, jnp.ones(3))
    with pytest.raises(ValueError, match=r"nn.conv.*stride must be an int >= 1"):
        nn.conv(x, w, stride=0)
    with pytest.raises(TypeError, match=r"nn.conv.*x has dtype int32"):
        nn.conv(x.astype(jnp.int32), w)
    with pytest.raises(ValueError, match=r"nn.max_pool.*unknown padding='full'"):
        nn.max_pool(x, 2, padding="full")
    with pytest.raises(ValueError, match=r"nn.max_pool.*window spans 6.*only 5"):
        nn.max_pool(x, 6)
    with pytest.raises(ValueError, match=r"nn.avg_pool.*padding 2 .*exceeds half the window"):
        nn.avg_pool(x, 2, padding=2)
    with pytest.raises(TypeError, match=r"nn.dropout.*key is required"):
        nn.dropout(x, 0.5)
    with pytest.raises(ValueError, match=r"nn.dropout.*rate must lie in \[0, 1\).*1.0"):
        nn.dropout(x, 1.0, jax.random.key(0))
    with pytest.raises(ValueError, match=r"nn.dropout.*rate must lie in \[0, 1\).*-0.1"):
        nn.dropout(x, -0.1, jax.random.key(0))
    with pytest.raises(TypeError, match=r"nn.dropout.*key must be one PRNG key \(jax.random.key\(seed\), or a raw uint32 key of shape \(2,\)\); got int"):
        nn.dropout(x, 0.5, 3)
    with pytest.raises(ValueError, match=r"nn.dropout.*key must be one PRNG key, got an array of 2 keys .*or vmap over them"):
        nn.dropout(x, 0.5, jax.random.split(jax.random.key(0), 2))
