"""The planner: cut finding on hand-built programs, the chain DP against brute force,
every plan's values against raw JAX in float64, determinism across fresh processes,
no strong references to user functions, and its error messages."""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import subprocess
import sys
import textwrap
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import functorch_lite as fl
from functorch_lite import _caches, _cost
from functorch_lite._jaxpr import cuts
from functorch_lite._planner import api, model
from functorch_lite._planner.chain import plan_chain
from functorch_lite._jacobians import choose_mode

from conftest import assert_tree_allclose

TIGHT = dict(rtol=1e-10, atol=1e-10)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def weights(seed, *shape):
    return jax.random.normal(jax.random.key(seed), shape, dtype=jnp.float64) / math.sqrt(shape[-1])


def analysis(f, *args):
    prog = cuts.flatten(jax.make_jaxpr(f)(*args))
    return prog, cuts.analyse(prog)


def plan_of(f, *args, **kw):
    return api.plan_jacobian(f, args, {}, 0, **kw)[0]


# ----------------------------------------------------------------------------- cut finder


def test_cut_finder_bottleneck(x64):
    W1, W2 = weights(0, 5, 30), weights(1, 30, 5)

    def f(x):
        return W2 @ jnp.tanh(W1 @ x)

    _, info = analysis(f, jnp.ones(30))
    assert info.widths == [30, 5, 5, 30]
    assert info.in_size == info.out_size == 30


def test_cut_finder_counts_the_residual_skip(x64):
    W1, W2 = weights(0, 5, 30), weights(1, 30, 5)

    def f(x):
        return x + W2 @ jnp.tanh(W1 @ x)      # the skip keeps x live across the middle

    _, info = analysis(f, jnp.ones(30))
    assert min(info.widths[1:-1]) == 35        # 5 (bottleneck) + 30 (skip): no narrow cut
    plan = plan_of(f, jnp.ones(30))
    assert plan.kind in ("fwd", "rev") and plan.candidates == ()
    assert any("no cut is narrower" in r for r in plan.reasons)


def test_cut_finder_parallel_branches_add_up(x64):
    A, B, C = weights(0, 3, 40), weights(1, 4, 40), weights(2, 40, 7)

    def f(x):
        a = jnp.tanh(A @ x)                    # two 3- and 4-wide branches, both live
        b = jnp.sin(B @ x)
        return C @ jnp.concatenate([a, b])

    _, info = analysis(f, jnp.ones(40))
    assert min(info.widths[1:-1]) == 7
    plan = plan_of(f, jnp.ones(40))
    assert 7 in [c.width for c in plan.candidates]


def test_cut_finder_ignores_constants_and_integer_values(x64):
    W = weights(0, 3, 50)
    big = jnp.arange(1000.0)                   # a closed-over constant: never active
    idx = jnp.arange(3)

    def f(x):
        h = jnp.tanh(W @ x) + big[:3]
        k = jnp.argmax(x)                       # integer: no tangent
        return jnp.outer(h[idx], h).ravel() * x[k]

    prog, info = analysis(f, jnp.ones(50))
    assert prog.consts                          # the constants are there...
    inner = info.widths[1:-1]
    assert min(inner) <= 3 + 50                 # ...but never counted in a width
    assert max(inner) < 1000


def test_cut_finder_pytrees_and_jit_subcalls(x64):
    W1, W2 = weights(0, 4, 20), weights(1, 20, 4)

    @jax.jit
    def inner(h):
        return jnp.tanh(h)

    def f(d):
        z = inner(W1 @ d["a"] + W1 @ d["b"])    # the 4-wide cut is inside a jitted call
        return {"u": W2 @ z, "v": (W2 @ z) ** 2}

    d = {"a": jnp.ones(20), "b": jnp.ones(20)}
    prog, info = analysis(lambda a, b: f({"a": a, "b": b}), d["a"], d["b"])
    assert "tanh" in info.names and "jit" not in info.names   # inlined
    assert info.in_size == 40 and info.out_size == 40
    assert min(info.widths[1:-1]) == 4


