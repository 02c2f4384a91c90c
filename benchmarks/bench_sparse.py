"""Sparse Jacobians and Hessians: passes, per-call time, preparation, memory.

    python -m benchmarks --only sparse [--quick]

Peers: raw JAX (``jax.jacfwd``, ``jax.jacrev``, ``jax.hessian``, dense) and asdex 0.5
(where installed: ``asdex.jacobian(f, x)`` / ``asdex.hessian(f, x)`` detect and color
when called, outside ``jax.jit``; that call is its preparation). Ours prepares while
``jax.jit`` traces; its preparation figure is detection + coloring from a cleared cache
(``fl.clear_caches(); fl.sparsity(f, x).plan()``).

1. Tridiagonal residual of 1-D reaction-diffusion, n = 2000 (quick: 500).
2. Arrowhead (one dense row, one dense column, a diagonal), n = 1000 (quick: 300).
3. 5-point Laplacian on a 100 x 100 grid (quick: 30 x 30): colors, detection + coloring.
4. Hessian of the chained Rosenbrock function, n = 10^4 (quick: 10^3): HVPs, time and
   XLA's planned memory (temp + output bytes) against ``jax.hessian``.

Per-call times come twice: "per call" is one call per turn, the contenders shuffled and
interleaved (each call follows another program, whose worker threads may still spin:
on a loaded 2-core machine that dominates programs of ~100 us), and "steady state" is 5
calls per turn with the last 3 timed (the regime of a Newton loop calling one Jacobian
again and again). Alongside, one evaluation of ``f`` is timed as the per-call floor.
"""

from __future__ import annotations

import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import functorch_lite as fl
from functorch_lite._cost import stats_of

from .harness import Row, compiled, hlo_ops, interleaved

GROUP = "sparse"

try:  # optional peer
    import asdex
except ImportError:  # pragma: no cover
    asdex = None


def reaction_diffusion_1d(u):
    """r_i = (u_{i-1} - 2 u_i + u_{i+1}) / h^2 + u_i (1 - u_i), zero Dirichlet ends."""
    h = 1.0 / (u.shape[0] + 1)
    p = jnp.pad(u, 1)
    return (p[:-2] - 2 * u + p[2:]) / h ** 2 + u * (1 - u)


def arrowhead(x):
    """Row 0 depends on all of x, every other row on x_0 and itself."""
    return jnp.concatenate([jnp.sum(x ** 2)[None], x[1:] ** 3 + x[0]])


def laplacian_2d(n):
    def lap(u):
        g = u.reshape(n, n)
        p = jnp.pad(g, 1)
        return (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * g).reshape(-1)
    return lap


