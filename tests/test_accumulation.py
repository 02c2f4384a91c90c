"""jacobian(mode=...), chain() and its mixed-mode planner, explain()."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import functorch_lite as fl
from functorch_lite._planner import chain as planner
from functorch_lite import _jacobians as jac_mod
from functorch_lite._mode import in_forward_mode

from conftest import assert_tree_allclose

TIGHT = dict(rtol=1e-10, atol=1e-10)


def dense(key, n_in, n_out, act=jnp.tanh, name=None):
    """A stage x -> act(W x + b) with fixed random weights (float64 under x64)."""
    kw, kb = jax.random.split(key)
    W = jax.random.normal(kw, (n_out, n_in), dtype=jnp.float64) / math.sqrt(n_in)
    b = jax.random.normal(kb, (n_out,), dtype=jnp.float64)

    def stage(x):
        return act(W @ x + b)

    stage.__name__ = name or f"dense{n_in}to{n_out}"
    return stage


@jax.custom_vjp
def vjp_only_sin(x):
    return jnp.sin(x)


vjp_only_sin.defvjp(lambda x: (jnp.sin(x), jnp.cos(x)), lambda cos, g: (cos * g,))


# ------------------------------------------------------------------------- jacobian


def test_jacobian_modes_match_jax(x64):
    A = jax.random.normal(jax.random.key(0), (5, 3), dtype=jnp.float64)

    def f(x, y):
        return jnp.tanh(A @ x) * y

    x = jnp.linspace(0.1, 0.5, 3)
    y = jnp.linspace(1.0, 2.0, 5)
    for mode in ("auto", "fwd", "rev"):
        assert_tree_allclose(fl.jacobian(f, mode=mode)(x, y), jax.jacrev(f)(x, y), **TIGHT)
        assert_tree_allclose(fl.jacobian(f, (0, 1), mode=mode)(x, y),
                             jax.jacfwd(f, (0, 1))(x, y), **TIGHT)
        assert_tree_allclose(fl.jacobian(f, 1, mode=mode, chunk_size=2)(x, y),
                             jax.jacrev(f, 1)(x, y), **TIGHT)


def test_jacobian_has_aux(x64):
    def f(x):
        return x ** 2, {"sum": x.sum()}

    x = jnp.arange(1.0, 4.0)
    for mode in ("auto", "fwd", "rev"):
        jac, aux = fl.jacobian(f, mode=mode, has_aux=True)(x)
        np.testing.assert_allclose(jac, np.diag(2 * np.arange(1.0, 4.0)))
        assert float(aux["sum"]) == 6.0


@pytest.mark.parametrize("mode", ["auto", "fwd", "rev"])
def test_layouts_transpose_for_tensors(x64, mode):
    W = jax.random.normal(jax.random.key(1), (2, 3, 4, 5), dtype=jnp.float64)

    def f(x):  # (4, 5) -> (2, 3)
        return jnp.tanh(jnp.einsum("abij,ij->ab", W, x))

    x = jax.random.normal(jax.random.key(2), (4, 5), dtype=jnp.float64)
    num = fl.jacobian(f, mode=mode)(x)
    den = fl.jacobian(f, mode=mode, layout="denominator")(x)
    assert num.shape == (2, 3, 4, 5) and den.shape == (4, 5, 2, 3)
    np.testing.assert_allclose(den, np.transpose(np.asarray(num), (2, 3, 0, 1)), **TIGHT)
    np.testing.assert_allclose(num, jax.jacrev(f)(x), **TIGHT)


def test_auto_never_picks_forward_for_custom_vjp(x64):
    # Wide input, tiny output: forward would otherwise be out of the question anyway,
    # so use a tall function where sizes alone would say "forward".
    A = jax.random.normal(jax.random.key(3), (400, 2), dtype=jnp.float64)

    def f(x):
        return vjp_only_sin(A @ x)

    x = jnp.array([0.3, -0.2])
    with pytest.raises(TypeError, match="custom_vjp"):
        fl.jacobian(f, mode="fwd")(x)
    choice = jac_mod.choose_mode(f, (x,))
    # the program holds a custom_vjp, so forward mode was probed (by tracing) and failed
    assert choice.mode == "rev" and choice.source == "static cost model"
    assert "custom_vjp" in choice.unsupported["fwd"]
    assert math.isinf(choice.costs["fwd"])
    np.testing.assert_allclose(fl.jacobian(f)(x), np.cos(A @ x)[:, None] * A, **TIGHT)
    report = fl.explain(f, x)
    assert report.chosen == "rev"
    assert not report.candidate("fwd").supported
    assert "cannot run" in str(report) and "custom_vjp" in str(report)


def test_auto_probes_forward_inside_forward_mode(x64):
    # A layer in the style of functorch_lite.nn: reverse-only rule normally, a plain
    # (forward-capable) path when our forward-mode transforms trace it.
    def layer(x):
        return jnp.sin(x) if in_forward_mode() else vjp_only_sin(x)

    A = jax.random.normal(jax.random.key(4), (300, 2), dtype=jnp.float64)
    x = jnp.array([0.1, 0.2])
    choice = jac_mod.choose_mode(lambda x: layer(A @ x), (x,))
    assert choice.unsupported == {}
    assert choice.mode == "fwd"


def test_auto_picks_the_cheaper_mode_on_tall_and_wide():
    key = jax.random.key(5)
    k1, k2 = jax.random.split(key)
    tall_W = jax.random.normal(k1, (3000, 2))
    wide_W = jax.random.normal(k2, (2, 3000))

    def tall(x):
        return jnp.tanh(tall_W @ x)

    def wide(x):
        return jnp.tanh(wide_W @ x)

    tall_choice = jac_mod.choose_mode(tall, (jnp.ones(2),))
    wide_choice = jac_mod.choose_mode(wide, (jnp.ones(3000),))
    assert tall_choice.source == wide_choice.source == "static cost model"
    assert tall_choice.mode == "fwd", tall_choice.describe()
    assert wide_choice.mode == "rev", wide_choice.describe()
    # the static model's passes: n_in JVPs vs n_out VJPs of the same per-pass work, plus
    # forward's transposed write of the 3000 x 2 result (planner.model.layout_cost)
    from functorch_lite._planner import model
    layout = model.layout_cost(3000, 2)
    assert layout > 0
    assert tall_choice.costs["rev"] > 1000 * (tall_choice.costs["fwd"] - layout) / 2
    # opt-in calibration (compiled and timed) agrees on such clear cases
    assert jac_mod.choose_mode(tall, (jnp.ones(2),), policy="calibrate").mode == "fwd"
    assert jac_mod.choose_mode(wide, (jnp.ones(3000),), policy="calibrate").mode == "rev"


def test_auto_choice_is_cached_per_signature():
    calls = []

    def f(x):
        calls.append(1)  # counts traces
        return jnp.tanh(x)

    jac = fl.jacobian(f)
    jac(jnp.ones(3))
    traced = len(calls)
    first = jac_mod.choose_mode(f, (jnp.ones(3),))
    jac(jnp.ones(3) * 2.0)
    assert jac_mod.choose_mode(f, (jnp.ones(3),)) is first
    # the second call traced f once (its own jacobian), nothing for planning
    assert len(calls) - traced == 1
    other = jac_mod.choose_mode(f, (jnp.ones(4),))
    assert other is not first
    # inside jit, the plan is read from the traced program (no values needed)
    jitted = jax.jit(fl.jacobian(f))
    np.testing.assert_allclose(jitted(jnp.ones(5)), np.diag(1 - np.tanh(1.0) ** 2 * np.ones(5)),
                               rtol=1e-6)
    assert jac_mod.choose_mode(f, (jnp.ones(5),)).source == "static cost model"


def test_jacobian_bad_input():
    with pytest.raises(ValueError, match=r"jacobian: unknown mode='mixed'; choose one of 'auto', 'fwd', 'rev'"):
        fl.jacobian(jnp.sin, mode="mixed")
    with pytest.raises(ValueError, match=r"jacobian: unknown layout='row'"):
        fl.jacobian(jnp.sin, layout="row")
    with pytest.raises(TypeError, match=r"jacobian: expected func to be a callable"):
        fl.jacobian(3.0)
    with pytest.raises(ValueError, match=r"jacobian: chunk_size must be a positive int"):
        fl.jacobian(jnp.sin, chunk_size=0)
    with pytest.raises(TypeError, match=r"jacobian\(sin\)\(\*args\): args\[0\] has dtype int32"):
        fl.jacobian(jnp.sin)(jnp.arange(3))


# ------------------------------------------------------------------------- chain


def test_chain_calls_stage_one_first():
    f = fl.chain(lambda x: x + 1.0, lambda x: 2.0 * x)
    assert float(f(jnp.array(1.0))) == 4.0
    g = fl.chain(f, jnp.sin)  # nested chains flatten
    assert len(g) == 3


def test_chain_bad_input():
    with pytest.raises(ValueError, match=r"chain\(\): expected at least one stage"):
        fl.chain()
    with pytest.raises(TypeError, match=r"chain\(\.\.\.\): stage 2 is a float, not a callable"):
        fl.chain(jnp.sin, 2.0)
    W = jnp.ones((3, 5))

    def enc(x):
        return x[:4]

    def dec(z):
        return W @ z

    with pytest.raises(ValueError, match=r"stage 2 \(dec\) cannot take float32\[4\] from stage 1 "
                                         r"\(enc\): .*got \(5,\) and \(4,\)\. Make stage 1 \(enc\) return"):
        fl.jacobian(fl.chain(enc, dec))(jnp.ones(6))
    with pytest.raises(ValueError, match=r"stage 1 \(dec\) cannot take float32\[2\] from the chain's input"):
        fl.jacobian(fl.chain(dec))(jnp.ones(2))

    def pair(x):
        return x, x

    with pytest.raises(ValueError, match=r"stage 2 \(dec\) cannot take \(float32\[5\], float32\[5\]\) "
                                         r"from stage 1 \(pair\)"):
        fl.explain(fl.chain(pair, dec), jnp.ones(5))

    def to_int(x):
        return x.astype(jnp.int32)

    with pytest.raises(TypeError, match=r"stage 1 \(to_int\) returns int32\[5\]; every stage must "
                                        r"return floating-point"):
        fl.jacobian(fl.chain(to_int, jnp.sin))(jnp.ones(5))
    with pytest.raises(ValueError, match=r"has_aux=True is not supported for a chain"):
        fl.jacobian(fl.chain(jnp.sin), has_aux=True)
    with pytest.raises(TypeError, match=r"a chain takes exactly one positional argument"):
        fl.jacobian(fl.chain(jnp.sin))(jnp.ones(2), jnp.ones(2))
    with pytest.raises(ValueError, match=r"argnums=1 is out of range"):
        fl.jacobian(fl.chain(jnp.sin), argnums=1)(jnp.ones(2))


@pytest.mark.slow   # 12-17 s
@settings(max_examples=6, deadline=None)
@given(widths=st.lists(st.integers(1, 9), min_size=2, max_size=5), seed=st.integers(0, 2**16))
def test_mixed_mode_equals_pure_modes_on_random_chains(widths, seed):
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.key(seed), len(widths))
        stages = [dense(keys[k], widths[k], widths[k + 1]) for k in range(len(widths) - 1)]
        ch = fl.chain(*stages)
        x = jax.random.normal(keys[-1], (widths[0],), dtype=jnp.float64)
        want = jax.jit(jax.jacrev(ch))(x)   # jit: one compile instead of op-by-op dispatch
        np.testing.assert_allclose(jax.jit(fl.jacobian(ch))(x), want, **TIGHT)
        np.testing.assert_allclose(jax.jit(jax.jacfwd(ch))(x), want, **TIGHT)


def test_chunked_mixed_mode(x64):
    keys = jax.random.split(jax.random.key(13), 3)
    ch = fl.chain(dense(keys[0], 7, 2), dense(keys[1], 2, 9))
    x = jnp.linspace(-1.0, 1.0, 7)
    np.testing.assert_allclose(fl.jacobian(ch, chunk_size=3)(x), jax.jacfwd(ch)(x), **TIGHT)


def test_bottleneck_chain_is_planned_mixed_and_exact(x64):
    keys = jax.random.split(jax.random.key(7), 4)
    enc = fl.chain(dense(keys[0], 60, 60), dense(keys[1], 60, 3, act=lambda h: h))
    dec = fl.chain(dense(keys[2], 3, 60), dense(keys[3], 60, 60, act=lambda h: h))
    ch = fl.chain(enc, dec)
    x = jax.random.normal(keys[0], (60,), dtype=jnp.float64)
    plan = ch.plan(x)
    assert plan.kind == "mixed"
    assert plan.cost < min(plan.fwd_cost_total, plan.rev_cost_total) / 5
    counts = plan.passes()
    assert counts["jvp"] <= 2 * 3 and counts["vjp"] <= 2 * 3 and counts["matmul"] == 1
    np.testing.assert_allclose(fl.jacobian(ch)(x), jax.jacfwd(ch)(x), **TIGHT)
    np.testing.assert_allclose(jax.jit(fl.jacobian(ch))(x), jax.jacrev(ch)(x), **TIGHT)
    assert ch.plan(x) is plan  # remembered


def test_chain_with_pytrees_and_layouts(x64):
    W = jax.random.normal(jax.random.key(8), (4, 6), dtype=jnp.float64)

    def split(x):  # (2, 3) -> {"a": (4,), "b": scalar}
        v = W @ x.reshape(6)
        return {"a": jnp.tanh(v), "b": jnp.sum(v ** 2)}

    def merge(d):  # -> (2, 2)
        return (d["a"] * d["b"]).reshape(2, 2)

    ch = fl.chain(split, merge)
    x = jax.random.normal(jax.random.key(9), (2, 3), dtype=jnp.float64)
    want = jax.jacrev(ch)(x)
    assert want.shape == (2, 2, 2, 3)
    for mode in ("auto", "fwd", "rev"):
        np.testing.assert_allclose(fl.jacobian(ch, mode=mode)(x), want, **TIGHT)
        den = fl.jacobian(ch, mode=mode, layout="denominator")(x)
        np.testing.assert_allclose(den, np.transpose(np.asarray(want), (2, 3, 0, 1)), **TIGHT)
    (tup,) = fl.jacobian(ch, argnums=(0,))(x)
    np.testing.assert_allclose(tup, want, **TIGHT)

    def to_dict(x):  # pytree output at the end of the chain
        return {"u": x[:2], "v": x[2:] ** 2}

    ch2 = fl.chain(lambda x: jnp.tanh(W @ x), to_dict)
    y = jnp.linspace(-1.0, 1.0, 6)
    assert_tree_allclose(fl.jacobian(ch2)(y), jax.jacfwd(ch2)(y), **TIGHT)


@pytest.mark.slow   # 12-17 s
def test_chain_routes_around_a_reverse_only_stage(x64):
    # stage 2 has no forward mode: fwd is impossible, the plan must pull back through it.
    keys = jax.random.split(jax.random.key(10), 3)
    ch = fl.chain(dense(keys[0], 2, 30), vjp_only_sin, dense(keys[1], 30, 30))
    x = jnp.array([0.4, -0.7])
    plan = ch.plan(x)
    assert plan.kind == "rev" and "custom_vjp" in plan.unsupported["fwd"]
    np.testing.assert_allclose(fl.jacobian(ch)(x), jax.jacrev(ch)(x), **TIGHT)
    report = fl.explain(ch, x)
    assert not report.candidate("fwd").supported
    assert "custom_vjp" in report.candidate("fwd").reason
    assert math.isinf(report.stages[1].jvp_flops) and math.isfinite(report.stages[1].vjp_flops)
    # a reverse-only stage before a bottleneck: the mixed plan pulls back through it
    # (3 VJPs), never pushes forward
    ch = fl.chain(dense(keys[0], 40, 40), vjp_only_sin, dense(keys[1], 40, 3), dense(keys[2], 3, 40))
    x = jnp.linspace(-1.0, 1.0, 40)
    plan = ch.plan(x)
    assert plan.kind == "mixed" and plan.widths == [40, 3, 40], plan.describe()
    assert math.isinf(plan.chain.fwd_cost[0]) and math.isfinite(plan.chain.rev_cost[0])
    assert plan.bracketing() == "J2 · J1"
    np.testing.assert_allclose(fl.jacobian(ch)(x), jax.jacrev(ch)(x), **TIGHT)


# ------------------------------------------------------------------------- the planner


def _all_plan_costs(n, cf, cr, i, j):
    """Every plan's cost for the dense J_j..J_i, by exhaustive enumeration (j < i: the
    identity, free)."""
    if j < i:
        return [0.0]
    out = []
    for k in range(i - 1, j):
        seed = _all_plan_costs(n, cf, cr, i, k)
        out += [c + n[i - 1] * sum(cf[k + 1:j + 1]) for c in seed]
    for k in range(i, j + 1):
        seed = _all_plan_costs(n, cf, cr, k + 1, j)
        out += [c + n[j] * sum(cr[i:k + 1]) for c in seed]
    for k in range(i, j):
        for a in _all_plan_costs(n, cf, cr, i, k):
            for b in _all_plan_costs(n, cf, cr, k + 1, j):
                out.append(a + b + 2 * n[j] * n[k] * n[i - 1])
    return out


def _replay(step, n, cf, cr):
    """Recompute a Step tree's cost from scratch and check it is well formed."""
    if step is None:
        return 0.0
    if step.kind == "fwd":
        assert step.i - 1 <= step.k < step.j
        assert step.sub is None if step.k == step.i - 1 else (step.sub.i, step.sub.j) == (step.i, step.k)
        return _replay(step.sub, n, cf, cr) + n[step.i - 1] * sum(cf[step.k + 1:step.j + 1])
    if step.kind == "rev":
        assert step.i <= step.k <= step.j
        assert step.sub is None if step.k == step.j else (step.sub.i, step.sub.j) == (step.k + 1, step.j)
        return _replay(step.sub, n, cf, cr) + n[step.j] * sum(cr[step.i:step.k + 1])
    assert (step.left.i, step.left.j, step.right.i, step.right.j) == (step.k + 1, step.j, step.i, step.k)
    return (_replay(step.left, n, cf, cr) + _replay(step.right, n, cf, cr)
            + 2 * n[step.j] * n[step.k] * n[step.i - 1])


