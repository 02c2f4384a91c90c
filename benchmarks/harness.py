"""Measuring helpers shared by the benchmark modules.

- `interleaved(contenders, reps)`: median seconds of each compiled callable, run A B A B ...
  so machine drift hits all of them alike.
- `compiled_stats(f, *args)`: XLA's own FLOPs and planned temp bytes of `jax.jit(f)`.
- `Row`: one line of the table: job, our figure, the peers' figures, ratios.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import re
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

from functorch_lite._cost import format_bytes, stats_of


@dataclasses.dataclass
class Row:
    """One benchmark result. `ours` and each peer are in `unit`; `ratio` = peer/ours for
    times (>1: we are faster) unless `note` says otherwise."""

    group: str
    job: str
    unit: str
    ours: float
    peers: dict[str, float] = dataclasses.field(default_factory=dict)
    target: str = ""
    note: str = ""

    def ratios(self) -> dict[str, float]:
        return {k: (v / self.ours if self.ours else float("nan")) for k, v in self.peers.items()}


def block(x: Any) -> Any:
    return jax.block_until_ready(x)


def interleaved(contenders: dict[str, Callable[[], Any] | list[Callable[[], Any]]], reps: int | None = None,
                warmup: int = 2, budget: float = 0.5, pause: float = 0.0, burst: int = 1,
                settle: int | None = None) -> dict[str, float]:
    """Median wall time (s) of each contender, interleaved.

    Every round runs each contender once, in a freshly shuffled order (seeded), so
    neither drift nor "runs right after a bigger program" favours one of them (measured:
    a ~100 us program runs up to 30-40% slower right after a different, bigger one).

    Args:
      contenders: zero-argument callables, each already compiled (or warmed up here); a
        list of callables is several instances (separately compiled copies of one
        program) whose samples are pooled.
      reps: rounds; ``None`` picks them from the warm-up timing: about ``budget`` seconds
        per contender, at least 21 and at most 2001 (tiny programs need many rounds for
        a stable median on a shared machine).
      pause: untimed sleep before each turn. torch's OpenMP threads keep spinning after a
        call and slow whatever runs next (measured: up to 5x on this 2-core machine).
      burst: each turn calls the contender ``burst`` times back to back and times only the
        last call, so each framework is measured with its own thread pool awake.
      settle: steady-state mode. Each turn still makes ``burst`` calls back to back, but
        every call after the first ``settle`` is timed and pooled into the median. With
        ``pause=0`` this is the regime of a training loop (the same program called again
        and again), and it needs no sleep to shield one framework from the other's
        spinning threads: the first ``settle`` calls of a turn absorb that.
    """
    if settle is not None and not 0 <= settle < burst:
        raise ValueError(f"interleaved: settle={settle} must be in [0, burst={burst}): some calls must be timed.")
    runs = [(k, f) for k, fs in contenders.items() for f in (fs if isinstance(fs, list) else [fs])]
    slowest = 0.0
    for _ in range(warmup):
        for _, f in runs:
            t0 = time.perf_counter()
            block(f())
            slowest = max(slowest, time.perf_counter() - t0)
    if reps is None:
        reps = int(min(2001, max(21, budget / max(slowest, 1e-6))))
    times: dict[str, list[float]] = {k: [] for k in contenders}
    rng = random.Random(0)
    for _ in range(reps):
        rng.shuffle(runs)
        for k, f in runs:
            if pause:
                time.sleep(pause)
            if settle is None:
                for _ in range(burst - 1):
                    block(f())
                t0 = time.perf_counter()
                block(f())
                times[k].append(time.perf_counter() - t0)
                continue
            for i in range(burst):
                t0 = time.perf_counter()
                block(f())
                if i >= settle:
                    times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def compiled(f: Callable, *args: Any, **jit_kwargs: Any):
    return jax.jit(f, **jit_kwargs).lower(*args).compile()


def flops(c) -> float:
    """XLA's FLOPs of a compiled program (`cost_analysis()["flops"]`)."""
    return stats_of(c).flops


def hlo_ops(c) -> collections.Counter:
    """The multiset of (shape, opcode) of every instruction in the optimized HLO: two
    programs with equal `hlo_ops` do the same work (names and debug info aside)."""
    return collections.Counter(m.group(1) + " " + m.group(2)
                               for m in re.finditer(r"= (\S+) ([a-z][\w-]*)\(", c.as_text()))


def temp_bytes(c) -> int:
    """XLA's planned temp memory of a compiled program (`memory_analysis()`)."""
    return stats_of(c).temp_bytes


def compile_seconds(f: Callable, *args: Any) -> float:
    """Wall time to trace, lower and compile `jax.jit(f)` for `args`. A fresh wrapper is
    jitted each call, so JAX's trace cache (keyed on the function) cannot answer instead."""
    fresh = lambda *a: f(*a)  # noqa: E731
    t0 = time.perf_counter()
    jax.jit(fresh).lower(*args).compile()
    return time.perf_counter() - t0


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table: group, job, ours, each peer with its ratio, target."""
    lines = []
    header = f"{'group':<12} {'job':<48} {'ours':>12} {'peer':>26} {'ratio':>8}  target"
    lines.append(header)
    lines.append("-" * len(header))
    for r in rows:
        first = True
        peers = list(r.peers.items()) or [("", float("nan"))]
        ratios = r.ratios()
        for name, value in peers:
            ours = _fmt(r.ours, r.unit) if first else ""
            peer = f"{name}={_fmt(value, r.unit)}" if name else ""
            ratio = f"{ratios[name]:.2f}x" if name else ""
            lines.append(f"{r.group if first else '':<12} {r.job if first else '':<48} {ours:>12} "
                         f"{peer:>26} {ratio:>8}  {r.target if first else ''}")
            first = False
        if r.note:
            lines.append(f"{'':<12}   note: {r.note}")
    return "\n".join(lines)


def _fmt(v: float, unit: str) -> str:
    if unit == "s":
        if v < 1e-3:
            return f"{v * 1e6:.1f}us"
        if v < 1:
            return f"{v * 1e3:.2f}ms"
        return f"{v:.2f}s"
    if unit == "B":
        return format_bytes(v)
    return f"{v:.4g}{unit}"