def test_control_flow_is_kept_whole_and_explained(x64):
    W1, W2 = weights(0, 3, 30), weights(1, 30, 3)

    def f(x):   # the bottleneck is inside the scan body: no top-level cut sees it
        def body(c, _):
            return W2 @ jnp.tanh(W1 @ c), None
        return jax.lax.scan(body, x, None, length=2)[0]

    x = jnp.linspace(-1, 1, 30)
    plan = plan_of(f, x)
    assert plan.kind in ("fwd", "rev")
    assert any("scan" in r and "kept whole" in r for r in plan.reasons), plan.reasons
    np.testing.assert_allclose(fl.jacobian(f)(x), jax.jacrev(f)(x), **TIGHT)
    report = fl.explain(f, x, xla=False)
    assert "kept whole" in str(report)


# ----------------------------------------------------------------------------- the DP


def _all_costs(n, cf, cr, pc, i, j):
    if j < i:
        return [0.0]
    out = []
    for k in range(i - 1, j):
        out += [c + n[i - 1] * sum(cf[k + 1:j + 1]) + sum(pc[k + 1:j + 1])
                for c in _all_costs(n, cf, cr, pc, i, k)]
    for k in range(i, j + 1):
        out += [c + n[j] * sum(cr[i:k + 1]) + sum(pc[i:k + 1])
                for c in _all_costs(n, cf, cr, pc, k + 1, j)]
    for k in range(i, j):
        for a in _all_costs(n, cf, cr, pc, i, k):
            for b in _all_costs(n, cf, cr, pc, k + 1, j):
                out.append(a + b + 2 * n[j] * n[k] * n[i - 1])
    return out


@settings(max_examples=40, deadline=None)
@given(widths=st.lists(st.integers(1, 400), min_size=2, max_size=7), data=st.data())
def test_dp_equals_brute_force_up_to_six_stages(widths, data):
    K = len(widths) - 1
    cost = st.floats(1.0, 1e6, allow_nan=False)
    cf = data.draw(st.lists(cost | st.just(math.inf), min_size=K, max_size=K))
    cr = data.draw(st.lists(cost, min_size=K, max_size=K))
    pc = data.draw(st.lists(st.floats(0.0, 1e5), min_size=K, max_size=K))
    plan = plan_chain(widths, cf, cr, pc)
    brute = min(_all_costs(widths, [0.0] + cf, [0.0] + cr, [0.0] + pc, 1, K))
    assert plan.cost == pytest.approx(brute, rel=1e-12)
    assert plan.cost <= min(plan.fwd_cost_total, plan.rev_cost_total) * (1 + 1e-12)


# ----------------------------------------------------------------------------- values


def autoencoder(n=60, b=3, seed=0):
    Ws = [weights(seed, n, n), weights(seed + 1, b, n), weights(seed + 2, n, b),
          weights(seed + 3, n, n)]

    def f(x):
        h = jnp.tanh(Ws[0] @ x)
        z = jnp.tanh(Ws[1] @ h)
        h = jnp.tanh(Ws[2] @ z)
        return Ws[3] @ h

    return f


def test_autoencoder_as_one_function_is_mixed_and_exact(x64):
    f = autoencoder()
    x = jnp.linspace(-1.0, 1.0, 60)
    plan = plan_of(f, x)
    assert plan.kind == "mixed" and plan.widths == [60, 3, 60], plan.describe()
    assert plan.cost < min(plan.costs["fwd"], plan.costs["rev"]) / 5
    report = fl.explain(f, x, xla=False)
    assert report.plan is plan                       # explain shows the plan that runs
    assert report.chosen == "plan" and "<= cut" in str(report)
    want = jax.jacrev(f)(x)
    np.testing.assert_allclose(fl.jacobian(f)(x), want, **TIGHT)
    np.testing.assert_allclose(jax.jit(fl.jacobian(f))(x), want, **TIGHT)
    np.testing.assert_allclose(fl.jacobian(f, chunk_size=2)(x), want, **TIGHT)
    den = fl.jacobian(f, layout="denominator")(x)
    np.testing.assert_allclose(den, np.asarray(want).T, **TIGHT)


