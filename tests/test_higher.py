"""hessian (modes, auto, chunks), hvp, vhp, hessian_diag."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functorch_lite as fl
from functorch_lite._planner import api
from functorch_lite import _higher as higher

from conftest import assert_tree_allclose

MODES = ("fwd-over-rev", "rev-over-rev", "rev-over-fwd", "fwd-over-fwd")
A = np.array([[2.0, 0.5, -0.3, 0.1], [0.5, 1.0, 0.2, 0.0], [-0.3, 0.2, 3.0, 0.4], [0.1, 0.0, 0.4, 1.5]])


def f(x):
    return jnp.sin(x) @ (A @ x) + jnp.exp(0.3 * x).sum() * x[0] + (x ** 4).sum()


def x0():
    return jnp.array([0.3, -0.7, 1.1, 0.2])


def fd_hessian(g, x, h=1e-5):
    """Central differences of the gradient, column by column (float64)."""
    cols = []
    for j in range(x.shape[0]):
        e = jnp.zeros_like(x).at[j].set(h)
        cols.append((g(x + e) - g(x - e)) / (2 * h))
    return jnp.stack(cols, axis=1)


# ----------------------------------------------------------------------------- hessian


@pytest.mark.parametrize("mode", MODES + ("auto",))
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_hessian_modes_agree_with_finite_differences(x64, mode, chunk_size):
    x = x0()
    H = fl.hessian(f, mode=mode, chunk_size=chunk_size)(x)
    np.testing.assert_allclose(np.asarray(H), np.asarray(fd_hessian(jax.jit(jax.grad(f)), x)),
                               rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(np.asarray(H), np.asarray(jax.hessian(f)(x)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(H), np.asarray(H).T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_hessian_modes_tuple_argnums(x64, mode):
    def g(a, b):
        return jnp.sum(jnp.tanh(a) * b ** 2) + (a @ b) ** 2

    a, b = jnp.array([0.1, -0.4, 0.7]), jnp.array([1.0, 0.5, -0.2])
    ref = jax.hessian(g, argnums=(0, 1))(a, b)
    assert_tree_allclose(fl.hessian(g, argnums=(0, 1), mode=mode)(a, b), ref, rtol=1e-12, atol=1e-12)
    assert_tree_allclose(fl.hessian(g, argnums=(0, 1), mode=mode, chunk_size=2)(a, b), ref,
                         rtol=1e-12, atol=1e-12)


def test_hessian_auto_is_fwd_over_rev_for_plain_functions():
    assert higher.resolve_hessian_mode(f, "auto", (x0(),)) == "fwd-over-rev"
    assert higher.resolve_hessian_mode(f, "rev-over-fwd", (x0(),)) == "rev-over-fwd"
    assert higher.resolve_hessian_mode(f) == "fwd-over-rev"


N_DENSE = 80   # n x n = 6400 elements: past the model's cache bound, the layout term counts
B_LOW = np.random.default_rng(3).normal(size=(4, N_DENSE)) / np.sqrt(N_DENSE)


def _dense_lowrank(x):       # tangents pass through B (dot_general): rev-over-rev wins
    return jnp.sum(jnp.sin(B_LOW @ x) ** 3)


def _rosenbrock(x):          # elementwise and banded: fwd-over-rev wins (ties break to it)
    return jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


@pytest.mark.parametrize("func, expected", [(_dense_lowrank, "rev-over-rev"),
                                            (_rosenbrock, "fwd-over-rev")])
def test_hessian_auto_prices_four_nestings_and_each_pure_nesting_can_win(x64, func, expected):
    from functorch_lite._planner import model

    x = jnp.linspace(-0.5, 0.7, N_DENSE)
    fl.clear_caches()
    plan = api.plan_hessian(func, (x,))
    assert plan.mode == expected and set(plan.costs) == set(MODES)
    fwd, rev = plan.terms["fwd-over-rev"], plan.terms["rev-over-rev"]
    assert fwd.passes == rev.passes == N_DENSE and fwd.per_pass == rev.per_pass
    # the one static term that separates them: the Hessian's transposed write, counted
    # only where a matrix product is active in the gradient program
    assert (fwd.extra > 0) == (expected == "rev-over-rev")
    assert fwd.extra == (model.layout_cost(N_DENSE, N_DENSE) if fwd.extra else 0.0)
    assert plan.costs["fwd-over-fwd"] > plan.costs[expected]       # n tangents inside
    # deterministic: a fresh closure on a cold cache gets the identical plan
    fl.clear_caches()
    again = api.plan_hessian(lambda v: func(v), (x,))
    assert again.mode == plan.mode and again.costs == plan.costs
    ref = np.asarray(jax.hessian(func)(x))
    np.testing.assert_allclose(np.asarray(fl.hessian(func)(x)), ref, rtol=1e-10, atol=1e-12)
    for mode in MODES:
        np.testing.assert_allclose(np.asarray(fl.hessian(func, mode=mode)(x)), ref,
                                   rtol=1e-10, atol=1e-12)


def test_explain_hessian_shows_the_four_priced_nestings_and_the_choice(x64):
    x = jnp.linspace(-0.5, 0.7, N_DENSE)
    r = fl.explain(_dense_lowrank, x, hessian=True, xla=False)
    text = str(r)
    assert r.hessian is api.plan_hessian(_dense_lowrank, (x,)) and r.chosen == "rev-over-rev"
    assert f"Hessian of R^{N_DENSE} -> R ({N_DENSE} x {N_DENSE})" in text
    for mode in MODES:
        assert [line for line in text.splitlines() if line.strip(" *").startswith(mode)], mode
    assert "* rev-over-rev" in text and "transposed write 6.4e+05" in text
    assert "chosen: rev-over-rev, by static cost model" in text
    with pytest.raises(ValueError, match=r"explain\(_dense_lowrank\): hessian=True explains"):
        fl.explain(_dense_lowrank, x, hessian=True, calibrate=True)
    with pytest.raises(TypeError, match=r"explain\(_dense_lowrank\): expected hessian to be True or False"):
        fl.explain(_dense_lowrank, x, hessian="yes")


def _reverse_only_sin():
    """``sin`` as a custom_vjp whose backward rule calls another custom_vjp (``cos``):
    forward mode cannot differentiate that backward pass."""
    @jax.custom_vjp
    def my_cos(x):
        return jnp.cos(x)

    my_cos.defvjp(lambda x: (jnp.cos(x), x), lambda x, c: (-c * jnp.sin(x),))

    @jax.custom_vjp
    def rev_sin(x):
        return jnp.sin(x)

    rev_sin.defvjp(lambda x: (jnp.sin(x), x), lambda x, c: (c * my_cos(x),))
    return rev_sin


def _reverse_only():
    """Only reverse-over-reverse can take the Hessian of this (see _reverse_only_sin)."""
    rev_sin = _reverse_only_sin()
    return lambda x: (rev_sin(x) * x).sum()


def test_hessian_auto_picks_rev_over_rev_for_reverse_only_rules(x64):
    g = _reverse_only()
    x = x0()
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        fl.hessian(g, mode="fwd-over-rev")(x)
    assert higher.resolve_hessian_mode(g, "auto", (x,)) == "rev-over-rev"
    ref = jax.hessian(lambda x: (jnp.sin(x) * x).sum())(x)
    np.testing.assert_allclose(np.asarray(fl.hessian(g)(x)), np.asarray(ref), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(jax.jit(fl.hessian(g, chunk_size=2))(x)), np.asarray(ref), rtol=1e-12)


def test_hessian_auto_picks_fwd_over_fwd_without_reverse_rule(x64):
    def g(x):       # a while_loop has no reverse rule
        body = lambda c: (c[0] + 1, jnp.sin(c[1]) * 1.1)  # noqa: E731
        return jax.lax.while_loop(lambda c: c[0] < 3, body, (0, x))[1].sum()

    x = x0()
    assert higher.resolve_hessian_mode(g, "auto", (x,)) == "fwd-over-fwd"
    ref = jax.jacfwd(jax.jacfwd(g))(x)
    np.testing.assert_allclose(np.asarray(fl.hessian(g)(x)), np.asarray(ref), rtol=1e-12)


def test_hessian_auto_probe_is_cached():
    def g(x):
        return (x ** 3).sum()

    x = jnp.ones(3)
    from functorch_lite import _caches

    fl.clear_caches()
    fl.hessian(g)(x)
    fl.hessian(g)(x + 1.0)
    assert _caches.sizes()["planner.hessian"][0] == 1      # same signature, one plan
    fl.hessian(g)(jnp.ones(5))
    assert _caches.sizes()["planner.hessian"][0] == 2      # two shapes, two entries
    plan = api.plan_hessian(g, (x,))
    assert plan is api.plan_hessian(g, (x + 2.0,)) and plan.mode == "fwd-over-rev"
    assert plan.probed == () and not plan.unsupported       # nothing doubtful: no probing


def test_hessian_auto_cache_key_covers_python_scalars(x64):
    # issue 13 item 10: a Python bool that switches to a while_loop (no reverse rule)
    # must be planned apart, not served the plan made for loop=False
    def f(x, loop):
        if loop:
            body = lambda c: (c[0] + 1, jnp.sin(c[1]) * 1.1)  # noqa: E731
            return jax.lax.while_loop(lambda c: c[0] < 3, body, (0, x))[1].sum()
        return jnp.sum(jnp.sin(x) * 1.1)

    x = x0()
    np.testing.assert_allclose(np.asarray(fl.hessian(f)(x, False)),
                               np.asarray(jax.hessian(f)(x, False)), rtol=1e-12)
    got = fl.hessian(f)(x, True)
    np.testing.assert_allclose(np.asarray(got), np.asarray(jax.jacfwd(jax.jacfwd(f))(x, True)),
                               rtol=1e-12)
    assert higher.resolve_hessian_mode(f, "auto", (x, True)) == "fwd-over-fwd"
    assert higher.resolve_hessian_mode(f, "auto", (x, False)) == "fwd-over-rev"


def test_hessian_auto_under_jit_and_user_errors_surface():
    np.testing.assert_allclose(np.asarray(jax.jit(fl.hessian(lambda x: (x ** 3).sum()))(jnp.ones(2))),
                               6 * np.eye(2))
    with pytest.raises(TypeError, match=r"hessian\(<lambda>\)\(\*args\): args\[0\] has dtype int"):
        fl.hessian(lambda x: x ** 2)(jnp.ones(2, int))
    with pytest.raises(ValueError, match=r"hessian\(<lambda>\)\(\*args\): argnums=1 is out of range"):
        fl.hessian(lambda x: x ** 2, argnums=1)(jnp.ones(2))
    # torch.func.hessian of a vector function is the Jacobian of its Jacobian
    np.testing.assert_allclose(np.asarray(fl.hessian(lambda x: x ** 3)(jnp.ones(2))),
                               np.asarray(jax.hessian(lambda x: x ** 3)(jnp.ones(2))))


def test_hessian_bad_mode_and_chunk():
    with pytest.raises(ValueError, match=r"hessian: unknown mode='fwd'; choose one of 'auto', 'fwd-over-rev'"):
        fl.hessian(f, mode="fwd")
    with pytest.raises(ValueError, match="hessian: chunk_size must be a positive int"):
        fl.hessian(f, chunk_size=0)


# ----------------------------------------------------------------------------- hvp / vhp


def test_hvp_equals_hessian_times_v(x64):
    x, v = x0(), jnp.array([1.0, -2.0, 0.5, 0.25])
    g, hv = fl.hvp(f, (x,), (v,))
    H = jax.hessian(f)(x)
    np.testing.assert_allclose(np.asarray(hv), np.asarray(H @ v), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(g), np.asarray(jax.grad(f)(x)), rtol=1e-12)
    g2, vh = fl.vhp(f, (x,), (v,))
    np.testing.assert_allclose(np.asarray(vh), np.asarray(v @ H), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(g2), np.asarray(g), rtol=1e-12)


def test_hvp_several_primals(x64):
    def g(a, b):
        return jnp.sum(jnp.tanh(a) * b ** 2) + (a @ b) ** 2

    a, b = jnp.array([0.1, -0.4, 0.7]), jnp.array([1.0, 0.5, -0.2])
    u, w = jnp.array([1.0, 0.0, 2.0]), jnp.array([-1.0, 1.0, 0.5])
    H = jax.hessian(g, argnums=(0, 1))(a, b)
    grads, (ha, hb) = fl.hvp(g, (a, b), (u, w))
    np.testing.assert_allclose(np.asarray(ha), np.asarray(H[0][0] @ u + H[0][1] @ w), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(hb), np.asarray(H[1][0] @ u + H[1][1] @ w), rtol=1e-12)
    assert_tree_allclose(grads, jax.grad(g, argnums=(0, 1))(a, b), rtol=1e-12)
    _, (va, vb) = fl.vhp(g, (a, b), (u, w))
    np.testing.assert_allclose(np.asarray(va), np.asarray(u @ H[0][0] + w @ H[1][0]), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(vb), np.asarray(u @ H[0][1] + w @ H[1][1]), rtol=1e-12)


def test_hvp_jit_and_vmap_over_tangents(x64):
    x = x0()
    V = jnp.arange(12.0).reshape(3, 4) / 7
    H = jax.hessian(f)(x)
    batched = jax.jit(jax.vmap(lambda v: fl.hvp(f, (x,), (v,))[1]))(V)
    np.testing.assert_allclose(np.asarray(batched), np.asarray(V @ H.T), rtol=1e-12)
    batched_vhp = jax.jit(jax.vmap(lambda v: fl.vhp(f, (x,), (v,))[1]))(V)
    np.testing.assert_allclose(np.asarray(batched_vhp), np.asarray(V @ H), rtol=1e-12)


def test_vhp_works_for_reverse_only_rules(x64):
    g, x, v = _reverse_only(), x0(), jnp.ones(4)
    ref = jax.hessian(lambda x: (jnp.sin(x) * x).sum())(x) @ v
    np.testing.assert_allclose(np.asarray(fl.vhp(g, (x,), (v,))[1]), np.asarray(ref), rtol=1e-12)


@pytest.mark.parametrize("transform", [fl.hvp, fl.vhp])
def test_hvp_bad_input(transform):
    t = transform.__name__
    x = jnp.ones(3)
    with pytest.raises(ValueError, match=rf"{t}\(f, primals, tangents\): tangents\[0\] has shape \(2,\) but "
                                         r"primals\[0\] has shape \(3,\)"):
        transform(f, (x,), (jnp.ones(2),))
    with pytest.raises(ValueError, match=r"got 1 primal\(s\) but 2 tangent\(s\)"):
        transform(f, (x,), (x, x))
    with pytest.raises(TypeError, match=r"expected primals to be a tuple, got ArrayImpl; wrap a single input"):
        transform(f, x, (x,))
    with pytest.raises(TypeError, match="tangents\\[0\\] has dtype float16 but primals\\[0\\] needs float32"):
        transform(f, (x,), (x.astype(jnp.float16),))
    with pytest.raises(ValueError, match=rf"{t}\(<lambda>, primals, tangents\): expected the function to return "
                                         r"a scalar, got shape \(3,\)"):
        transform(lambda x: x ** 2, (x,), (x,))
    with pytest.raises(TypeError, match=rf"{t}: expected func to be a callable"):
        transform(None, (x,), (x,))


# ----------------------------------------------------------------------------- hessian_diag


@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_hessian_diag_exact(x64, chunk_size):
    x = x0()
    got = fl.hessian_diag(f, chunk_size=chunk_size)(x)
    np.testing.assert_allclose(np.asarray(got), np.diag(np.asarray(jax.hessian(f)(x))), rtol=1e-12)


def test_hessian_diag_tuple_argnums_and_pytree(x64):
    def g(p, b):
        return jnp.sum(jnp.tanh(p["w"]) * b ** 3) + p["s"] ** 2 * b.sum()

    p, b = {"w": jnp.array([0.1, -0.4]), "s": jnp.array(0.5)}, jnp.array([1.0, 0.5])
    dp, db = fl.hessian_diag(g, argnums=(0, 1), chunk_size=2)(p, b)
    Hp = jax.hessian(g)(p, b)
    np.testing.assert_allclose(np.asarray(dp["w"]), np.diag(np.asarray(Hp["w"]["w"])), rtol=1e-12)
    np.testing.assert_allclose(float(dp["s"]), float(Hp["s"]["s"]), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(db), np.diag(np.asarray(jax.hessian(g, argnums=1)(p, b))), rtol=1e-12)
    only_b = jax.jit(fl.hessian_diag(g, argnums=1))(p, b)
    np.testing.assert_allclose(np.asarray(only_b), np.asarray(db), rtol=1e-12)


def test_hutchinson_exact_for_diagonal_hessian(x64):
    g = lambda x: (jnp.sin(x) * x ** 2).sum()  # noqa: E731 - separable: H is diagonal
    x = x0()
    est = fl.hessian_diag(g, method="hutchinson", key=jax.random.key(3), num_samples=2)(x)
    np.testing.assert_allclose(np.asarray(est), np.asarray(fl.hessian_diag(g)(x)), rtol=1e-12)


def test_hutchinson_converges(x64):
    x = x0()
    H = np.asarray(jax.hessian(f)(x))
    exact = np.diag(H)
    off = (H ** 2).sum(axis=1) - exact ** 2            # variance of one sample, per entry
    errors = {}
    for s in (16, 256, 4096):
        est = fl.hessian_diag(f, method="hutchinson", key=jax.random.key(0), num_samples=s, chunk_size=512)(x)
        errors[s] = np.abs(np.asarray(est) - exact)
        # within 5 standard deviations of the estimator, entry by entry
        assert np.all(errors[s] <= 5 * np.sqrt(off / s) + 1e-12), (s, errors[s], np.sqrt(off / s))
    assert errors[4096].max() < errors[256].max() < errors[16].max()
    assert errors[4096].max() < 0.1 * np.abs(exact).max()


def test_hutchinson_unbiased_over_keys(x64):
    x = x0()
    exact = np.diag(np.asarray(jax.hessian(f)(x)))
    ests = [np.asarray(fl.hessian_diag(f, method="hutchinson", key=jax.random.key(k), num_samples=1)(x))
            for k in range(4)]
    # single-sample estimates scatter; they are not all equal to the truth
    assert max(np.abs(e - exact).max() for e in ests) > 1e-3


def test_hessian_diag_bad_input():
    with pytest.raises(ValueError, match=r"hessian_diag: unknown method='hutch'; choose one of 'exact', 'hutchinson'"):
        fl.hessian_diag(f, method="hutch")
    with pytest.raises(ValueError, match=r"method='hutchinson' draws random probe vectors and needs a PRNG key; "
                                         r"pass key=jax.random.key\(0\)"):
        fl.hessian_diag(f, method="hutchinson")
    with pytest.raises(TypeError, match=r"hessian_diag: key must be one PRNG key \(jax.random.key\(seed\), or a raw uint32 key of shape \(2,\)\); got int"):
        fl.hessian_diag(f, method="hutchinson", key=0)
    with pytest.raises(ValueError, match="key is only used by method='hutchinson'"):
        fl.hessian_diag(f, key=jax.random.key(0))
    with pytest.raises(ValueError, match="hessian_diag: num_samples must be a positive int, got 0"):
        fl.hessian_diag(f, method="hutchinson", key=jax.random.key(0), num_samples=0)
    with pytest.raises(TypeError, match="hessian_diag: num_samples must be a positive int, got 2.5"):
        fl.hessian_diag(f, method="hutchinson", key=jax.random.key(0), num_samples=2.5)
    with pytest.raises(ValueError, match=r"hessian_diag\(<lambda>\)\(\*args\): expected the function to return a scalar"):
        fl.hessian_diag(lambda x: x ** 2)(jnp.ones(3))
    with pytest.raises(TypeError, match=r"hessian_diag\(f\)\(\*args\): args\[0\] has dtype int"):
        fl.hessian_diag(f)(jnp.ones(4, int))
    # raw uint32 keys work too
    fl.hessian_diag(f, method="hutchinson", key=jax.random.PRNGKey(0), num_samples=2)(jnp.ones(4))


# ----------------------------------------------------------------------------- mode-switching layers


def switching_layer():
    """Like functorch_lite.nn layers: a custom_vjp (here with a reverse-only backward
    rule), which switches to a custom_jvp forward rule inside forward_mode()."""
    from functorch_lite._mode import in_forward_mode

    rev = _reverse_only_sin()

    @jax.custom_jvp
    def fwd(x):
        return jnp.sin(x)

    fwd.defjvp(lambda p, t: (jnp.sin(p[0]), jnp.cos(p[0]) * t[0]))
    return lambda x: fwd(x) if in_forward_mode() else rev(x)


def test_switching_layer_under_hessian_hvp(x64):
    layer = switching_layer()
    g = lambda x: (layer(x) * x).sum()  # noqa: E731
    x, v = x0(), jnp.array([1.0, -1.0, 0.5, 2.0])
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jvp(jax.grad(g), (x,), (v,))          # raw JAX: no forward rule
    H = jax.hessian(lambda x: (jnp.sin(x) * x).sum())(x)
    assert higher.resolve_hessian_mode(g, "auto", (x,)) == "fwd-over-rev"
    for mode in ("auto",) + MODES:
        np.testing.assert_allclose(np.asarray(fl.hessian(g, mode=mode)(x)), np.asarray(H), rtol=1e-12,
                                   err_msg=mode)
    np.testing.assert_allclose(np.asarray(fl.hvp(g, (x,), (v,))[1]), np.asarray(H @ v), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(fl.vhp(g, (x,), (v,))[1]), np.asarray(v @ H), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(fl.hessian_diag(g, chunk_size=2)(x)), np.diag(np.asarray(H)),
                               rtol=1e-12)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # raised while torch imports
def test_against_torch_func(x64):
    torch = pytest.importorskip("torch")
    from torch.func import hessian as torch_hessian, jvp as torch_jvp, grad as torch_grad

    At = torch.tensor(A, dtype=torch.float64)

    def ft(x):
        return torch.sin(x) @ (At @ x) + torch.exp(0.3 * x).sum() * x[0] + (x ** 4).sum()

    x, v = x0(), jnp.array([1.0, -2.0, 0.5, 0.25])
    xt, vt = torch.tensor(np.asarray(x)), torch.tensor(np.asarray(v))
    H_torch = torch_hessian(ft)(xt).numpy()
    for mode in ("auto",) + MODES:
        np.testing.assert_allclose(np.asarray(fl.hessian(f, mode=mode)(x)), H_torch, rtol=1e-12, atol=1e-12)
    g_torch, hv_torch = torch_jvp(torch_grad(ft), (xt,), (vt,))      # torch.func's hvp recipe
    g, hv = fl.hvp(f, (x,), (v,))
    np.testing.assert_allclose(np.asarray(g), g_torch.numpy(), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(hv), hv_torch.numpy(), rtol=1e-12)


def test_plain_custom_vjp_runs_fwd_over_rev(x64):
    @jax.custom_vjp
    def my_sin(x):
        return jnp.sin(x)

    my_sin.defvjp(lambda x: (jnp.sin(x), x), lambda x, c: (c * jnp.cos(x),))
    g = lambda x: (my_sin(x) * x).sum()  # noqa: E731
    x = x0()
    assert higher.resolve_hessian_mode(g, "auto", (x,)) == "fwd-over-rev"
    ref = jax.hessian(lambda x: (jnp.sin(x) * x).sum())(x)
    np.testing.assert_allclose(np.asarray(fl.hessian(g)(x)), np.asarray(ref), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(fl.hvp(g, (x,), (jnp.ones(4),))[1]), np.asarray(ref @ jnp.ones(4)),
                               rtol=1e-12)