@settings(max_examples=60, deadline=None)
@given(widths=st.lists(st.integers(1, 300), min_size=2, max_size=5),
       data=st.data())
def test_planner_is_optimal_against_brute_force(widths, data):
    K = len(widths) - 1
    per_pass = st.floats(1.0, 1e6, allow_nan=False)
    cf = data.draw(st.lists(per_pass, min_size=K, max_size=K))
    cr = data.draw(st.lists(per_pass, min_size=K, max_size=K))
    plan = planner.plan_chain(widths, cf, cr)
    brute = min(_all_plan_costs(widths, [0.0] + cf, [0.0] + cr, 1, K))
    assert plan.cost == pytest.approx(brute, rel=1e-12)
    assert _replay(plan.root, widths, [0.0] + cf, [0.0] + cr) == pytest.approx(plan.cost, rel=1e-12)
    assert plan.cost <= min(plan.fwd_cost_total, plan.rev_cost_total) * (1 + 1e-12)


def test_planner_matches_the_classical_matrix_chain_order():
    # When every pass is very expensive, the cheapest plan materialises each J_k once
    # (in its cheaper mode) and then only the matrix-chain order matters: widths
    # 10, 100, 5, 50 -> (J3 (J2 J1)) costs 2*(10*100*5 + 10*5*50) vs 2*(100*5*50 + 10*100*50).
    widths = [10, 100, 5, 50]
    plan = planner.plan_chain(widths, [1e9] * 3, [1e9] * 3)
    assert plan.bracketing() == "J3 · (J2 · J1)"
    plan = planner.plan_chain([50, 5, 100, 10], [1e9] * 3, [1e9] * 3)
    assert plan.bracketing() == "(J3 · J2) · J1"
    assert planner.plan_chain([5, 50, 500], [1.0, 1.0], [1.0, 1.0]).kind == "fwd"
    assert planner.plan_chain([500, 50, 5], [1.0, 1.0], [1.0, 1.0]).kind == "rev"
    with pytest.raises(ValueError, match="plan_chain: need K \\+ 1 widths and K costs"):
        planner.plan_chain([3, 4], [1.0, 2.0], [1.0])