def test_chain_gets_the_plan_of_the_composed_function(x64):
    f = autoencoder(seed=4)
    Ws = [weights(4, 60, 60), weights(5, 3, 60), weights(6, 60, 3), weights(7, 60, 60)]
    enc = lambda x: jnp.tanh(Ws[1] @ jnp.tanh(Ws[0] @ x))  # noqa: E731
    dec = lambda z: Ws[3] @ jnp.tanh(Ws[2] @ z)  # noqa: E731
    ch = fl.chain(enc, dec)
    x = jnp.linspace(-1.0, 1.0, 60)
    a, b = ch.plan(x), plan_of(f, x)
    assert (a.kind, a.widths, a.bracketing(), a.cuts) == (b.kind, b.widths, b.bracketing(), b.cuts)
    assert a.costs == b.costs
    np.testing.assert_allclose(fl.jacobian(ch)(x), jax.jacrev(f)(x), **TIGHT)


def test_mixed_with_pytrees_consts_aux_and_argnums(x64):
    W0, W1 = weights(3, 300, 300), weights(0, 2, 300)
    W2, W3 = weights(1, 100, 2), weights(2, 100, 2)
    offset = jnp.linspace(0.0, 1.0, 2)

    def f(params, scale):
        h = W1 @ jnp.tanh(W0 @ params["a"]) + W1 @ params["b"] * scale + offset
        z = jnp.sin(h)
        return {"y": jnp.tanh(W2 @ z), "w": (W3 @ z).reshape(4, 25)}, {"norm": jnp.sum(z ** 2)}

    p = {"a": jnp.linspace(-1, 1, 300), "b": jnp.linspace(0, 2, 300)}
    plan = api.plan_jacobian(f, (p, 1.5), {}, 0, has_aux=True)[0]
    assert plan.kind == "mixed" and plan.widths[:2] == [600, 2] and plan.widths[-1] == 200, plan.describe()
    got, aux = fl.jacobian(f, has_aux=True)(p, 1.5)
    want, want_aux = jax.jacrev(f, has_aux=True)(p, 1.5)
    assert_tree_allclose(got, want, **TIGHT)
    assert_tree_allclose(aux, want_aux, **TIGHT)
    got = fl.jacobian(lambda a, b: f({"a": a, "b": b}, 1.5)[0], argnums=(0, 1))(p["a"], p["b"])
    want = jax.jacfwd(lambda a, b: f({"a": a, "b": b}, 1.5)[0], argnums=(0, 1))(p["a"], p["b"])
    assert_tree_allclose(got, want, **TIGHT)


def test_mixed_under_jit_vmap_and_inside_grad(x64):
    f = autoencoder(n=30, b=2, seed=9)
    xs = jax.random.normal(jax.random.key(3), (2, 30), dtype=jnp.float64)
    assert plan_of(f, xs[0]).kind == "mixed"
    want = jax.vmap(jax.jacrev(f))(xs)
    np.testing.assert_allclose(jax.jit(jax.vmap(fl.jacobian(f)))(xs), want, **TIGHT)

    def loss(x):
        return jnp.sum(fl.jacobian(f)(x) ** 2)

    def ref(x):
        return jnp.sum(jax.jacrev(f)(x) ** 2)

    np.testing.assert_allclose(jax.jit(jax.grad(loss))(xs[0]), jax.grad(ref)(xs[0]), rtol=1e-9,
                               atol=1e-10)

    @jax.jit
    def closes_over_a_tracer(w, x):
        return fl.jacobian(lambda v: f(w * v))(x)

    np.testing.assert_allclose(closes_over_a_tracer(1.5, xs[1]),
                               jax.jacrev(lambda v: f(1.5 * v))(xs[1]), **TIGHT)


