"""What a compiled program costs: XLA's own analysis, and a short interleaved timing.

The planner decides from a static count on the program (:mod:`functorch_lite._planner`),
not from here. :func:`functorch_lite.explain` reports XLA's figures for the compiled
candidates (:func:`analyse`), and :func:`race` times them only when the user asked for
``calibrate=True``.

- :func:`analyse` lowers and compiles a function for abstract inputs and reads
  ``cost_analysis()`` (FLOPs, bytes accessed) and ``memory_analysis()`` (planned temp,
  argument and output bytes). Nothing runs.
- :func:`race` runs already-compiled candidates A B A B ... for a short time budget and
  returns the fastest time each reached.

>>> import jax, jax.numpy as jnp
>>> s = analyse(lambda a: a @ a, jax.ShapeDtypeStruct((10, 10), jnp.float32))
>>> s.flops
2000.0
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from ._args import ARRAY_TYPES

__all__ = ["Stats", "analyse", "race", "abstract", "signature", "format_bytes"]


@dataclasses.dataclass(frozen=True)
class Stats:
    """XLA's estimate for one compiled program.

    Attributes:
      flops: floating-point operations (``cost_analysis()["flops"]``).
      bytes_accessed: bytes read and written (``cost_analysis()["bytes accessed"]``).
      temp_bytes: planned scratch memory (``memory_analysis().temp_size_in_bytes``).
      argument_bytes, output_bytes: sizes of the inputs and outputs.
    """

    flops: float
    bytes_accessed: float
    temp_bytes: int
    argument_bytes: int
    output_bytes: int


def _first(cost: Any) -> dict:
    if isinstance(cost, Sequence) and not isinstance(cost, dict):
        cost = cost[0] if cost else {}
    return dict(cost or {})


def stats_of(compiled: Any) -> Stats:
    """:class:`Stats` of a ``jax.stages.Compiled``."""
    cost = _first(compiled.cost_analysis())
    mem = compiled.memory_analysis()
    return Stats(
        flops=float(cost.get("flops", math.nan)),
        bytes_accessed=float(cost.get("bytes accessed", math.nan)),
        temp_bytes=int(getattr(mem, "temp_size_in_bytes", -1)),
        argument_bytes=int(getattr(mem, "argument_size_in_bytes", -1)),
        output_bytes=int(getattr(mem, "output_size_in_bytes", -1)),
    )


def compile_abstract(func: Callable, *abstract_args: Any) -> Any:
    """``jax.jit(func)`` lowered and compiled for ``abstract_args`` (shapes only)."""
    return jax.jit(func).lower(*abstract_args).compile()


def analyse(func: Callable, *abstract_args: Any) -> Stats:
    """Compile ``func`` for ``abstract_args`` and return XLA's :class:`Stats`."""
    return stats_of(compile_abstract(func, *abstract_args))


def lowered_flops(func: Callable, *abstract_args: Any) -> float:
    """XLA's FLOPs for ``jax.jit(func)`` at ``abstract_args``, from the lowered program
    (no compilation; the compiled program's analysis if the lowered one has none)."""
    lowered = jax.jit(func).lower(*abstract_args)
    cost = _first(lowered.cost_analysis())
    if "flops" not in cost:
        cost = _first(lowered.compile().cost_analysis())
    return float(cost.get("flops", math.nan))


def format_number(v: float | None) -> str:
    """A cost for a table: three significant digits, ``'-'`` for none, ``'n/a'`` for inf.

    >>> format_number(12345.0), format_number(float("inf")), format_number(None)
    ('1.23e+04', 'n/a', '-')
    """
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if math.isinf(v):
        return "n/a"
    return f"{v:.3g}"


def format_bytes(n: float, sep: str = "") -> str:
    """``'512B'``, ``'1.5KiB'``, ``'16.0MiB'``, ``'2.0GiB'`` (``sep`` between number and unit).

    >>> format_bytes(3 * 2**20, sep=" ")
    '3.0 MiB'
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f}{sep}{unit}" if unit == "B" else f"{n:.1f}{sep}{unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def is_array_leaf(leaf: Any) -> bool:
    return isinstance(leaf, (*ARRAY_TYPES, jax.ShapeDtypeStruct))


def abstract(tree: Any) -> Any:
    """Each array leaf of ``tree`` as a ``jax.ShapeDtypeStruct`` (works on tracers)."""
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype) if is_array_leaf(x) else x, tree)


def signature(tree: Any) -> tuple:
    """A hashable description of ``tree``: structure, and shape/dtype of array leaves
    (other leaves by value, or by ``repr`` when unhashable)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    parts = []
    for leaf in leaves:
        if is_array_leaf(leaf):
            parts.append(("array", tuple(leaf.shape), leaf.dtype))   # dtypes hash by value
        else:
            try:
                hash(leaf)
                parts.append(("value", type(leaf).__name__, leaf))
            except TypeError:
                parts.append(("repr", type(leaf).__name__, repr(leaf)))
    return (treedef, tuple(parts))


def race(candidates: dict[str, Callable[[], Any]], budget: float = 0.5,
         max_reps: int = 7, min_reps: int = 3) -> dict[str, float]:
    """Fastest wall time (s) each zero-argument callable reached, run interleaved.

    Every candidate runs once to warm up; then rounds A B A B ... until ``max_reps``
    rounds or the ``budget`` (seconds) is spent, but at least ``min_reps`` rounds unless
    one round alone takes longer than the budget. The minimum, not the median, is
    returned: on a shared machine noise only ever adds time.
    """
    best = {k: math.inf for k in candidates}
    for k, f in candidates.items():
        t0 = time.perf_counter()
        jax.block_until_ready(f())
        best[k] = time.perf_counter() - t0
    start = time.perf_counter()
    for rep in range(max_reps):
        for k, f in candidates.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            best[k] = min(best[k], time.perf_counter() - t0)
        spent = time.perf_counter() - start
        if spent > budget and (rep + 1 >= min_reps or spent > budget * min_reps / 2):
            break
    return best