def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _prep_seconds(f, x, hessian=False, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        fl.clear_caches()
        t0 = time.perf_counter()
        p = fl.sparsity(f, x, hessian=hessian)
        p.plan("star" if hessian else "auto")
        best = min(best, time.perf_counter() - t0)
    return best, p


def _asdex_prep(make, repeats=1):
    best, fn = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn = make()
        best = min(best, time.perf_counter() - t0)
    return best, fn


def _memory(c) -> float:
    s = stats_of(c)
    out = getattr(c.memory_analysis(), "output_size_in_bytes", 0)
    return float(s.temp_bytes + out)


def _jacobian_rows(job, f, x, dense_peer, quick):
    """Passes, per-call time (cold turns and steady state) and preparation of one
    Jacobian job; one evaluation of ``f`` is timed alongside as the per-call floor."""
    ours_f = jax.jit(fl.jacobian(f, sparse=True))
    prep, pattern = _prep_seconds(f, x)
    plan = pattern.plan("auto")
    contenders = {"ours": compiled(ours_f, x), dense_peer[0]: compiled(jax.jit(dense_peer[1](f)), x)}
    asdex_prep = None
    if asdex is not None:
        asdex_prep, asdex_f = _asdex_prep(lambda: asdex.jacobian(f, x))
        contenders["asdex"] = compiled(jax.jit(asdex_f), x)
    ref = np.asarray(contenders[dense_peer[0]](x))
    err = float(np.abs(np.asarray(contenders["ours"](x).todense()) - ref).max())
    same = "asdex" in contenders and hlo_ops(contenders["ours"]) == hlo_ops(contenders["asdex"])
    contenders["f once"] = compiled(jax.jit(f), x)
    calls = {k: (lambda c=c: c(x)) for k, c in contenders.items()}
    cold = interleaved(calls, budget=0.3 if quick else 1.0)
    steady = interleaved(calls, reps=7 if quick else 21, burst=5, settle=2)
    rows = [Row(GROUP, f"{job}: passes", "", plan.passes,
                {"dense": float(min(pattern.matrix_shape))}, note=plan.describe())]
    for label, times in (("per call (jit)", cold), ("per call, steady state (jit)", steady)):
        floor = times.pop("f once")
        rows.append(Row(GROUP, f"{job}: {label}", "s", times["ours"],
                        {k: v for k, v in times.items() if k != "ours"},
                        note=f"max |ours - dense| = {err:.2g}; one evaluation of f: "
                             f"{floor * 1e6:.1f}us (ours = {times['ours'] / floor:.2f} of them)"
                             + ("; optimized HLO instructions identical to asdex's" if same else "")))
    rows.append(Row(GROUP, f"{job}: preparation (detect + color)", "s", prep,
                    {"asdex": asdex_prep} if asdex_prep is not None else {}))
    return rows


def run(quick: bool = False) -> list[Row]:
    with warnings.catch_warnings():
        # asdex says so when it colors the arrowhead with n colors: part of the result
        if asdex is not None:
            warnings.simplefilter("ignore", asdex.DenseColoringWarning)
        return _run(quick)


def _run(quick: bool) -> list[Row]:
    rows = []
    n_tri, n_arrow, grid, n_rosen = (500, 300, 30, 1000) if quick else (2000, 1000, 100, 10_000)
    key = jax.random.key(0)

    # 1. tridiagonal
    x = jax.random.uniform(key, (n_tri,))
    rows += _jacobian_rows(f"tridiagonal n={n_tri}", reaction_diffusion_1d, x,
                           ("jax.jacfwd", jax.jacfwd), quick)
    rows[-4].target = "3 passes"
    rows[-3].target = rows[-2].target = "<= asdex, >= 100x jacfwd"
    rows[-1].target = "<= 0.1x asdex"

    # 2. arrowhead
    x = jax.random.normal(key, (n_arrow,))
    rows += _jacobian_rows(f"arrowhead n={n_arrow}", arrowhead, x, ("jax.jacrev", jax.jacrev), quick)
    rows[-4].target = "<= 3 passes (bicoloring)"
    rows[-3].target = rows[-2].target = ">= 5x asdex and jacrev"

    # 3. Laplacian
    lap = laplacian_2d(grid)
    u = jax.random.normal(key, (grid * grid,))
    prep, pattern = _prep_seconds(lap, u)
    rows.append(Row(GROUP, f"5-point Laplacian {grid}x{grid}: colors", "", pattern.plan().passes,
                    {"dense": float(grid * grid)}, target="<= 5", note=pattern.plan().describe()))
    peers = {}
    if asdex is not None:
        peers["asdex"], _ = _asdex_prep(lambda: asdex.jacobian(lap, u))
    rows.append(Row(GROUP, f"5-point Laplacian {grid}x{grid}: detect + color", "s", prep, peers,
                    target="<= 0.5 s"))

    # 4. Rosenbrock Hessian
    x = jax.random.normal(key, (n_rosen,))
    prep, pattern = _prep_seconds(rosenbrock, x, hessian=True)
    ours = compiled(jax.jit(fl.hessian(rosenbrock, sparse=True)), x)
    dense = compiled(jax.jit(jax.hessian(rosenbrock)), x)
    contenders = {"ours": ours, "jax.hessian": dense}
    if asdex is not None:
        asdex_prep, asdex_h = _asdex_prep(lambda: asdex.hessian(rosenbrock, x))
        contenders["asdex"] = compiled(jax.jit(asdex_h), x)
    err = float(np.abs(np.asarray(ours(x).todense()) - np.asarray(dense(x))).max()
                / np.abs(np.asarray(dense(x))).max())
    times = interleaved({k: (lambda c=c: c(x)) for k, c in contenders.items()},
                        budget=0.3 if quick else 1.0, reps=None if quick else 21)
    rows.append(Row(GROUP, f"Rosenbrock Hessian n={n_rosen}: HVPs", "", pattern.plan("star").passes,
                    {"dense": float(n_rosen)}, target="<= 3", note=pattern.plan("star").describe()))
    rows.append(Row(GROUP, f"Rosenbrock Hessian n={n_rosen}: per call (jit)", "s", times["ours"],
                    {k: v for k, v in times.items() if k != "ours"}, target=">= 100x jax.hessian",
                    note=f"max rel |ours - dense| = {err:.2g}"))
    mem = {"jax.hessian": _memory(dense)}
    if asdex is not None:
        mem["asdex"] = _memory(contenders["asdex"])
    rows.append(Row(GROUP, f"Rosenbrock Hessian n={n_rosen}: temp+output bytes", "B", _memory(ours), mem,
                    target=">= 100x less than jax.hessian"))
    peers = {"asdex": asdex_prep} if asdex is not None else {}
    rows.append(Row(GROUP, f"Rosenbrock Hessian n={n_rosen}: preparation", "s", prep, peers))
    return rows