def run_variant(plan, kind, f, x):
    positions = tuple(c.position for c in plan.candidates)
    variant = dataclasses.replace(plan, kind=kind, cuts=positions if kind == "mixed" else ())
    return api.run_jacobian(variant, None, f, (x,), {}, 0, has_aux=False, chunk_size=None,
                            layout="numerator", where="test")


def _check_every_plan(n, b, m, seed, skip):
    # every candidate the planner could run (fwd, rev, and the DP's bracketing over the
    # cuts it found, whatever it chose) gives jax.jacrev's Jacobian
    with jax.enable_x64(True):
        A, B = weights(seed, b, n), weights(seed + 1, m, b)
        C = weights(seed + 2, m, n)

        def f(x):
            y = B @ jnp.tanh(A @ x)
            return jnp.sin(y + C @ x) if skip else jnp.sin(y)

        x = jax.random.normal(jax.random.key(seed), (n,), dtype=jnp.float64)
        plan = plan_of(f, x)
        want = jax.jit(jax.jacrev(f))(x)
        kinds = ["fwd", "rev"] + (["mixed"] if plan.candidates else [])
        assert bool(plan.candidates) == (not skip and b < min(n, m))
        for kind in kinds:
            got = jax.jit(lambda v, kind=kind: run_variant(plan, kind, f, v))(x)
            np.testing.assert_allclose(got, want, **TIGHT, err_msg=kind)


@pytest.mark.parametrize("skip", [False, True])
def test_every_plan_matches_jacrev_in_float64(skip):
    _check_every_plan(12, 2, 9, 5, skip)


@pytest.mark.slow
@settings(max_examples=20, deadline=None)
@given(n=st.integers(4, 40), b=st.integers(1, 4), m=st.integers(4, 40), seed=st.integers(0, 999),
       skip=st.booleans())
def test_every_plan_matches_jacrev_in_float64_property(n, b, m, seed, skip):
    _check_every_plan(n, b, m, seed, skip)


# ----------------------------------------------------------------------------- choices


def test_pure_choices_tall_wide_and_ties_are_static(x64, monkeypatch):
    def no_clock(*a, **k):
        raise AssertionError("the default planner must not time anything")

    monkeypatch.setattr(_cost, "race", no_clock)
    A = weights(0, 100, 100)
    square = lambda x: jnp.tanh(A @ x)  # noqa: E731
    p = plan_of(square, jnp.ones(100))       # equal FLOPs; fwd also writes 100 x 100 transposed
    assert p.kind == "rev" and p.costs["fwd"] - p.costs["rev"] == model.layout_cost(100, 100)
    B = weights(0, 40, 40)                   # 40 x 40 stays in cache: an exact tie, to fwd
    p = plan_of(lambda x: jnp.tanh(B @ x), jnp.ones(40))
    assert p.kind == "fwd" and p.costs["fwd"] == p.costs["rev"]
    tall = lambda x: jnp.tanh(weights(1, 300, 4) @ x)  # noqa: E731
    wide = lambda x: jnp.tanh(weights(2, 4, 300) @ x)  # noqa: E731
    assert plan_of(tall, jnp.ones(4)).kind == "fwd"
    assert plan_of(wide, jnp.ones(300)).kind == "rev"


def test_while_loop_rules_out_reverse_by_probing(x64):
    W = weights(0, 20, 3)

    def f(x):
        body = lambda c: (c[0] + 1, jnp.sin(c[1]))  # noqa: E731
        return jax.lax.while_loop(lambda c: c[0] < 2, body, (0, W @ x))[1]

    x = jnp.array([0.1, 0.2, 0.3])
    p = plan_of(jnp.flip, x)
    assert not p.unsupported
    p = plan_of(lambda v: f(v)[:2], x)     # 2 outputs: rev would be cheaper, but cannot run
    assert p.kind == "fwd" and "rev" in p.unsupported
    np.testing.assert_allclose(fl.jacobian(lambda v: f(v)[:2])(x), jax.jacfwd(lambda v: f(v)[:2])(x),
                               **TIGHT)