# ------------------------------------------------------------------------- explain


def test_explain_plain_function(x64):
    A = jax.random.normal(jax.random.key(11), (40, 3), dtype=jnp.float64)
    report = fl.explain(lambda x: jnp.tanh(A @ x), jnp.ones(3))
    assert (report.in_size, report.out_size) == (3, 40)
    assert report.in_shapes == ["float64[3]"] and report.out_shapes == ["float64[40]"]
    fwd, rev = report.candidate("fwd"), report.candidate("rev")
    assert fwd.passes == "3 JVPs" and rev.passes == "40 VJPs"
    assert fwd.flops > 0 and rev.flops > 0 and fwd.temp_bytes >= 0
    # the static model decides; no clock was read
    assert report.source == "static cost model" and math.isnan(fwd.seconds)
    assert report.chosen == "fwd" and fwd.static_cost < rev.static_cost
    assert sum(c.chosen for c in report.candidates) == 1
    text = str(report)
    for word in ("fwd", "rev", "FLOPs", "temp mem", "chosen:", "static cost model"):
        assert word in text
    timed = fl.explain(lambda x: jnp.tanh(A @ x), jnp.ones(3), calibrate=True, xla=False)
    assert timed.source == "calibration" and not math.isnan(timed.candidate("fwd").seconds)
    assert "ms" in str(timed)


