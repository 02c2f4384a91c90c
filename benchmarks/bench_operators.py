"""Differential operators: collapsed Taylor mode vs folx vs the trace of ``jax.hessian``.

    python -m benchmarks --only operators [--quick]

1. Laplacian of an MLP ``R^d -> R`` (3 hidden tanh layers of width 256, weights passed as
   arguments, not baked in), ``jit(vmap(.))`` over 32 points, for d = 16, 64, 256:
   ``fl.laplacian`` against folx's ``forward_laplacian`` (dense: ``sparsity_threshold=0``;
   folx's default, sparsity detection, is its own column where it differs) and
   ``jnp.trace(jax.hessian(f))``: run time (median, interleaved), compile time (trace +
   lower + XLA compile of a fresh function, median of 3), XLA FLOPs. The stochastic
   estimator (k = 8 Rademacher directions) has its own row.
2. Biharmonic, d = 8 (same MLP, 32 points): ``fl.biharmonic`` (exact: collapsed Laplacian
   of the collapsed Laplacian; and ``method="taylor4"``, one fourth-order collapsed pass)
   against the trace of traces of nested ``jax.hessian``.

``curve(ds)`` returns the per-d timings that examples/operators_cost.py plots.
"""

from __future__ import annotations

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import functorch_lite as fl

from .harness import Row, compiled, flops, interleaved

GROUP = "operators"
WIDTH, DEPTH, POINTS = 256, 3, 32


def mlp(d: int, width: int = WIDTH, depth: int = DEPTH, seed: int = 0):
    """``f(x, params)``: tanh MLP ``R^d -> R`` and its parameters."""
    sizes = [d] + [width] * depth + [1]
    keys = jax.random.split(jax.random.key(seed), len(sizes))
    params = [(jax.random.normal(k, (a, b)) / np.sqrt(a), jnp.full((b,), 0.1))
              for k, a, b in zip(keys, sizes[:-1], sizes[1:])]

    def f(x, params):
        h = x
        for W, b in params[:-1]:
            h = jnp.tanh(h @ W + b)
        W, b = params[-1]
        return (h @ W + b)[0]

    return f, params


def contenders(d: int, stochastic_k: int = 8):
    """name -> function of (X, params) computing the Laplacian at each of the points X
    (folx only where it is installed: ``pip install folx``)."""
    f, params = mlp(d)
    out = {"ours": lambda X, p: jax.vmap(fl.laplacian(f), in_axes=(0, None))(X, p)}
    try:
        import folx
    except ImportError:  # an optional peer
        folx = None
    if folx is not None:
        out["folx"] = lambda X, p: jax.vmap(lambda x: folx.forward_laplacian(
            lambda x: f(x, p), sparsity_threshold=0)(x).laplacian)(X)
    out.update({
        "jax.hessian trace": lambda X, p: jax.vmap(lambda x: jnp.trace(jax.hessian(f)(x, p)))(X),
        f"ours stochastic k={stochastic_k}": lambda X, p: jax.vmap(
            fl.laplacian(f, method="stochastic", num_samples=stochastic_k, key=jax.random.key(0)),
            in_axes=(0, None))(X, p),
    })
    X = jax.random.normal(jax.random.key(1), (POINTS, d))
    return out, (X, params)


def compile_time(make, args, repeats: int = 3) -> tuple:
    seconds, c = [], None
    for _ in range(repeats):
        fresh = make()
        wrapped = lambda *a: fresh(*a)  # noqa: E731  (a new function: no trace-cache hit)
        t0 = time.perf_counter()
        c = compiled(wrapped, *args)
        seconds.append(time.perf_counter() - t0)
    return c, statistics.median(seconds)


def progress(row: Row) -> Row:
    peers = ", ".join(f"{k}={v:.4g}" for k, v in row.peers.items())
    print(f"  [{row.group}] {row.job}: ours={row.ours:.4g}{row.unit} {peers}", file=sys.stderr, flush=True)
    return row


