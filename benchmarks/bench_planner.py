"""The planner: static ``mode="auto"`` against the pure modes, what planning costs, Hessians.

1. Autoencoder ``R^n -> R^8 -> R^n`` (two tanh layers each side, hidden width ``n``)
   written as ONE function: ``jacobian(f)`` (the planner finds the 8-wide cut) against
   ``jax.jacfwd``/``jax.jacrev`` and against ``jacobian(chain(encoder, decoder))``.
   Target: >= 20x the better pure mode (aim: equal to ``chain()``).
2. A sweep of functions (tall, wide, square, near-tie, bottleneck, residual, pytree,
   batched, ...): ``jax.jit(fl.jacobian(f))`` against the better of ``jax.jacfwd`` and
   ``jax.jacrev``. Target: within 1.10x everywhere, ahead where a cut pays. Planning
   time (``plan_jacobian`` on a cold cache: one ``jax.make_jaxpr`` plus reading the
   program) in its own column, against one ``jax.make_jaxpr`` of the function.
   Target: <= 1.3x one trace.
3. Eager use with a new lambda every call (``fl.jacobian(lambda x: jnp.tanh(A @ x))(x)``,
   A 300 x 300) against ``jax.jacrev`` the same way. Target: <= 1.3x.
4. Hessians: ``hessian(mode="auto")`` against each fixed nesting, under ``jax.jit``.

Run: ``python -m benchmarks --only planner [--quick]``.
"""

from __future__ import annotations

import math
import statistics
import time

import jax
import jax.numpy as jnp

import functorch_lite as fl
from functorch_lite._planner import api

from . import harness
from .harness import Row, interleaved


def _w(key, n_out, n_in):
    return jax.random.normal(key, (n_out, n_in)) / math.sqrt(n_in)


