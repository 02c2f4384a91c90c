"""Forward vs reverse vs chosen accumulation.

1. Crossover sweep: a fixed network ``x -> W3 tanh(W2 tanh(W1 x))`` (hidden width 256)
   with ``(n_in, n_out)`` from ``(1000, 10)`` to ``(10, 1000)`` on a geometric path;
   ``jax.jacfwd``, ``jax.jacrev`` and ``functorch_lite.jacobian(mode="auto")``, all
   under ``jax.jit``, timed interleaved. Target: auto within 1.10x of the faster pure mode
   at every point.
2. Bottleneck chain: an autoencoder ``R^n -> R^b -> R^n`` (two tanh layers each side,
   hidden width ``n``) as ``chain(encoder, decoder)``; ``jacobian`` of the chain
   (mixed mode) against ``jax.jacfwd``/``jax.jacrev`` of the composed function.
   Target: >= 10x over the better pure mode.

Run: ``python -m benchmarks --only accumulation [--quick]``; the same table plus the
plots in docs/: ``python -m benchmarks.bench_accumulation --plot
docs/accumulation_crossover.png --explain-plot docs/accumulation_explain.png``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import functorch_lite as fl
from functorch_lite import _jacobians as _jac

from .harness import Row, format_table, interleaved


HIDDEN = 256
LAST_SWEEP: list[dict] = []  # the raw crossover results of the last run, for the plot


def _mlp(key, n_in, n_out, hidden):
    k1, k2, k3 = jax.random.split(key, 3)
    W1 = jax.random.normal(k1, (hidden, n_in)) / math.sqrt(n_in)
    W2 = jax.random.normal(k2, (hidden, hidden)) / math.sqrt(hidden)
    W3 = jax.random.normal(k3, (n_out, hidden)) / math.sqrt(hidden)

    def net(x):
        return W3 @ jnp.tanh(W2 @ jnp.tanh(W1 @ x))

    net.__name__ = f"mlp_{n_in}_to_{n_out}"
    return net


def sweep_points(quick: bool) -> list[tuple[int, int]]:
    count = 5 if quick else 9
    ts = np.linspace(0.0, 1.0, count)
    return [(int(round(10 ** (3 - 2 * t))), int(round(10 ** (1 + 2 * t)))) for t in ts]


def crossover(quick: bool) -> list[Row]:
    reps = 7 if quick else 31
    instances = 1 if quick else 3
    rows = []
    LAST_SWEEP.clear()
    for idx, (n_in, n_out) in enumerate(sweep_points(quick)):
        f = _mlp(jax.random.key(idx), n_in, n_out, HIDDEN)
        x = jax.random.normal(jax.random.key(100 + idx), (n_in,))
        t0 = time.perf_counter()
        jax.block_until_ready(jax.jit(fl.jacobian(f))(x))  # plans (calibrates) and compiles
        plan_s = time.perf_counter() - t0
        makers = {"auto": lambda: fl.jacobian(f), "jax.jacfwd": lambda: jax.jacfwd(f),
                  "jax.jacrev": lambda: jax.jacrev(f)}
        # separately compiled copies of each program (fresh closures), samples pooled
        contenders = {k: [(lambda g=jax.jit(make()): g(x)) for _ in range(instances)]
                      for k, make in makers.items()}
        times = interleaved(contenders, reps=reps, warmup=1)
        choice = _jac.choose_mode(f, (x,))
        best = min(times["jax.jacfwd"], times["jax.jacrev"])
        picked = times["jax.jacfwd" if choice.mode == "fwd" else "jax.jacrev"]
        LAST_SWEEP.append(dict(n_in=n_in, n_out=n_out, fwd=times["jax.jacfwd"],
                               rev=times["jax.jacrev"], auto=times["auto"], chosen=choice.mode))
        rows.append(_row(
            f"jacobian auto {n_in}->{n_out} (H={HIDDEN})", times["auto"], times,
            "auto <= 1.10x best",
            f"chose {choice.mode} by {choice.source}; auto/best = "
            f"{times['auto'] / best:.2f}; chosen pure mode/best = {picked / best:.2f}; "
            f"first call (plan+compile) {plan_s:.2f}s"))
    return rows


def _row(job: str, ours: float, times: dict, target: str, note: str) -> Row:
    """One accumulation row against ``jax.jacfwd`` and ``jax.jacrev``."""
    return Row(group="accumulation", job=job, unit="s", ours=ours,
               peers={"jax.jacfwd": times["jax.jacfwd"], "jax.jacrev": times["jax.jacrev"]},
               target=target, note=note)


def autoencoder(key, n, b, hidden):
    keys = jax.random.split(key, 4)

    def layer(k, n_in, n_out, act):
        kw, kb = jax.random.split(k)
        W = jax.random.normal(kw, (n_out, n_in)) / math.sqrt(n_in)
        c = 0.1 * jax.random.normal(kb, (n_out,))
        return lambda v: act(W @ v + c)

    e1, e2 = layer(keys[0], n, hidden, jnp.tanh), layer(keys[1], hidden, b, jnp.tanh)
    d1, d2 = layer(keys[2], b, hidden, jnp.tanh), layer(keys[3], hidden, n, lambda v: v)

    def encoder(x):
        return e2(e1(x))

    def decoder(z):
        return d2(d1(z))

    return encoder, decoder


def bottleneck(quick: bool) -> list[Row]:
    n = 400 if quick else 2000
    widths = [8] if quick else [4, 8, 16, 32, 64]
    reps = 5 if quick else 21
    rows = []
    for b in widths:
        enc, dec = autoencoder(jax.random.key(b), n, b, n)
        ch = fl.chain(enc, dec)

        def composed(x):
            return dec(enc(x))

        x = jax.random.normal(jax.random.key(1), (n,))
        contenders = {"mixed": jax.jit(fl.jacobian(ch)), "jax.jacfwd": jax.jit(jax.jacfwd(composed)),
                      "jax.jacrev": jax.jit(jax.jacrev(composed))}
        t0 = time.perf_counter()
        ours = jax.block_until_ready(contenders["mixed"](x))
        plan_s = time.perf_counter() - t0
        ref = jax.block_until_ready(contenders["jax.jacrev"](x))
        jax.block_until_ready(contenders["jax.jacfwd"](x))
        err = float(jnp.max(jnp.abs(ours - ref)) / jnp.max(jnp.abs(ref)))
        times = interleaved({k: (lambda g=g: g(x)) for k, g in contenders.items()}, reps=reps)
        best = min(times["jax.jacfwd"], times["jax.jacrev"])
        plan = ch.plan(x)
        rows.append(_row(
            f"chain R^{n}->R^{b}->R^{n} (hidden {n})", times["mixed"], times, ">= 10x best pure",
            f"{best / times['mixed']:.1f}x over the better pure mode; plan "
            f"{plan.bracketing()} ({plan.kind}); max rel. diff vs jacrev {err:.1e} "
            f"(float32); first call (plan+compile) {plan_s:.2f}s"))
    return rows


def run(quick: bool) -> list[Row]:
    return crossover(quick) + bottleneck(quick)


def plot_crossover(points: list[dict], path: str) -> str:
    """Times of jacfwd, jacrev and auto against n_in / n_out, as a PNG."""
    from matplotlib.figure import Figure

    ratio = [p["n_in"] / p["n_out"] for p in points]
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(ratio, [p["fwd"] * 1e3 for p in points], "o-", label="jax.jacfwd (forward)")
    ax.plot(ratio, [p["rev"] * 1e3 for p in points], "s-", label="jax.jacrev (reverse)")
    ax.plot(ratio, [p["auto"] * 1e3 for p in points], "x--", color="k",
            label="fl.jacobian(mode='auto')")
    for p, r in zip(points, ratio):
        ax.annotate(p["chosen"], (r, p["auto"] * 1e3), textcoords="offset points",
                    xytext=(0, 8), ha="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set_xticks(ratio, [f"{p['n_in']}:{p['n_out']}" for p in points], rotation=30)
    ax.set_xlabel("n_in : n_out  (hidden width %d)" % HIDDEN)
    ax.set_ylabel("median time per Jacobian (ms)")
    ax.set_title(f"Forward vs reverse accumulation crossover (jax {jax.__version__}, CPU)")
    ax.legend()
    fig.savefig(path, dpi=110)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_accumulation",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--plot", metavar="PNG", help="write the crossover plot here")
    parser.add_argument("--part", choices=("all", "crossover", "bottleneck"), default="all")
    parser.add_argument("--explain-plot", metavar="PNG",
                        help="write explain(chain).plot() of the bottleneck autoencoder here")
    args = parser.parse_args(argv)
    print(f"# jax {jax.__version__} on {jax.default_backend()}{' (quick)' if args.quick else ''}")
    rows = []
    if args.part in ("all", "crossover"):
        rows += crossover(args.quick)
        if args.plot:
            print("wrote", plot_crossover(LAST_SWEEP, args.plot))
    if args.part in ("all", "bottleneck"):
        rows += bottleneck(args.quick)
    print(format_table(rows))
    if args.explain_plot:
        n = 400 if args.quick else 2000
        enc, dec = autoencoder(jax.random.key(8), n, 8, n)
        report = fl.explain(fl.chain(enc, dec), jnp.ones(n))
        print(report)
        print("wrote", report.plot(args.explain_plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
