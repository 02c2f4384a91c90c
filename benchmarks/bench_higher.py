"""Higher-order derivatives: Taylor mode vs nested grad; Hessian nestings; chunked memory.

    python -m benchmarks --only higher [--quick]

1. ``fl.derivative(f, order=k)`` (Taylor mode) vs ``k`` nested ``jax.grad``, both
   ``jit(vmap(.))`` over N points: compile time (trace + lower + XLA compile of a freshly
   built function; median of 3, a single compile for nested ``grad`` above order 6) and
   run time (median, interleaved). Full: N = 10,000, k = 1..10 (nested ``grad`` up to 9);
   quick: N = 1,000, k = 1..4.
2. ``fl.hessian`` in each nesting vs ``jax.hessian``, per input size n: run time.
3. ``fl.hessian(chunk_size=c)`` and ``fl.hessian_diag(chunk_size=c)``: XLA's planned temp
   bytes vs ``jax.hessian``.
"""

from __future__ import annotations

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import functorch_lite as fl

from .harness import Row, compiled, flops, interleaved, temp_bytes

GROUP = "higher"
MODES = ("fwd-over-rev", "rev-over-rev", "rev-over-fwd", "fwd-over-fwd")


def smooth(x):
    """A smooth scalar function of a scalar: products, quotients, exp, log, tanh, sin."""
    return jnp.sin(x) * jnp.exp(-x * x / 4) / (1 + x * x) + jnp.tanh(x) * jnp.log1p(x * x)


def nested_grad(f, k):
    for _ in range(k):
        f = jax.grad(f)
    return f


def timed_compile(make_f, *args, repeats: int = 1):
    """``(compiled, seconds)``: trace, lower and XLA-compile ``jax.jit(make_f())``, timed;
    the median of ``repeats`` compilations, each of a freshly built function (``jit``
    caches by function object, so reusing one would time a cache hit)."""
    seconds = []
    for _ in range(repeats):
        f = make_f()
        t0 = time.perf_counter()
        c = compiled(f, *args)
        seconds.append(time.perf_counter() - t0)
    return c, statistics.median(seconds)


# Ten nested jax.grad did not finish compiling on the 2-core, 23 GB test machine: after
# about 6 minutes XLA held 14 GB and grew by ~100 MB/s, and we stopped it (see
# docs/benchmarks.md). Orders above this run Taylor mode only.
NESTED_MAX_ORDER = 9


def progress(row: Row) -> Row:
    peers = ", ".join(f"{k}={v:.4g}" for k, v in row.peers.items())
    print(f"  [{row.group}] {row.job}: ours={row.ours:.4g}{row.unit} {peers}", file=sys.stderr, flush=True)
    return row


def kth_derivative_rows(quick: bool) -> list[Row]:
    n_points = 1_000 if quick else 10_000
    orders = range(1, 5) if quick else range(1, 11)
    reps = 7 if quick else 21
    xs = jnp.linspace(-2.0, 2.0, n_points)
    rows = []
    for k in orders:
        c_ours, t_ours = timed_compile(lambda: jax.vmap(fl.derivative(smooth, order=k)), xs, repeats=3)
        if k > NESTED_MAX_ORDER:
            t_run = interleaved({"ours": lambda: c_ours(xs)}, reps=reps)["ours"]
            why = f"nested jax.grad not run above order {NESTED_MAX_ORDER} (compile memory, see docs)"
            rows.append(progress(Row(GROUP, f"d^{k}f vmap {n_points} pts: run", "s", t_run, note=why)))
            rows.append(progress(Row(GROUP, f"d^{k}f vmap {n_points} pts: compile", "s", t_ours, note=why)))
            continue
        c_peer, t_peer = timed_compile(lambda: jax.vmap(nested_grad(smooth, k)), xs,
                                       repeats=3 if k <= 6 else 1)
        a, b = np.asarray(c_ours(xs)), np.asarray(c_peer(xs))
        scale = np.abs(b).max()
        agree = float(np.abs(a - b).max() / scale)
        times = interleaved({"ours": lambda: c_ours(xs), "peer": lambda: c_peer(xs)}, reps=reps)
        target = ">=20x at k=8" if k == 8 else ""
        rows.append(progress(Row(GROUP, f"d^{k}f vmap {n_points} pts: run", "s", times["ours"],
                                 {"nested jax.grad": times["peer"]}, target=target,
                                 note=f"max |ours - nested| / max|nested| = {agree:.1e} (float32)")))
        rows.append(progress(Row(GROUP, f"d^{k}f vmap {n_points} pts: compile", "s", t_ours,
                                 {"nested jax.grad": t_peer}, target=target)))
    return rows