def test_calibrate_is_opt_in_and_refuses_tracers(x64):
    A = weights(0, 50, 3)
    f = lambda x: jnp.tanh(A @ x)  # noqa: E731
    x = jnp.ones(3)
    plan = plan_of(f, x, calibrate=True)
    assert plan.source == "calibration" and set(plan.seconds) == {"fwd", "rev"}
    np.testing.assert_allclose(fl.jacobian(f, calibrate=True)(x), jax.jacfwd(f)(x), **TIGHT)
    with pytest.raises(ValueError, match=r"jacobian\(<lambda>\)\(\*args\): calibrate=True times "
                                         r"the candidate programs on the arguments, but args\[0\] "
                                         r"is a tracer"):
        jax.jit(fl.jacobian(lambda v: f(v) * 2.0, calibrate=True))(x)
    jax.jit(fl.jacobian(f, calibrate=True))(x)   # calibrated already: the plan is reused
    with pytest.raises(ValueError, match=r"closes over a tracer"):
        jax.jit(lambda w: fl.jacobian(lambda v: w * f(v), calibrate=True)(x))(2.0)
    with pytest.raises(ValueError, match=r"jacobian: calibrate=True times the candidates of "
                                         r"mode='auto'"):
        fl.jacobian(f, mode="rev", calibrate=True)
    with pytest.raises(TypeError, match=r"jacobian: expected calibrate to be True or False"):
        fl.jacobian(f, calibrate=1)


def test_bad_input_names_the_transform_and_argument():
    with pytest.raises(ValueError, match=r"choose_mode: unknown policy='clock'; choose one of "
                                         r"'static', 'calibrate', 'sizes'"):
        choose_mode(jnp.sin, (jnp.ones(2),), policy="clock")
    with pytest.raises(ValueError, match=r"jacobian: unknown mode='mixed'"):
        fl.jacobian(jnp.sin, mode="mixed")
    with pytest.raises(ValueError, match=r"hessian: unknown mode='rev-rev'"):
        fl.hessian(jnp.sum, mode="rev-rev")
    with pytest.raises(TypeError, match=r"jacobian\(<lambda>\)\(\*args\): the output is int32; "
                                        r"only floating-point outputs"):
        fl.jacobian(lambda v: v.astype(jnp.int32))(jnp.ones(3))
    with pytest.raises(TypeError, match=r"explain\(<lambda>\): the output\[1\] is int32"):
        fl.explain(lambda v: (v, v.astype(jnp.int32)), jnp.ones(3))
    with pytest.raises(ValueError, match=r"jacobian\(<lambda>\)\(\*args\): expected f to return "
                                         r"at least one array, got None"):
        fl.jacobian(lambda v: None)(jnp.ones(3))
    with pytest.raises(ValueError, match=r"explain\(<lambda>\): expected f to return at least one array, got a dict"):
        fl.explain(lambda v: {}, jnp.ones(3))


# ----------------------------------------------------------------------------- caching


def test_plans_are_cached_without_holding_the_function():
    def f(x):
        return jnp.tanh(jnp.outer(x, x)).ravel()

    fl.clear_caches()
    x = jnp.ones(3)
    fl.jacobian(f)(x)
    first = choose_mode(f, (x,))
    assert choose_mode(f, (x + 1.0,)) is first                     # values do not matter
    assert choose_mode(f, (jnp.ones(4),)).in_size == 4            # shapes do
    assert _caches.sizes()["planner.jacobian"][0] == 2
    ref = weakref.ref(f)
    del f
    gc.collect()
    assert ref() is None                                          # no strong reference left
    assert _caches.sizes()["planner.jacobian"][0] == 0            # and the entries went with it
    g = lambda x: x * 2.0  # noqa: E731
    fl.jacobian(g)(x)
    fl._jacobians.clear_plan_cache()
    assert _caches.sizes()["planner.jacobian"][0] == 0


