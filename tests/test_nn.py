"""functorch_lite.nn: values, hand-written rules against independent references, every
transform, zeros, half precision, bad input, and what reverse mode stores."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import jet

import functorch_lite as fl
from functorch_lite import nn
from functorch_lite._mode import taylor_mode

from conftest import assert_tree_allclose

# ----------------------------------------------------------------- plain-jnp references


def ref_linear(x, w, b=None):
    y = x @ w
    return y if b is None else y + b.reshape((1,) * (y.ndim - 1) + b.shape)


def _bshape(x, axes):
    return tuple(n if i in axes else 1 for i, n in enumerate(x.shape))


def ref_layer_norm(x, scale, offset, axes=(-1,), eps=1e-5):
    axes = tuple(a % x.ndim for a in axes)
    mu = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean((x - mu) ** 2, axis=axes, keepdims=True)
    y = (x - mu) / jnp.sqrt(var + eps)
    if scale is not None:
        y = y * scale.reshape(_bshape(x, axes))
    if offset is not None:
        y = y + offset.reshape(_bshape(x, axes))
    return y


def ref_rms_norm(x, scale, axes=(-1,), eps=1e-6):
    axes = tuple(a % x.ndim for a in axes)
    y = x / jnp.sqrt(jnp.mean(x * x, axis=axes, keepdims=True) + eps)
    return y if scale is None else y * scale.reshape(_bshape(x, axes))


def ref_l2_norm(x, axis=None, keepdims=False):
    return jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=keepdims))


def rand(seed, shape, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


# The four layers as (ours, reference, args) cases, float64 when x64 is on.
def cases(dtype=jnp.float64):
    x3 = rand(0, (2, 3, 4), dtype)
    return {
        "linear": (nn.linear, ref_linear, (x3, rand(1, (4, 5), dtype), rand(2, (5,), dtype))),
        "linear_1d_nobias": (nn.linear, ref_linear, (rand(3, (4,), dtype), rand(4, (4, 3), dtype))),
        "layer_norm": (nn.layer_norm, ref_layer_norm, (x3, 1 + rand(5, (4,), dtype), rand(6, (4,), dtype))),
        "layer_norm_axes": (
            lambda x, s, o: nn.layer_norm(x, s, o, axis=(1, 2)),
            lambda x, s, o: ref_layer_norm(x, s, o, axes=(1, 2)),
            (x3, 1 + rand(7, (3, 4), dtype), rand(8, (3, 4), dtype))),
        "rms_norm": (nn.rms_norm, ref_rms_norm, (x3, 1 + rand(9, (4,), dtype))),
        "l2_norm": (lambda x: nn.l2_norm(x, axis=-1), lambda x: ref_l2_norm(x, axis=-1), (x3,)),
        "l2_norm_all": (nn.l2_norm, ref_l2_norm, (x3,)),
    }


CASES = list(cases(jnp.float32))


def scalar(f):
    """A scalar function of the same args (fixed random weights on the output)."""
    def s(*args):
        out = f(*args)
        return jnp.sum(out * jnp.cos(jnp.arange(out.size, dtype=out.dtype).reshape(out.shape)))
    return s


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("name", CASES)
def test_values_match_plain_jnp(name):
    ours, ref, args = cases(jnp.float32)[name]
    assert_tree_allclose(ours(*args), ref(*args), rtol=2e-5, atol=2e-5)


def test_l2_norm_axes_keepdims():
    x = rand(0, (2, 3, 4))
    for axis in (None, 0, -1, (0, 2)):
        for keepdims in (False, True):
            assert_tree_allclose(nn.l2_norm(x, axis=axis, keepdims=keepdims),
                                 ref_l2_norm(x, axis=axis, keepdims=keepdims), rtol=1e-6)
    assert nn.l2_norm(jnp.array(-3.0)) == 3.0   # a scalar: |x|


# ------------------------------------------------- rules against independent references


@pytest.mark.parametrize("name", ["linear", "linear_1d_nobias", "layer_norm", "rms_norm", "l2_norm"]
                         + [pytest.param(n, marks=pytest.mark.slow) for n in ("layer_norm_axes", "l2_norm_all")])
def test_check_grad_order_2_float64(x64, name):
    ours, _, args = cases()[name]
    report = fl.check_grad(jax.jit(ours), *args, order=2)
    assert report.passed and len(report.comparisons) == 9   # d1, d2 of fwd, d2 of rev


@pytest.mark.parametrize("name", CASES)
def test_rules_equal_autodiff_of_plain_formulas(x64, name):
    ours, ref, args = cases()[name]
    argnums = tuple(range(len(args)))
    s_ours, s_ref = scalar(ours), scalar(ref)
    # reverse rule (custom_vjp) against jax.grad of the plain formulas
    assert_tree_allclose(fl.grad(s_ours, argnums)(*args), jax.grad(s_ref, argnums)(*args),
                         rtol=1e-10, atol=1e-12)
    # forward rule (custom_jvp) against jax.jvp of the plain formulas
    tangents = tuple(rand(10 + i, a.shape, a.dtype) for i, a in enumerate(args))
    assert_tree_allclose(fl.jvp(ours, args, tangents), jax.jvp(ref, args, tangents),
                         rtol=1e-10, atol=1e-12)


def test_linear_rule_is_the_seed_formula(x64):
    x, w, b = rand(0, (5, 3), jnp.float64), rand(1, (3, 4), jnp.float64), rand(2, (4,), jnp.float64)
    g = rand(3, (5, 4), jnp.float64)
    _, pullback = fl.vjp(nn.linear, x, w, b)
    dx, dw, db = pullback(g)
    assert_tree_allclose((dx, dw, db), (g @ w.T, x.T @ g, g.sum(0)), rtol=1e-12, atol=1e-12)


def test_a_wrong_rule_would_be_caught(x64):
    """The checker used above rejects a rule off by 0.1% (so passing it means something)."""
    x = rand(0, (3, 4), jnp.float64)

    @jax.custom_vjp
    def bad(x):
        return nn.layer_norm(x, None, None)

    bad.defvjp(lambda x: (bad(x), x),
               lambda x, g: (1.001 * jax.vjp(lambda x: nn.layer_norm(x, None, None), x)[1](g)[0],))
    with pytest.raises(fl.GradCheckError):
        fl.check_grad(bad, x, modes=("rev",))


# ------------------------------------------------------------------ every transform


FAST = ["linear"]     # layer_norm (16 s) runs in the slow step with the rest
SLOW = [pytest.param(n, marks=pytest.mark.slow) for n in CASES if n not in FAST]
HESSIAN_MODES = ("auto", "fwd-over-rev", "rev-over-rev", "rev-over-fwd", "fwd-over-fwd")


@pytest.mark.parametrize("name", FAST + SLOW)
def test_every_transform(x64, name):
    ours, ref, args = cases()[name]
    x, rest = args[0], args[1:]
    f = lambda x: ours(x, *rest)
    g = lambda x: ref(x, *rest)
    s, t = scalar(f), scalar(g)
    u = rand(20, x.shape, x.dtype)
    xs = jnp.stack([x, 2 * x])

    @jax.jit   # one compiled program per case keeps the test fast
    def ours_all(x, u, xs):
        out = (fl.jacrev(f)(x), fl.jacfwd(f)(x), fl.jacrev(f, chunk_size=3)(x),
               fl.jacfwd(f, chunk_size=3)(x), fl.linearize(f, x)[1](u), fl.jvp(f, (x,), (u,))[1],
               fl.vjp(f, x)[1](f(x))[0])
        out += tuple(fl.hessian(s, mode=m)(x) for m in HESSIAN_MODES)
        out += (fl.hessian(s, mode="rev-over-rev", chunk_size=5)(x),
                fl.vmap(f)(xs), fl.vmap(fl.grad(s))(xs))
        return out

    @jax.jit
    def ref_all(x, u, xs):
        jac = jax.jacrev(g)(x)
        h = jax.hessian(t)(x)
        return ((jac, jac, jac, jac, jax.jvp(g, (x,), (u,))[1], jax.jvp(g, (x,), (u,))[1],
                 jax.vjp(g, x)[1](g(x))[0]) + (h,) * (len(HESSIAN_MODES) + 1)
                + (jax.vmap(g)(xs), jax.vmap(jax.grad(t))(xs)))

    assert_tree_allclose(ours_all(x, u, xs), ref_all(x, u, xs), rtol=1e-9, atol=1e-10)
    # eagerly too (no jit around our transforms)
    assert_tree_allclose(fl.hessian(s)(x), jax.hessian(t)(x), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", [pytest.param("layer_norm", marks=pytest.mark.slow),  # ~12 s each
                                  pytest.param("l2_norm", marks=pytest.mark.slow), "linear"])
def test_later_transforms(x64, name):
    """jacobian (every mode), hvp and derivative (Taylor mode) through the layers."""
    ours, ref, args = cases()[name]
    x, rest = args[0], args[1:]
    s, t = scalar(lambda x: ours(x, *rest)), scalar(lambda x: ref(x, *rest))
    for mode in ("fwd", "rev", "auto"):
        assert_tree_allclose(fl.jacobian(lambda x: ours(x, *rest), mode=mode)(x),
                             jax.jacrev(lambda x: ref(x, *rest))(x), rtol=1e-9, atol=1e-10)
    u = rand(30, x.shape, x.dtype)
    _, hv = fl.hvp(s, (x,), (u,))
    assert_tree_allclose(hv, jax.jvp(jax.grad(t), (x,), (u,))[1], rtol=1e-9, atol=1e-10)
    v = rand(31, x.shape, x.dtype)
    line = lambda a: s(x + a * v)
    line_ref = lambda a: t(x + a * v)
    want = jax.grad(jax.grad(jax.grad(line_ref)))(0.3)
    assert np.allclose(fl.derivative(line, order=3)(0.3), want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["layer_norm", "rms_norm", "l2_norm", "linear"])
def test_taylor_mode_jet(x64, name):
    """jet cannot trace custom rules; in taylor_mode the layers expand their primal."""
    ours, ref, args = cases()[name]
    x, rest = args[0], args[1:]
    v = rand(40, x.shape, x.dtype)
    line = lambda a: ours(x + a * v, *rest)
    line_ref = lambda a: ref(x + a * v, *rest)

    @jax.jit
    def taylor(a):
        with taylor_mode():
            y, (d1, d2, d3) = jet.jet(line, (a,), ((1.0, 0.0, 0.0),))
        return y, d1, d2, d3

    want = jax.jit(lambda a: (line_ref(a), jax.jacfwd(line_ref)(a), jax.jacfwd(jax.jacfwd(line_ref))(a),
                              jax.jacfwd(jax.jacfwd(jax.jacfwd(line_ref)))(a)))
    assert_tree_allclose(taylor(0.5), want(0.5), rtol=1e-9, atol=1e-10)


def test_raw_jax_forward_mode_needs_no_context(x64):
    """The layers are custom_jvp rules: raw jax.jacfwd / jax.hessian work with no switch."""
    x = rand(0, (3, 4), jnp.float64)
    assert_tree_allclose(jax.jacfwd(nn.l2_norm)(x), jax.jacfwd(ref_l2_norm)(x), rtol=1e-12)
    assert_tree_allclose(jax.hessian(nn.l2_norm)(x), jax.hessian(ref_l2_norm)(x), rtol=1e-9, atol=1e-12)
    with nn.forward_mode():   # the old switch is a harmless no-op
        assert_tree_allclose(jax.jacfwd(nn.l2_norm)(x), jax.jacfwd(ref_l2_norm)(x), rtol=1e-12)


def test_one_trace_serves_every_mode(x64):
    """A function jitted once is reused by reverse and forward mode (no per-mode retrace)."""
    x = rand(0, (3, 4), jnp.float64)
    f = jax.jit(lambda x: nn.l2_norm(x, axis=1))
    s = lambda x: f(x).sum()
    assert_tree_allclose(fl.grad(s)(x), jax.grad(lambda x: ref_l2_norm(x, 1).sum())(x), rtol=1e-12)
    assert_tree_allclose(fl.jacfwd(f)(x), jax.jacfwd(lambda x: ref_l2_norm(x, 1))(x), rtol=1e-12)
    assert_tree_allclose(fl.hessian(s)(x), jax.hessian(lambda x: ref_l2_norm(x, 1).sum())(x),
                         rtol=1e-9, atol=1e-12)
    jaxpr = str(jax.make_jaxpr(f)(x))
    assert "custom_jvp_call" in jaxpr and "custom_vjp_call" not in jaxpr


# -------------------------------------------------------------------------- zeros


@pytest.mark.parametrize("mode", ["fwd-over-rev", "rev-over-rev", "rev-over-fwd", "fwd-over-fwd"])
def test_l2_norm_at_zero_is_finite_in_all_orders(mode):
    z = jnp.zeros(3)
    assert np.isnan(np.asarray(jax.grad(jnp.linalg.norm)(z))).all()   # what raw JAX gives
    derivs = jax.jit(lambda z: (fl.grad(nn.l2_norm)(z), fl.jacfwd(nn.l2_norm)(z),
                                fl.hessian(nn.l2_norm, mode=mode)(z)))(z)
    assert_tree_allclose(derivs, (jnp.zeros(3), jnp.zeros(3), jnp.zeros((3, 3))), atol=0)
    # a zero row among non-zero rows: the others are untouched
    x = jnp.array([[0.0, 0.0], [3.0, 4.0]])
    rows = lambda x: nn.l2_norm(x, axis=1).sum()
    g, h = jax.jit(lambda x: (fl.grad(rows)(x), fl.hessian(rows, mode=mode)(x)))(x)
    assert_tree_allclose(g, jnp.array([[0.0, 0.0], [0.6, 0.8]]), rtol=1e-6)
    assert np.isfinite(np.asarray(h)).all()
    assert_tree_allclose(h[1, :, 1, :], jnp.array([[0.128, -0.096], [-0.096, 0.072]]), rtol=1e-5)


def test_l2_norm_eps_treats_small_norms_as_zero():
    x = jnp.array([3e-4, 4e-4])
    assert np.isclose(nn.l2_norm(x, eps=1e-3), 5e-4)                 # value unchanged
    assert_tree_allclose(fl.grad(lambda x: nn.l2_norm(x, eps=1e-3))(x), jnp.zeros(2), atol=0)
    assert_tree_allclose(fl.grad(nn.l2_norm)(x), jnp.array([0.6, 0.8]), rtol=1e-6)


@pytest.mark.parametrize("eps", [1e-5, 0.0])
@pytest.mark.parametrize("kind", ["layer", "rms"])
@pytest.mark.parametrize("mode", ["fwd-over-rev", "rev-over-rev", "rev-over-fwd", "fwd-over-fwd"])
def test_norms_of_degenerate_rows_are_finite(kind, eps, mode):
    # layer: a constant row (variance 0); rms: a zero row
    x = jnp.array([[2.0, 2.0, 2.0], [1.0, -2.0, 0.5]]) if kind == "layer" else \
        jnp.array([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]])
    scale = jnp.array([1.0, 2.0, 3.0])
    if kind == "layer":
        f = lambda x, s: nn.layer_norm(x, s, jnp.zeros(3), eps=eps)
    else:
        f = lambda x, s: nn.rms_norm(x, s, eps=eps)
    s = lambda x: jnp.sum(f(x, scale) * jnp.array([[1.0, -2.0, 0.5]]))
    derivs = jax.jit(lambda x, scale: (
        fl.grad(s)(x), fl.jacfwd(s)(x), fl.hessian(s, mode=mode)(x),
        fl.grad(lambda sc: jnp.sum(f(x, sc)))(scale)))(x, scale)
    for d in derivs:
        assert np.isfinite(np.asarray(d)).all()
    if eps == 0.0:   # no eps: the degenerate row's derivative is the subgradient 0
        assert_tree_allclose(derivs[0][0], jnp.zeros(3), atol=0)


# ------------------------------------------------------------------- half precision


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", ["linear", "layer_norm", "rms_norm", "l2_norm"])
def test_half_precision(dtype, name):
    ours, ref, args32 = cases(jnp.float32)[name]
    args = tuple(a.astype(dtype) for a in args32)
    up = tuple(a.astype(jnp.float32) for a in args)       # the same half values, in f32
    out = ours(*args)
    assert out.dtype == dtype
    tol = 2e-2 if dtype == jnp.bfloat16 else 2e-3
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref(*up)), rtol=tol, atol=tol)
    argnums = tuple(range(len(args)))
    grads = fl.grad(lambda *a: ours(*a).astype(jnp.float32).sum(), argnums)(*args)
    want = jax.grad(lambda *a: ref(*a).sum(), argnums)(*up)
    for g, w, a in zip(grads, want, args):
        assert g.dtype == a.dtype
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w), rtol=4 * tol, atol=4 * tol)
    _, t = fl.jvp(ours, args, args)
    assert t.dtype == dtype


def test_half_precision_accumulates_in_float32():
    # squares of 300 and 400 overflow float16 (max 65504); the result 500 does not
    x = jnp.array([300.0, 400.0], jnp.float16)
    assert nn.l2_norm(x) == 500
    assert np.isfinite(np.asarray(fl.grad(lambda x: nn.l2_norm(x).astype(jnp.float32))(x))).all()
    y = nn.rms_norm(jnp.array([[300.0, 400.0]], jnp.float16), jnp.ones(2, jnp.float16), eps=0.0)
    np.testing.assert_allclose(np.asarray(y, np.float32), [[300 / 353.55, 400 / 353.55]], rtol=2e-3)
    # a long bfloat16 dot product: float32 accumulation keeps the sum of 4096 ones exact
    ones = jnp.ones((1, 4096), jnp.bfloat16)
    assert nn.linear(ones, jnp.ones((4096, 1), jnp.bfloat16))[0, 0] == 4096


# --------------------------------------------------------------------------- bad input


def test_linear_bad_input():
    x, w, b = jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.ones(4)
    with pytest.raises(ValueError, match=r"nn.linear\(x, w, b\): x has shape \(2, 5\) and w has shape \(3, 4\)"):
        nn.linear(jnp.ones((2, 5)), w)
    with pytest.raises(ValueError, match=r"b has shape \(3,\) but w has shape \(3, 4\)"):
        nn.linear(x, w, jnp.ones(3))
    with pytest.raises(ValueError, match=r"w must be a matrix of shape \(d_in, d_out\), got shape \(3,\)"):
        nn.linear(x, jnp.ones(3))
    with pytest.raises(ValueError, match="at least one axis"):
        nn.linear(jnp.array(1.0), w)
    with pytest.raises(TypeError, match=r"x has dtype int32.*x.astype\(jnp.float32\)"):
        nn.linear(jnp.ones((2, 3), jnp.int32), w)
    with pytest.raises(TypeError, match="must be a floating-point array, got list"):
        nn.linear([[1.0, 2.0, 3.0]], w)
    with pytest.raises(TypeError, match=r"share one dtype, got \['bfloat16', 'float32'\]"):
        nn.linear(x, w.astype(jnp.bfloat16), b)


def test_norm_bad_input():
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match=r"scale has shape \(2,\) but x has shape \(2, 3\).*give scale the shape \(3,\)"):
        nn.layer_norm(x, jnp.ones(2), jnp.zeros(3))
    with pytest.raises(ValueError, match=r"offset has shape \(3, 1\).*give offset the shape \(3,\)"):
        nn.layer_norm(x, jnp.ones(3), jnp.zeros((3, 1)))
    with pytest.raises(ValueError, match=r"scale has shape \(3,\).*normalised axes \(0, 1\) have shape \(2, 3\)"):
        nn.rms_norm(x, jnp.ones(3), axis=(0, 1))
    with pytest.raises(ValueError, match=r"eps must be a finite number >= 0, got -1e-05"):
        nn.layer_norm(x, None, None, eps=-1e-5)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        nn.l2_norm(x, eps=-1.0)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        nn.rms_norm(x, None, eps=float("nan"))
    with pytest.raises(TypeError, match="eps must be a Python float, got str"):
        nn.rms_norm(x, None, eps="1e-6")
    with pytest.raises(TypeError, match="x has dtype int32"):
        nn.rms_norm(jnp.ones(3, jnp.int32), None)
    with pytest.raises(TypeError, match="x has dtype bool"):
        nn.l2_norm(jnp.ones(3, bool))
    with pytest.raises(TypeError, match="scale has dtype int32"):
        nn.layer_norm(x, jnp.ones(3, jnp.int32), None)
    with pytest.raises(TypeError, match=r"scale has dtype float16 but x has float32"):
        nn.layer_norm(x, jnp.ones(3, jnp.float16), None)
    with pytest.raises(ValueError, match=r"axis=2 is out of range for an input with 2 dimension"):
        nn.layer_norm(x, None, None, axis=2)
    with pytest.raises(ValueError, match="names the same axis twice"):
        nn.l2_norm(x, axis=(1, -1))
    with pytest.raises(TypeError, match="axis must be an int or a tuple of ints"):
        nn.layer_norm(x, None, None, axis=None)
    with pytest.raises(TypeError, match="keepdims must be True or False"):
        nn.l2_norm(x, keepdims=1)
    with pytest.raises(ValueError, match="at least one axis to normalise"):
        nn.layer_norm(jnp.array(1.0), None, None)


# --------------------------------------------------------------- what reverse mode stores


def residual_bytes(f, *args, vjp=jax.vjp) -> int:
    """Bytes of the distinct arrays a ``vjp`` closure keeps (its pytree leaves)."""
    _, pullback = vjp(f, *args)
    seen = {id(leaf): leaf for leaf in jax.tree_util.tree_leaves(pullback)}
    return sum(leaf.size * leaf.dtype.itemsize for leaf in seen.values())


# The norms' residuals (at most 0.55x of autodiff's): tests/test_nn_raw.py, under both
# jax.vjp and functorch_lite's vjp.


def test_linear_stores_only_its_inputs():
    x, w, b = rand(0, (8, 5)), rand(1, (5, 3)), rand(2, (3,))
    assert residual_bytes(nn.linear, x, w, b) == (x.size + w.size) * 4


# ------------------------------------------------------------------------------ blocks


_REF_NORMS = {None: lambda h, p: h, "layer": lambda h, p: ref_layer_norm(h, p["scale"], p["offset"]),
              "rms": lambda h, p: ref_rms_norm(h, p["scale"])}


def plain_mlp(params, x, norm, activation=jax.nn.relu):
    """The MLP in plain jax.numpy: each hidden layer linear -> norm -> activation."""
    *hidden, last = params
    for p in hidden:
        x = activation(_REF_NORMS[norm](ref_linear(x, p["w"], p["b"]), p))
    return ref_linear(x, last["w"], last["b"])


@pytest.mark.parametrize("norm", [pytest.param(None, marks=pytest.mark.slow),
                                  pytest.param("layer", marks=pytest.mark.slow), "rms"])
def test_mlp_matches_plain_and_gives_per_sample_grads(x64, norm):
    block = nn.mlp([4, 8, 8, 2], norm=norm, activation=jnp.tanh, dtype=jnp.float64)
    params = block.init(jax.random.key(0))
    x, y = rand(1, (6, 4), jnp.float64), rand(2, (6, 2), jnp.float64)
    assert_tree_allclose(block.apply(params, x), plain_mlp(params, x, norm, jnp.tanh), rtol=1e-12)

    def loss(apply):
        return lambda p, x, y: jnp.sum((apply(p, x) - y) ** 2)

    ours = loss(block.apply)
    plain = loss(lambda p, x: plain_mlp(p, x, norm, jnp.tanh))
    got = jax.jit(lambda p, x, y: (fl.grad(ours)(p, x, y),
                                   fl.vmap(fl.grad(ours), in_dims=(None, 0, 0))(p, x, y)))
    full, per_sample = got(params, x, y)
    assert_tree_allclose(full, jax.grad(plain)(params, x, y), rtol=1e-10, atol=1e-12)
    one = jax.jit(jax.grad(plain))
    looped = [one(params, x[i], y[i]) for i in range(x.shape[0])]
    assert_tree_allclose(per_sample, jax.tree_util.tree_map(lambda *g: jnp.stack(g), *looped),
                         rtol=1e-10, atol=1e-12)
    if norm == "layer":
        fl.check_grad(lambda p: block.apply(p, x), params, order=1)


OPTAX_ADAM = "optax.adam's bias correction takes a Python float to an int32 power (optax's code, not strict-clean)"


@pytest.mark.standard_promotion(OPTAX_ADAM)
def test_mlp_trains_with_optax():
    optax = pytest.importorskip("optax")
    block = nn.mlp([2, 16, 1], norm="layer", activation=jnp.tanh)
    params = block.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (64, 2))
    y = jnp.sin(x[:, :1]) * x[:, 1:]
    opt = optax.adam(1e-2)
    state = opt.init(params)
    loss = lambda p: jnp.mean((block.apply(p, x) - y) ** 2)

    @jax.jit
    def step(p, s):
        g = fl.grad(loss)(p)
        u, s = opt.update(g, s)
        return optax.apply_updates(p, u), s

    first = loss(params)
    for _ in range(200):
        params, state = step(params, state)
    assert loss(params) < 0.2 * first


def test_blocks_bad_input():
    with pytest.raises(ValueError, match=r"nn.mlp\(sizes\): unknown norm='batch'"):
        nn.mlp([2, 3], norm="batch")
    with pytest.raises(ValueError, match="at least an input and an output width"):
        nn.mlp([2])
    with pytest.raises(ValueError, match="every size must be a positive int"):
        nn.mlp([2, 0, 1])
    with pytest.raises(TypeError, match="activation must be a callable"):
        nn.mlp([2, 3], activation="relu")
    block = nn.mlp([2, 3, 1])
    with pytest.raises(ValueError, match="expected params from this block's init"):
        block.apply(block.init(jax.random.key(0))[:1], jnp.ones(2))
    d = nn.dense(3, 2)
    assert d.apply(d.init(jax.random.key(0)), jnp.ones(3)).shape == (2,)
    assert math.isclose(float(jnp.abs(d.init(jax.random.key(0))["w"]).max()), 1 / math.sqrt(3), rel_tol=0.5)


# ------------------------------------------------------------------------ fused block


def unfused(x, w, b, scale, offset=None, norm="layer", activation=jax.nn.gelu, eps=1e-5):
    h = nn.linear(x, w, b)
    h = nn.layer_norm(h, scale, offset, eps=eps) if norm == "layer" else nn.rms_norm(h, scale, eps=eps)
    return activation(h)


def fused_args(dtype, norm, x_shape=(3, 4)):
    args = (rand(0, x_shape, dtype), rand(1, (4, 5), dtype), rand(2, (5,), dtype), 1 + rand(3, (5,), dtype))
    return args + ((rand(4, (5,), dtype),) if norm == "layer" else ())


@pytest.mark.parametrize("norm", [pytest.param("layer", marks=pytest.mark.slow), "rms"])
def test_fused_block_equals_unfused_in_every_order(x64, norm):
    f = lambda *a: nn.linear_norm_act(*a, norm=norm, activation=jax.nn.gelu, eps=1e-5)
    g = lambda *a: unfused(*a, norm=norm, eps=1e-5)
    args = fused_args(jnp.float64, norm)
    assert_tree_allclose(f(*args), g(*args), rtol=1e-12, atol=1e-12)
    argnums = tuple(range(len(args)))
    assert_tree_allclose(fl.grad(scalar(f), argnums)(*args), jax.grad(scalar(g), argnums)(*args),
                         rtol=1e-10, atol=1e-12)
    fl.check_grad(jax.jit(f), *args, order=2)
    x, rest = args[0], args[1:]
    s = scalar(lambda x: f(x, *rest))
    h = jax.jit(lambda x: [fl.hessian(s, mode=m)(x) for m in ("fwd-over-rev", "rev-over-rev")])(x)
    h_ref = jax.jit(fl.hessian(scalar(lambda x: g(x, *rest)), mode="rev-over-rev"))(x)
    for hm in h:
        assert_tree_allclose(hm, h_ref, rtol=1e-9, atol=1e-10)
    # one sample (no leading axis) and per-sample gradients under vmap
    xs = rand(9, (6, 4), jnp.float64)
    per_sample = jax.jit(fl.vmap(fl.grad(scalar(f), argnums), in_dims=(0,) + (None,) * len(rest)))(xs, *rest)
    want = jax.jit(jax.vmap(jax.grad(scalar(g), argnums), in_axes=(0,) + (None,) * len(rest)))(xs, *rest)
    assert_tree_allclose(per_sample, want, rtol=1e-10, atol=1e-12)


def test_fused_block_stores_less_and_mlp_option():
    x, w, b, scale, offset = fused_args(jnp.float32, "layer", (64, 4))
    fused_bytes = residual_bytes(lambda *a: nn.linear_norm_act(*a, activation=jax.nn.gelu), x, w, b, scale, offset)
    unfused_bytes = residual_bytes(unfused, x, w, b, scale, offset)
    assert fused_bytes < 0.6 * unfused_bytes, (fused_bytes, unfused_bytes)
    a = nn.mlp([4, 8, 8, 1], norm="rms", fused=True)
    b_ = nn.mlp([4, 8, 8, 1], norm="rms")
    params = a.init(jax.random.key(0))
    assert_tree_allclose(a.apply(params, x), b_.apply(params, x), rtol=1e-5, atol=1e-6)
    loss = lambda blk: (lambda p: jnp.sum(blk.apply(p, x) ** 2))
    grads = jax.jit(lambda p: (fl.grad(loss(a))(p), fl.grad(loss(b_))(p)))(params)
    assert_tree_allclose(*grads, rtol=1e-4, atol=1e-5)
    out = nn.linear_norm_act(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), b.astype(jnp.bfloat16),
                             scale.astype(jnp.bfloat16), offset.astype(jnp.bfloat16))
    assert out.dtype == jnp.bfloat16


def test_fused_block_bad_input():
    x, w, b, scale, offset = fused_args(jnp.float32, "layer")
    fused = r"nn.linear_norm_act\(x, w, b, scale, offset, norm='layer'\): "   # the block names itself
    with pytest.raises(ValueError, match=fused + r"x has shape \(3, 4\) and w has shape \(5, 5\)"):
        nn.linear_norm_act(x, jnp.ones((5, 5)), b, scale, offset)
    with pytest.raises(ValueError, match=fused + r"scale has shape \(4,\) but x W \+ b has shape \(3, 5\)"):
        nn.linear_norm_act(x, w, b, jnp.ones(4), offset)
    with pytest.raises(TypeError, match=fused + r"offset has dtype float16 but x W \+ b has float32"):
        nn.linear_norm_act(x, w, b, scale, offset.astype(jnp.float16))
    with pytest.raises(TypeError, match=fused + r"w must be a floating-point array, got list"):
        nn.linear_norm_act(x, [[1.0]], b, scale, offset)
    with pytest.raises(ValueError, match="rms_norm has no offset"):
        nn.linear_norm_act(x, w, b, scale, offset, norm="rms")
    with pytest.raises(ValueError, match="layer_norm needs an offset"):
        nn.linear_norm_act(x, w, b, scale)
    with pytest.raises(ValueError, match="unknown norm='batch'"):
        nn.linear_norm_act(x, w, b, scale, offset, norm="batch")
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        nn.linear_norm_act(x, w, b, scale, offset, eps=-1.0)
    with pytest.raises(ValueError, match="fused=True fuses"):
        nn.mlp([2, 3], fused=True)