def autoencoder(n, b, seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    W1, W2, W3, W4 = _w(k[0], n, n), _w(k[1], b, n), _w(k[2], n, b), _w(k[3], n, n)

    def encoder(x):
        return jnp.tanh(W2 @ jnp.tanh(W1 @ x))

    def decoder(z):
        return W4 @ jnp.tanh(W3 @ z)

    def f(x):
        return decoder(encoder(x))

    return f, encoder, decoder


def _mlp(seed, sizes, residual=False):
    keys = jax.random.split(jax.random.key(seed), len(sizes))
    Ws = [_w(keys[i], sizes[i + 1], sizes[i]) for i in range(len(sizes) - 1)]

    def f(x):
        h = x
        for W in Ws[:-1]:
            h = jnp.tanh(W @ h)
        out = Ws[-1] @ h
        return x + out if residual else out

    return f


def sweep_functions(quick: bool) -> list[tuple[str, object, object]]:
    s = 2 if quick else 1
    k = jax.random.split(jax.random.key(7), 8)
    fs = []
    fs.append(("tall 8->800", _mlp(1, [8, 256, 800 // s]), jnp.ones(8)))
    fs.append(("wide 800->8", _mlp(2, [800 // s, 256, 8]), jnp.ones(800 // s)))
    fs.append(("square 300->300", _mlp(3, [300 // s, 300 // s, 300 // s]), jnp.ones(300 // s)))
    fs.append(("near-tie 100->100", _mlp(4, [100, 256, 256, 100]), jnp.ones(100)))
    fs.append(("near-tie 120->90", _mlp(5, [120, 256, 90]), jnp.ones(120)))
    n = 1000 // s
    fs.append((f"bottleneck {n}->8->{n}", autoencoder(n, 8, seed=6)[0], jnp.ones(n) * 0.1))
    fs.append((f"narrow middle {n // 2}->4->{n // 2}",
               _mlp(7, [n // 2, n // 2, 4, n // 2, n // 2]), jnp.ones(n // 2) * 0.1))
    fs.append(("residual 400 (skip widens the cut)", _mlp(8, [400 // s, 6, 400 // s], residual=True),
               jnp.ones(400 // s)))
    Wa, Wb, Wc = _w(k[0], 6, 300), _w(k[1], 6, 300), _w(k[2], 300, 6)

    def pytree(d):
        z = jnp.tanh(Wa @ jnp.tanh(d["a"]) + Wb @ d["b"])
        return {"u": Wc @ z, "v": jnp.sin(Wc @ z)}

    fs.append(("pytree {300,300}->6->{300,300}", pytree, {"a": jnp.ones(300), "b": jnp.ones(300)}))
    Wx = _w(k[3], 64, 32)

    def batched(X):     # a batch of samples through one layer: block-diagonal
        return jnp.tanh(X @ Wx.T)

    fs.append(("batched 16x32->16x64", batched, jnp.ones((16, 32))))
    # the same layer over 48 samples: the dense plans cost >= DETECT_MIN, so the planner
    # detects and colors the block-diagonal pattern (its preparation is timed apart)
    fs.append(("batched 48x32->48x64 (sparse)", batched, jnp.ones((48, 32))))
    Wl = _w(k[4], 256, 1000 // s)
    fs.append(("scalar loss 1000->1", lambda x: jnp.sum(jnp.tanh(Wl @ x) ** 2), jnp.ones(1000 // s)))
    enc_j = jax.jit(lambda x, W=_w(k[5], 8, 600 // s), V=_w(k[6], 600 // s, 600 // s): jnp.tanh(W @ jnp.tanh(V @ x)))
    Wd = _w(k[7], 600 // s, 8)
    fs.append(("jitted sub-call bottleneck 600->8->600", lambda x: Wd @ enc_j(x), jnp.ones(600 // s)))
    fs.append(("elementwise 500->500", lambda x: jnp.sin(x) * x, jnp.ones(500)))
    return fs


def _median_time(fn, reps):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def planning_seconds(f, x, reps, warmup=3):
    """Cold-cache planning of a fresh function (a new closure over ``f``, as a new lambda
    per call would be) against one ``jax.make_jaxpr`` of a fresh closure (JAX caches the
    trace of a function object it has seen, so re-tracing ``f`` itself would time a cache
    hit), run in adjacent pairs: the medians of each, and the median of the pairs' ratios
    (each pair shares the machine's state of the moment, so drift and a neighbour's load
    cancel in it). ``warmup`` pairs first, not counted."""
    plan_t, trace_t = [], []
    for _ in range(warmup + reps):
        fl.clear_caches()
        t0 = time.perf_counter()
        jax.make_jaxpr(lambda v: f(v))(x)
        t1 = time.perf_counter()
        api.plan_jacobian(lambda v: f(v), (x,), {}, 0)
        t2 = time.perf_counter()
        trace_t.append(t1 - t0)
        plan_t.append(t2 - t1)
    plan_t, trace_t = plan_t[warmup:], trace_t[warmup:]
    ratio = statistics.median(p / t for p, t in zip(plan_t, trace_t))
    return statistics.median(plan_t), statistics.median(trace_t), ratio


def sparse_preparation_seconds(f, x, reps):
    """Median cold-cache time of what a sparse plan adds to planning: detecting the
    pattern in the program the planner traced, and coloring it (the planner's own calls,
    on a program traced beforehand)."""
    from functorch_lite import _sparse

    ts = []
    for _ in range(reps):
        fl.clear_caches()
        closed = jax.make_jaxpr(lambda v: f(v))(x)
        t0 = time.perf_counter()
        _sparse.program_pattern(closed, "f").plan("auto")
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def sweep(quick: bool) -> list[Row]:
    rows = []
    reps = 7 if quick else 21
    for name, f, x in sweep_functions(quick):
        plan = api.plan_jacobian(f, (x,), {}, 0)[0]
        contenders = {"auto": jax.jit(fl.jacobian(f)), "jax.jacfwd": jax.jit(jax.jacfwd(f)),
                      "jax.jacrev": jax.jit(jax.jacrev(f))}
        for g in contenders.values():
            jax.block_until_ready(g(x))
        times = interleaved({k: (lambda g=g: g(x)) for k, g in contenders.items()}, reps=reps)
        best = min(times["jax.jacfwd"], times["jax.jacrev"])
        same = ""   # a pure plan should compile to raw JAX's program: then auto/best is noise
        if plan.kind in ("fwd", "rev"):
            peer = "jax.jacfwd" if plan.kind == "fwd" else "jax.jacrev"
            ops = [harness.hlo_ops(contenders[k].lower(x).compile()) for k in ("auto", peer)]
            same = f"; {'same' if ops[0] == ops[1] else 'DIFFERENT'} optimized HLO as {peer}"
        plan_s, trace_s, ratio = planning_seconds(f, x, 21 if quick else 51)
        prep = ""
        if plan.kind == "sparse":
            prep_s = sparse_preparation_seconds(f, x, 5 if quick else 15)
            prep = (f"; of it, sparse detection + coloring {prep_s * 1e3:.2f} ms, the rest "
                    f"{(plan_s - prep_s) * 1e3:.2f} ms = {(plan_s - prep_s) / trace_s:.2f}x the trace")
        rows.append(Row(
            group="planner", job=f"auto: {name}", unit="s", ours=times["auto"],
            peers={"jax.jacfwd": times["jax.jacfwd"], "jax.jacrev": times["jax.jacrev"]},
            target="<= 1.10x best pure; planning <= 1.3x one trace",
            note=(f"plan {plan.kind}{' ' + plan.bracketing() if plan.kind == 'mixed' else ''}; "
                  f"auto/best = {times['auto'] / best:.2f}{same}; planning {plan_s * 1e3:.2f} ms "
                  f"(trace {trace_s * 1e3:.2f} ms; planning / trace {ratio:.2f}, median of "
                  f"paired runs{prep})")))
    return rows


def bottleneck(quick: bool) -> list[Row]:
    n = 400 if quick else 2000
    f, enc, dec = autoencoder(n, 8, seed=11)
    x = jax.random.normal(jax.random.key(1), (n,)) * 0.1
    plan = api.plan_jacobian(f, (x,), {}, 0)[0]
    contenders = {"auto (one function)": jax.jit(fl.jacobian(f)),
                  "chain(enc, dec)": jax.jit(fl.jacobian(fl.chain(enc, dec))),
                  "jax.jacfwd": jax.jit(jax.jacfwd(f)), "jax.jacrev": jax.jit(jax.jacrev(f))}
    outs = {k: jax.block_until_ready(g(x)) for k, g in contenders.items()}
    err = float(jnp.max(jnp.abs(outs["auto (one function)"] - outs["jax.jacrev"]))
                / jnp.max(jnp.abs(outs["jax.jacrev"])))
    times = interleaved({k: (lambda g=g: g(x)) for k, g in contenders.items()},
                        reps=5 if quick else 21)
    best = min(times["jax.jacfwd"], times["jax.jacrev"])
    ours = times.pop("auto (one function)")
    return [Row(group="planner", job=f"autoencoder {n}->8->{n} as one function", unit="s",
                ours=ours, peers=times, target=">= 20x best pure (aim: = chain())",
                note=(f"plan {plan.bracketing()} at cuts of width "
                      f"{[plan.profile[c] for c in plan.cuts]}; {best / ours:.1f}x over the "
                      f"better pure mode, chain()/auto = {times['chain(enc, dec)'] / ours:.2f}; "
                      f"max rel. diff vs jacrev {err:.1e}"))]


def eager(quick: bool) -> list[Row]:
    A = _w(jax.random.key(3), 300, 300)
    x = jnp.ones(300)
    reps = 7 if quick else 21

    def ours():
        return fl.jacobian(lambda v: jnp.tanh(A @ v))(x)

    def theirs():
        return jax.jacrev(lambda v: jnp.tanh(A @ v))(x)

    for _ in range(3):
        jax.block_until_ready(ours())
        jax.block_until_ready(theirs())
    times = interleaved({"fl.jacobian (new lambda each call)": ours,
                         "jax.jacrev (new lambda each call)": theirs}, reps=reps, warmup=1)
    mine = times.pop("fl.jacobian (new lambda each call)")
    return [Row(group="planner", job="eager jacobian, new lambda per call (300x300)", unit="s",
                ours=mine, peers=times, target="<= 1.3x jax.jacrev",
                note=f"ours/jacrev = {mine / times['jax.jacrev (new lambda each call)']:.2f}")]


def hessians(quick: bool) -> list[Row]:
    rows = []
    k = jax.random.split(jax.random.key(5), 3)
    n = 100 if quick else 200     # n x n past the model's cache bound: the layout term counts
    A = _w(k[0], 256, n)
    B = _w(k[1], 4, n)
    cases = [
        (f"sum tanh(Ax)^2, n={n}", lambda x: jnp.sum(jnp.tanh(A @ x) ** 2), jnp.ones(n) * 0.1),
        (f"low rank g(Bx), n={n}", lambda x: jnp.sum(jnp.sin(B @ x) ** 3), jnp.ones(n) * 0.1),
        ("rosenbrock n=100", lambda x: jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2),
         jnp.ones(100) * 0.5),
        ("tiny n=2", lambda x: jnp.sin(x[0]) * jnp.exp(x[1]), jnp.array([0.3, 0.2])),
    ]
    for name, f, x in cases:
        plan = api.plan_hessian(f, (x,))
        progs = {"auto": jax.jit(fl.hessian(f))}
        for mode in api.NESTINGS:
            progs[mode] = jax.jit(fl.hessian(f, mode=mode))
        for g in progs.values():
            jax.block_until_ready(g(x))
        times = interleaved({k2: (lambda g=g: g(x)) for k2, g in progs.items()},
                            reps=7 if quick else 21)
        ours = times.pop("auto")
        best = min(times.values())
        ops = [harness.hlo_ops(progs[k].lower(x).compile()) for k in ("auto", plan.mode)]
        rows.append(Row(group="planner", job=f"hessian auto: {name}", unit="s", ours=ours,
                        peers=times, target="auto <= 1.10x best nesting",
                        note=f"chose {plan.mode}; auto/best = {ours / best:.2f}; "
                             f"{'same' if ops[0] == ops[1] else 'DIFFERENT'} optimized HLO "
                             f"as {plan.mode}"))
    return rows


def run(quick: bool) -> list[Row]:
    return bottleneck(quick) + sweep(quick) + eager(quick) + hessians(quick)


if __name__ == "__main__":  # pragma: no cover
    import argparse

    from .harness import format_table

    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    for r in run(a.quick):
        print(format_table([r]), flush=True)