def test_a_changed_program_is_planned_again(x64):
    state = {"narrow": True}
    W1, W2 = weights(0, 2, 30), weights(1, 30, 2)

    def f(x):   # impure on purpose: the program depends on a global flag
        return W2 @ jnp.tanh(W1 @ x) if state["narrow"] else jnp.tanh(x) * 2.0

    x = jnp.linspace(-1, 1, 30)
    np.testing.assert_allclose(fl.jacobian(f)(x), jax.jacrev(f)(x), **TIGHT)
    state["narrow"] = False
    np.testing.assert_allclose(fl.jacobian(f)(x), jax.jacrev(f)(x), **TIGHT)


# ----------------------------------------------------------------------------- determinism

_HLO_SCRIPT = textwrap.dedent("""
    import hashlib, sys, jax, jax.numpy as jnp
    import functorch_lite as fl
    k = jax.random.split(jax.random.key(0), 4)
    n_in, n_out = 100, 100        # a near-tie of fwd and rev
    A = jax.random.normal(k[0], (n_out, n_in)); B = jax.random.normal(k[1], (n_out, n_out))
    near_tie = lambda x: B @ jnp.tanh(A @ x)
    W0 = jax.random.normal(k[2], (300, 300)); W1 = jax.random.normal(k[3], (4, 300))
    W2 = jax.random.normal(k[0], (300, 4))
    bottleneck = lambda x: W2 @ jnp.tanh(W1 @ jnp.tanh(W0 @ x))
    for f, n in ((near_tie, n_in), (bottleneck, 300)):
        text = jax.jit(fl.jacobian(f)).lower(jnp.ones(n)).as_text()
        print(hashlib.sha256(text.encode()).hexdigest(), fl._jacobians.choose_mode(f, (jnp.ones(n),)).kind)
""")


def test_same_hlo_for_fresh_closures_in_one_process():
    A = jax.random.normal(jax.random.key(0), (100, 100))
    texts = []
    for _ in range(2):
        fl.clear_caches()
        f = lambda x, A=A: A @ jnp.tanh(A @ x)  # noqa: E731 - a new function each time
        texts.append(jax.jit(fl.jacobian(f)).lower(jnp.ones(100)).as_text())
    assert texts[0] == texts[1]


@pytest.mark.slow
def test_same_plan_and_hlo_in_fresh_processes():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_PLATFORMS="cpu")
    outs = [subprocess.run([sys.executable, "-c", _HLO_SCRIPT], capture_output=True, text=True,
                           env=env, cwd=ROOT, timeout=300, check=True).stdout
            for _ in range(3)]
    assert outs[0] == outs[1] == outs[2], outs
    kinds = [line.split()[1] for line in outs[0].splitlines()]
    # the near-tie goes to rev: fwd would write its 100 x 100 result transposed after a
    # matmul (the model's transposed-write term); the bottleneck is found as mixed
    assert kinds == ["rev", "mixed"]


def test_model_constants_are_documented():
    assert 0 < model.PAY < 1 and model.MAX_CUTS >= 2 and model.STEP_OVERHEAD > 0


# ----------------------------------------------------------------------------- layout, store, sparse


def test_exact_flop_tie_with_a_large_result_goes_to_reverse(x64):
    # residual block: n = m = 400, the same FLOPs both ways; forward also writes the
    # 400 x 400 result transposed (layout_cost), reverse stores a few small values
    k1, k2 = jax.random.split(jax.random.key(0))
    W1, W2 = jax.random.normal(k1, (6, 400)), jax.random.normal(k2, (400, 6))
    f = lambda x: x + W2 @ jnp.tanh(W1 @ x)  # noqa: E731
    x = jnp.linspace(-1.0, 1.0, 400)
    plan = api.plan_jacobian(f, (x,))[0]
    assert plan.kind == "rev" and plan.costs["fwd"] - plan.costs["rev"] == pytest.approx(
        model.layout_cost(400, 400) - model.store_cost(cuts.analyse(cuts.flatten(jax.make_jaxpr(f)(x)), 1).stored))
    np.testing.assert_allclose(np.asarray(fl.jacobian(f)(x)), np.asarray(jax.jacrev(f)(x)), rtol=1e-12)
    # small results stay in cache: no layout cost, the tie goes to forward as before
    assert model.layout_cost(60, 60) == 0.0 and model.layout_cost(100, 100) > 0