def measure(d: int, reps: int, compile_repeats: int = 3) -> dict:
    """Run time, compile time and FLOPs of every contender at dimension d."""
    fns, args = contenders(d)
    comp, ctime = {}, {}
    with jax.numpy_rank_promotion("allow"):
        for name, fn in fns.items():
            comp[name], ctime[name] = compile_time(lambda fn=fn: fn, args, compile_repeats)
    ref = np.asarray(comp["jax.hessian trace"](*args))
    for name in [k for k in ("ours", "folx") if k in comp]:
        err = np.abs(np.asarray(comp[name](*args)) - ref).max() / np.abs(ref).max()
        assert err < 1e-3, (name, d, err)
    times = interleaved({k: (lambda c: lambda: c(*args))(c) for k, c in comp.items()}, reps=reps)
    return {"time": times, "compile": ctime, "flops": {k: flops(c) for k, c in comp.items()}}


def laplacian_rows(quick: bool) -> list[Row]:
    ds = (16, 64) if quick else (16, 64, 256)
    reps = 11 if quick else 31
    rows = []
    for d in ds:
        m = measure(d, reps)
        t, c, fl_ = m["time"], m["compile"], m["flops"]
        stoch = [k for k in t if k.startswith("ours stochastic")][0]
        note = "XLA flops: " + ", ".join(f"{k} {v:.3g}" for k, v in fl_.items())
        peers = [k for k in ("folx", "jax.hessian trace") if k in t]
        rows.append(progress(Row(GROUP, f"laplacian MLP d={d} w={WIDTH}x{DEPTH} {POINTS} pts: run", "s",
                                 t["ours"], {k: t[k] for k in peers},
                                 target=">=1.5x folx, >=3x hessian", note=note)))
        rows.append(progress(Row(GROUP, f"laplacian MLP d={d}: compile", "s", c["ours"],
                                 {k: c[k] for k in peers}, target="<= folx's")))
        rows.append(progress(Row(GROUP, f"laplacian MLP d={d}: {stoch[5:]} run", "s", t[stoch],
                                 {"ours exact": t["ours"], **({"folx": t["folx"]} if "folx" in t else {})})))
    return rows


def biharmonic_rows(quick: bool) -> list[Row]:
    d = 8
    f, params = mlp(d, width=64 if quick else WIDTH)
    X = jax.random.normal(jax.random.key(2), (POINTS, d))

    def nested_hessian(x, p):
        return jnp.trace(jax.hessian(lambda y: jnp.trace(jax.hessian(f)(y, p)))(x))

    fns = {
        "ours": lambda X, p: jax.vmap(fl.biharmonic(f), in_axes=(0, None))(X, p),
        "ours taylor4": lambda X, p: jax.vmap(fl.biharmonic(f, method="taylor4"), in_axes=(0, None))(X, p),
        "nested jax.hessian": lambda X, p: jax.vmap(nested_hessian, in_axes=(0, None))(X, p),
    }
    comp, ctime = {}, {}
    for name, fn in fns.items():
        comp[name], ctime[name] = compile_time(lambda fn=fn: fn, (X, params), 1 if quick else 3)
    ref = np.asarray(comp["nested jax.hessian"](X, params))
    for name in ("ours", "ours taylor4"):
        err = np.abs(np.asarray(comp[name](X, params)) - ref).max() / np.abs(ref).max()
        assert err < 1e-2, (name, err)
    t = interleaved({k: (lambda c: lambda: c(X, params))(c) for k, c in comp.items()}, reps=7 if quick else 21)
    w = 64 if quick else WIDTH
    note = "XLA flops: " + ", ".join(f"{k} {flops(c):.3g}" for k, c in comp.items())
    return [progress(Row(GROUP, f"biharmonic MLP d={d} w={w}x{DEPTH} {POINTS} pts: run", "s", t["ours"],
                         {"ours taylor4": t["ours taylor4"], "nested jax.hessian": t["nested jax.hessian"]},
                         target=">=5x nested hessian", note=note)),
            progress(Row(GROUP, f"biharmonic MLP d={d}: compile", "s", ctime["ours"],
                         {"ours taylor4": ctime["ours taylor4"], "nested jax.hessian": ctime["nested jax.hessian"]}))]


def curve(ds, reps: int = 11) -> dict:
    """``{d: measure(d)}``: what examples/operators_cost.py plots."""
    return {d: measure(d, reps, compile_repeats=1) for d in ds}


def run(quick: bool = False) -> list[Row]:
    return laplacian_rows(quick) + biharmonic_rows(quick)