def test_explain_chain_and_plot(x64, tmp_path):
    pytest.importorskip("matplotlib")
    keys = jax.random.split(jax.random.key(12), 3)
    ch = fl.chain(dense(keys[0], 50, 4, name="enc"), dense(keys[1], 4, 50, name="dec"),
                  dense(keys[2], 50, 50, name="head"))
    report = fl.explain(ch, jnp.ones(50))
    assert [s.name for s in report.stages] == ["enc", "dec", "head"]
    assert [(s.n_in, s.n_out) for s in report.stages] == [(50, 4), (4, 50), (50, 50)]
    assert report.source == "static cost model"
    # one cut pays (the 4-wide boundary after enc): two stages between the ends
    assert report.plan.kind == "mixed" and report.bracketing == "J2 · J1" and report.steps
    assert [c.width for c in report.cuts if c.position in report.plan.cuts] == [4]
    assert "after stage 1 (enc)" in str(report)
    plan = report.candidate("plan")
    assert plan.chosen and plan.flops < min(report.candidate("fwd").flops,
                                            report.candidate("rev").flops)
    assert report.predicted_flops["plan"] < report.predicted_flops["fwd"]
    text = str(report)
    assert "bracketing: " + report.bracketing in text and "enc" in text
    path = report.plot(str(tmp_path / "plan.png"))
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_explain_bad_input():
    with pytest.raises(TypeError, match=r"explain: expected func to be a callable, got float; "
                                        r"pass the function and then its arguments, e\.g\. explain\(f, x\)"):
        fl.explain(3.0, jnp.ones(2))
    with pytest.raises(TypeError, match=r"explain: expected func to be a callable, got int"):
        fl.explain(3, jnp.ones(2))      # issue 13 item 15: no "explain(int)(f)" suggestion
    # issue 13 item 12: an integer output is an error naming explain, not "chosen: rev"
    with pytest.raises(TypeError, match=r"explain\(<lambda>\): the output is int\d+; only "
                                        r"floating-point outputs can be differentiated"):
        fl.explain(lambda v: v.astype(int), jnp.ones(3))
    with pytest.raises(TypeError, match=r"explain\(sin\): expected calibrate to be True or False"):
        fl.explain(jnp.sin, jnp.ones(2), calibrate="yes")
    with pytest.raises(ValueError, match=r"explain\(sin\): argnums=2 is out of range"):
        fl.explain(jnp.sin, jnp.ones(2), argnums=2)