HIDDEN = 4
SLOW_REV_OVER_FWD = 256    # rev-over-fwd from this n on: minutes and GBs per run (measured)


def hessian_test_function(n: int):
    """``f(x, W) = sum(tanh(W x)) + sum(sin(x) x²) / 2`` with ``W`` of shape (4n, n),
    passed as an argument (not a baked-in constant); the Hessian is w.r.t. ``x``."""
    W = jax.random.normal(jax.random.key(1), (HIDDEN * n, n)) / np.sqrt(n)

    def f(x, W):
        return jnp.sum(jnp.tanh(W @ x)) + 0.5 * jnp.sum(jnp.sin(x) * x * x)

    return f, (jnp.linspace(-1.0, 1.0, n), W)


def hessian_mode_rows(quick: bool) -> list[Row]:
    sizes = (4, 64) if quick else (4, 64, 512)
    reps = 7 if quick else 21
    rows = []
    for n in sizes:
        reps_n = reps * 5 if n <= 64 else reps        # microsecond timings need more samples
        f, args = hessian_test_function(n)
        ref = compiled(jax.hessian(f), *args)
        contenders = {"jax.hessian": lambda: ref(*args)}
        comp, skipped = {}, {}
        for mode in MODES:
            if mode == "rev-over-fwd" and n >= SLOW_REV_OVER_FWD:
                skipped[mode] = ("not run: a single standalone run at n=512 took 84 s and 8.5 GB RSS "
                                 "(XLA planned 13 MiB temp); see docs/benchmarks.md")
                continue
            c = compiled(fl.hessian(f, mode=mode), *args)
            comp[mode] = c
            contenders[mode] = (lambda c: lambda: c(*args))(comp[mode])
            np.testing.assert_allclose(np.asarray(comp[mode](*args)), np.asarray(ref(*args)),
                                       rtol=2e-4, atol=2e-4)
        times = interleaved(contenders, reps=reps_n)
        best = min(comp, key=lambda m: times[m])
        auto = fl._higher.resolve_hessian_mode(f, "auto", args)
        for mode, why in skipped.items():
            rows.append(progress(Row(GROUP, f"hessian n={n}: {mode}", "s", float("nan"),
                                     {"jax.hessian": times["jax.hessian"]}, note=why)))
        for mode in comp:
            note = (("fastest nesting; " if mode == best else "") + ("auto's choice; " if mode == auto else "")
                    + f"XLA flops {flops(comp[mode]):.4g} (jax.hessian {flops(ref):.4g})")
            rows.append(progress(Row(GROUP, f"hessian n={n}: {mode}", "s", times[mode],
                                     {"jax.hessian": times["jax.hessian"]}, note=note.strip("; "))))
    return rows


def chunk_memory_rows(quick: bool) -> list[Row]:
    n = 256 if quick else 1024
    f, args = hessian_test_function(n)
    ref_bytes = temp_bytes(compiled(jax.hessian(f), *args))
    ref_diag_bytes = temp_bytes(compiled(lambda *a: jnp.diag(jax.hessian(f)(*a)), *args))
    rows = []
    for chunk in (None, 256, 64, 16):
        ours = temp_bytes(compiled(fl.hessian(f, chunk_size=chunk), *args))
        rows.append(Row(GROUP, f"hessian n={n} chunk_size={chunk}: temp", "B", ours,
                        {"jax.hessian": ref_bytes}, note=f"hidden width {HIDDEN * n}; XLA temp bytes"
                        " (the n x n output itself is not temp)"))
    for chunk in (None, 64, 16):
        ours = temp_bytes(compiled(fl.hessian_diag(f, chunk_size=chunk), *args))
        rows.append(Row(GROUP, f"hessian_diag n={n} chunk_size={chunk}: temp", "B", ours,
                        {"diag(jax.hessian)": ref_diag_bytes}))
    return rows


def run(quick: bool = False) -> list[Row]:
    return kth_derivative_rows(quick) + hessian_mode_rows(quick) + chunk_memory_rows(quick)