@pytest.mark.parametrize("case", ["batched", "wide layer"])
def test_planner_picks_sparse_for_a_sparse_jacobian_and_returns_dense(x64, case):
    # a batch of samples through one layer: block-diagonal, the dense plans large enough
    # (>= DETECT_MIN) that detecting and coloring the pattern pays
    batch, n_in, n_out = (48, 32, 64) if case == "batched" else (24, 64, 96)
    W = jax.random.normal(jax.random.key(1), (n_out, n_in))
    f, x = (lambda X: jnp.tanh(X @ W.T)), jax.random.normal(jax.random.key(2), (batch, n_in))
    plan = api.plan_jacobian(f, (x,))[0]
    info = cuts.analyse(cuts.flatten(jax.make_jaxpr(f)(x)), 1)
    assert model.may_be_sparse(info) and plan.kind == "sparse"
    assert min(plan.costs["fwd"], plan.costs["rev"]) >= model.DETECT_MIN
    assert plan.costs["sparse"] <= model.PAY * min(plan.costs["fwd"], plan.costs["rev"])
    J = fl.jacobian(f)(x)
    assert isinstance(J, jax.Array) and J.shape == jax.jacrev(f)(x).shape     # dense, as asked
    np.testing.assert_allclose(np.asarray(J), np.asarray(jax.jacrev(f)(x)), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(jax.jit(fl.jacobian(f))(x)), np.asarray(jax.jacfwd(f)(x)),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("zeros", [False, True], ids=["axis map", "index sets"])
def test_sparse_plan_reads_the_pattern_once_from_the_planners_trace(x64, monkeypatch, zeros):
    # planning detects the pattern in the program it traced, and the run of the same call
    # reuses it: one detection per call, none of a second trace; has_aux's outputs are
    # left out of the pattern (rows of the first output only). A dense W: the axis map
    # reads it; zeros in W: the axis map declines and the index sets read it.
    from functorch_lite._sparse import driver
    calls = {"blocks": 0, "index sets": 0}

    def counted(name, real):
        def wrapper(*a, **k):
            calls[name] += 1
            return real(*a, **k)
        return wrapper

    monkeypatch.setattr(driver, "block_pattern", counted("blocks", driver.block_pattern))
    monkeypatch.setattr(driver, "jacobian_pattern", counted("index sets", driver.jacobian_pattern))
    W = jax.random.normal(jax.random.key(1), (64, 32))
    if zeros:
        W = W.at[::3, 1::2].set(0.0)
    expected = {"blocks": 1, "index sets": int(zeros)}
    x = jax.random.normal(jax.random.key(2), (48, 32))
    f = lambda X: (jnp.tanh(X @ W.T), {"norm": jnp.sum(X ** 2), "h": X * 2.0})  # noqa: E731
    fl.clear_caches()
    J, aux = fl.jacobian(f, has_aux=True)(x)
    assert calls == expected and api.plan_jacobian(f, (x,), has_aux=True)[0].kind == "sparse"
    ref = jax.jacrev(lambda X: f(X)[0])(x)
    np.testing.assert_allclose(np.asarray(J), np.asarray(ref), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(aux["h"]), np.asarray(x) * 2.0)
    calls.update(blocks=0, **{"index sets": 0})
    fl.clear_caches()
    J = jax.jit(fl.jacobian(lambda X: f(X)[0]))(x)                  # under jit: the same
    assert calls == expected
    np.testing.assert_allclose(np.asarray(J), np.asarray(ref), rtol=1e-12, atol=1e-14)


def test_cached_sparse_plan_reads_a_changed_program_again(x64):
    # the plan is cached on the function; its constants changed (zero columns of W filled
    # in), so the old pattern would miss nonzeros: the run reads the program again
    params = {"W": jax.random.normal(jax.random.key(1), (64, 32)).at[:, ::2].set(0.0)}
    f = lambda X: jnp.tanh(X @ params["W"].T)  # noqa: E731
    x = jax.random.normal(jax.random.key(2), (48, 32))
    fl.clear_caches()
    np.testing.assert_allclose(np.asarray(fl.jacobian(f)(x)), np.asarray(jax.jacrev(f)(x)),
                               rtol=1e-12, atol=1e-14)      # planned, and run on its pattern
    assert api.plan_jacobian(f, (x,))[0].kind == "sparse"
    params["W"] = jax.random.normal(jax.random.key(3), (64, 32))
    assert api.plan_jacobian(f, (x,))[0].kind == "sparse"          # from the cache
    np.testing.assert_allclose(np.asarray(fl.jacobian(f)(x)), np.asarray(jax.jacrev(f)(x)),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("n", [500, 2000])
def test_small_dense_plans_skip_detection(x64, n):
    # elementwise n -> n: the bound says sparse, but the dense plan (n fused JVPs,
    # no matrix product: no transposed-write term, the tie goes to forward) costs less
    # than DETECT_MIN, less than detecting and coloring the pattern would
    f, x = (lambda x: jnp.sin(x) * x), jnp.linspace(-1.0, 1.0, n)
    info = cuts.analyse(cuts.flatten(jax.make_jaxpr(f)(x)), 1)
    plan = api.plan_jacobian(f, (x,))[0]
    assert model.may_be_sparse(info) and not model.may_be_sparse(info, plan.cost)
    assert plan.kind == "fwd" and "sparse" not in plan.costs and plan.cost < model.DETECT_MIN
    assert plan.costs["fwd"] == plan.costs["rev"]        # no layout term without a matmul
    np.testing.assert_allclose(np.asarray(fl.jacobian(f)(x)), np.asarray(jax.jacrev(f)(x)),
                               rtol=1e-12, atol=1e-14)


def test_dependency_bound_skips_detection_for_dense_programs(x64):
    A = jax.random.normal(jax.random.key(3), (50, 50))
    info = cuts.analyse(cuts.flatten(jax.make_jaxpr(lambda x: jnp.tanh(A @ x))(jnp.ones(50))), 1)
    assert info.deps == 50 and not model.may_be_sparse(info)
    plan = api.plan_jacobian(lambda x: jnp.tanh(A @ x), (jnp.ones(50),))[0]
    assert plan.kind != "sparse" and "sparse" not in plan.costs
    band = cuts.analyse(cuts.flatten(jax.make_jaxpr(lambda x: x[1:] * x[:-1])(jnp.ones(50))), 1)
    assert band.deps == 2


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_low_precision_values_are_active(dtype):
    # bfloat16 is an ml_dtypes type: np.issubdtype(bfloat16, np.inexact) is False, and an
    # analysis that asked numpy saw no active value (cut widths 0, no tangent work)
    k1, k2 = jax.random.split(jax.random.key(5))
    W1 = jax.random.normal(k1, (4, 200)).astype(dtype)
    W2 = jax.random.normal(k2, (200, 4)).astype(dtype)
    f = lambda x: W2 @ jnp.tanh(W1 @ x)  # noqa: E731
    x = jnp.linspace(-1.0, 1.0, 200).astype(dtype)
    info = cuts.analyse(cuts.flatten(jax.make_jaxpr(f)(x)), 1)
    assert info.widths == [200, 4, 4, 200] and sum(info.tangent) > 0 and info.active_out == 200
    J = fl.jacobian(f)(x)
    assert J.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 1e-2      # the same ops, rounded in dtype
    np.testing.assert_allclose(np.asarray(J, np.float32), np.asarray(jax.jacrev(f)(x), np.float32),
                               rtol=tol, atol=tol)