def test_chain_without_bottleneck_uses_the_cheaper_pure_mode(x64):
    keys = jax.random.split(jax.random.key(14), 2)
    ch = fl.chain(dense(keys[0], 20, 20), dense(keys[1], 20, 20))
    x = jnp.linspace(-1.0, 1.0, 20)
    assert ch.plan(x).kind in ("fwd", "rev")
    np.testing.assert_allclose(fl.jacobian(ch)(x), jax.jacrev(ch)(x), **TIGHT)
    report = fl.explain(ch, x)
    assert report.chosen in ("fwd", "rev") and report.source == "static cost model"
    assert any("no cut is narrower" in note for note in report.notes)
    assert [c.name for c in report.candidates] == ["fwd", "rev"]
    assert report.candidate(report.chosen).chosen


def test_auto_inside_jit_with_closed_over_tracers(x64):
    A = jax.random.normal(jax.random.key(15), (6, 3), dtype=jnp.float64)
    x = jnp.linspace(0.1, 0.3, 3)

    @jax.jit
    def outer(w):
        f = lambda x: jnp.tanh(w * (A @ x))      # closes over a tracer of `outer`
        ch = fl.chain(lambda x: w * x, lambda h: jnp.tanh(A @ h), lambda y: y[:2] * w)
        return fl.jacobian(f)(x), fl.jacobian(ch)(x)

    got_f, got_ch = outer(jnp.float64(1.5))
    want_f = jax.jacfwd(lambda x: jnp.tanh(1.5 * (A @ x)))(x)
    want_ch = jax.jacrev(lambda x: (jnp.tanh(A @ (1.5 * x)))[:2] * 1.5)(x)
    np.testing.assert_allclose(got_f, want_f, **TIGHT)
    np.testing.assert_allclose(got_ch, want_ch, **TIGHT)


def test_chain_scalar_input_and_output():
    ch = fl.chain(lambda x: jnp.stack([x, 2.0 * x]), lambda v: jnp.sum(v ** 2))
    assert float(fl.jacobian(ch)(1.5)) == pytest.approx(15.0)       # d(5 x^2)/dx = 10 x
    assert float(fl.jacobian(ch, mode="fwd")(jnp.float32(1.5))) == pytest.approx(15.0)
    assert fl.explain(ch, 1.5).in_size == 1
