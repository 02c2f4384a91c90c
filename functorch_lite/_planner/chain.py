"""The bracketing of a chain of Jacobians: the matrix-chain problem, extended to JVPs and VJPs.

For a chain ``f = f_K o ... o f_1`` (the stages between the cuts the planner found, or
the stages of a :func:`functorch_lite.chain`) the Jacobian
is ``J_K ... J_1``. A dense block ``A`` of it can be pushed forward through further stages
by JVPs (one per column of ``A``), pulled back by VJPs (one per row), or two dense blocks
multiplied. With ``cost[i..j]`` the cheapest way to obtain ``J_j ... J_i`` densely,
``cf_l`` / ``cr_l`` the FLOPs of one JVP / VJP through stage ``l`` (counted from the
program by :mod:`functorch_lite._planner.model`), ``p_l`` the primal work of stage ``l``
(recomputed once by every pass that crosses it) and ``n`` the widths::

    cost[i..j] = min(  min_k  cost[i..k] + sum_{l=k+1..j} (n_{i-1} cf_l + p_l)   (forward)
                    ,  min_k  cost[k+1..j] + sum_{l=i..k} (n_j cr_l + p_l)     (reverse)
                    ,  min_k  cost[i..k] + cost[k+1..j] + 2 n_j n_k n_{i-1}     (product) )

with ``cost[i..i-1] = 0`` for the identity seed (``p_l = 0`` unless given). Dynamic programming over the O(K^2)
intervals solves it in O(K^3).

>>> print(plan_chain([4, 2, 4], [8.0, 4.0], [8.0, 4.0]).bracketing())
J2 · J1
>>> plan_chain([2000, 8, 2000], [32e3, 32e3], [32e3, 32e3]).kind   # the autoencoder
'mixed'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["plan_chain", "Plan", "Step"]


class Step(NamedTuple):
    """How the dense product ``J_j ... J_i`` (stages ``i..j``, 1-based) is obtained.

    kind:
      ``"fwd"``: take ``sub`` (the dense ``J_k ... J_i``; the identity when ``k = i - 1``)
      and push its columns forward through stages ``k+1..j`` by JVPs.
      ``"rev"``: take ``sub`` (the dense ``J_j ... J_{k+1}``; the identity when
      ``k = j``) and pull its rows back through stages ``k..i`` by VJPs.
      ``"mul"``: multiply ``left = J_j ... J_{k+1}`` by ``right = J_k ... J_i``.
    cost: FLOPs predicted for this step and everything below it.
    """

    kind: str
    i: int
    j: int
    k: int
    cost: float
    sub: Step | None = None
    left: Step | None = None
    right: Step | None = None


def plan_chain(widths: Sequence[int], fwd_cost: Sequence[float],
               rev_cost: Sequence[float], primal_cost: Sequence[float] | None = None) -> Plan:
    """The cheapest way to form ``J_K ... J_1`` (see the module docstring).

    Args:
      widths: ``[n_0, ..., n_K]``, the flat sizes between the stages.
      fwd_cost: ``cf_1 .. cf_K``, FLOPs of one JVP through each stage (``inf`` if the
        stage has no forward mode).
      rev_cost: ``cr_1 .. cr_K``, FLOPs of one VJP through each stage (``inf`` if none).
      primal_cost: ``p_1 .. p_K``, the primal work a pass through each stage repeats
        (default 0).

    >>> p = plan_chain([2000, 8, 2000], [8e6, 8e6], [8e6, 8e6])   # 2000-wide hidden layers
    >>> p.bracketing(), p.cost < min(p.fwd_cost_total, p.rev_cost_total) / 100
    ('J2 · J1', True)
    """
    n = list(map(int, widths))
    K = len(n) - 1
    cf = [math.nan, *map(float, fwd_cost)]
    cr = [math.nan, *map(float, rev_cost)]
    pc = [0.0, *map(float, primal_cost)] if primal_cost is not None else [0.0] * len(n)
    if K < 1 or len(cf) != K + 1 or len(cr) != K + 1 or len(pc) != K + 1:
        raise ValueError(f"plan_chain: need K + 1 widths and K costs, got {len(n)} widths, "
                         f"{len(fwd_cost)} and {len(rev_cost)} costs.")
    # Row i of each table below covers the intervals starting at stage i:
    # sf[i][b] = cf_i + ... + cf_b (likewise sr, sp; summed left to right, so an infinite
    # stage cost stays inf), cost[i][j] the cheapest dense J_j ... J_i (the identity
    # cost[i][i - 1] = 0) and best[i][j] its Step.
    sf, sr, sp, cost, best = [], [], [], [], []
    for i in range(K + 2):
        rf, rr, rp = [0.0] * (K + 1), [0.0] * (K + 1), [0.0] * (K + 1)
        tf = tr = tp = 0.0
        for b in range(i, K + 1):
            tf += cf[b]
            tr += cr[b]
            tp += pc[b]
            rf[b], rr[b], rp[b] = tf, tr, tp
        sf.append(rf)
        sr.append(rr)
        sp.append(rp)
        cost.append([0.0] * (K + 1))
        best.append([None] * (K + 1))
    for length in range(1, K + 1):
        for i in range(1, K - length + 2):
            j = i + length - 1
            # the options in order, a tie going to the first (unseeded single-step forms
            # first): forward through k+1..j seeded by J_k..J_i; reverse through k..i
            # seeded by J_j..J_{k+1}; the product (J_j..J_{k+1}) (J_k..J_i). NaN counts
            # as infinite. Only the winner becomes a Step.
            v, kind, k = math.inf, "fwd", i - 1
            ni, nj, ci, sri, spi = n[i - 1], n[j], cost[i], sr[i], sp[i]
            for kk in range(i - 1, j):
                o = ci[kk] + ni * sf[kk + 1][j] + sp[kk + 1][j]
                if o < v:
                    v, kind, k = o, "fwd", kk
            for kk in range(j, i - 1, -1):
                o = cost[kk + 1][j] + nj * sri[kk] + spi[kk]
                if o < v:
                    v, kind, k = o, "rev", kk
            for kk in range(i, j):
                o = ci[kk] + cost[kk + 1][j] + 2.0 * nj * n[kk] * ni
                if o < v:
                    v, kind, k = o, "mul", kk
            ci[j] = v
            if kind == "fwd":
                best[i][j] = Step("fwd", i, j, k, v, best[i][k] if k >= i else None)
            elif kind == "rev":
                best[i][j] = Step("rev", i, j, k, v, best[k + 1][j] if k < j else None)
            else:
                best[i][j] = Step("mul", i, j, k, v, None, best[k + 1][j], best[i][k])
    return Plan(widths=n, fwd_cost=cf[1:], rev_cost=cr[1:], root=best[1][K], primal_cost=pc[1:])


@dataclasses.dataclass
class Plan:
    """A chain's accumulation plan.

    Attributes:
      widths: ``[n_0, ..., n_K]``.
      fwd_cost, rev_cost: FLOPs of one JVP / VJP per stage.
      primal_cost: the primal work each pass through a stage repeats.
      root: the :class:`Step` tree computing ``J_K ... J_1``.
      names: the stages' names (for messages and :meth:`describe_steps`).
    """

    widths: list[int]
    fwd_cost: list[float]
    rev_cost: list[float]
    root: Step
    names: list[str] = dataclasses.field(default_factory=list)
    primal_cost: list[float] = dataclasses.field(default_factory=list)

    @property
    def cost(self) -> float:
        """Predicted FLOPs of the plan (the passes and the products)."""
        return self.root.cost

    @property
    def fwd_cost_total(self) -> float:
        """Cost of pure forward mode: ``n_0`` JVPs through every stage."""
        return self.widths[0] * sum(self.fwd_cost) + sum(self.primal_cost)

    @property
    def rev_cost_total(self) -> float:
        """Cost of pure reverse mode: ``n_K`` VJPs through every stage."""
        return self.widths[-1] * sum(self.rev_cost) + sum(self.primal_cost)

    @property
    def kind(self) -> str:
        """``"fwd"``/``"rev"`` when the plan is a pure mode, else ``"mixed"``."""
        first, todo = self.root.kind, [self.root]
        while todo:
            s = todo.pop()
            if s.kind != first or first == "mul":
                return "mixed"
            todo.extend(c for c in (s.sub, s.left, s.right) if c is not None)
        return first

    def bracketing(self) -> str:
        """The product as a bracketed expression, e.g. ``J3 · (J2 · J1)``."""
        return _render(self.root)

    def passes(self) -> dict[str, int]:
        """How many JVPs, VJPs (each counted per stage crossed) and matrix products."""
        count = {"jvp": 0, "vjp": 0, "matmul": 0}

        def walk(s: Step | None) -> None:
            if s is None:
                return
            if s.kind == "fwd":
                count["jvp"] += self.widths[s.i - 1] * (s.j - s.k)
            elif s.kind == "rev":
                count["vjp"] += self.widths[s.j] * (s.k - s.i + 1)
            else:
                count["matmul"] += 1
            for child in (s.sub, s.left, s.right):
                walk(child)

        walk(self.root)
        return count

    def describe_steps(self) -> list[str]:
        """The plan in words, innermost work first."""
        lines: list[str] = []
        n = self.widths

        def name(l: int) -> str:
            return f"stage {l} ({self.names[l - 1]})" if self.names else f"stage {l}"

        def walk(s: Step | None) -> None:
            if s is None:
                return
            for child in (s.sub, s.right, s.left):
                walk(child)
            expr = _render(s)
            if s.kind == "fwd":
                seed = "identity" if s.sub is None else f"the {n[s.k]} x {n[s.i - 1]} block {_render(s.sub)}"
                stages = ", ".join(name(l) for l in range(s.k + 1, s.j + 1))
                lines.append(f"{expr}  [{n[s.j]} x {n[s.i - 1]}]: forward mode, {n[s.i - 1]} JVPs "
                             f"through {stages}, seeded with {seed}")
            elif s.kind == "rev":
                seed = "identity" if s.sub is None else f"the {n[s.j]} x {n[s.k]} block {_render(s.sub)}"
                stages = ", ".join(name(l) for l in range(s.k, s.i - 1, -1))
                lines.append(f"{expr}  [{n[s.j]} x {n[s.i - 1]}]: reverse mode, {n[s.j]} VJPs "
                             f"through {stages}, seeded with {seed}")
            else:
                lines.append(f"{expr}  [{n[s.j]} x {n[s.i - 1]}]: matrix product "
                             f"({n[s.j]} x {n[s.k]}) @ ({n[s.k]} x {n[s.i - 1]})")

        walk(self.root)
        return lines


def _render(s: Step) -> str:
    """Forward steps multiply on the left of their seed, reverse steps on the right."""
    def paren(text: str) -> str:
        return f"({text})" if "·" in text else text

    if s.kind == "mul":
        return f"{paren(_render(s.left))} · {paren(_render(s.right))}"
    expr = None if s.sub is None else _render(s.sub)
    if s.kind == "fwd":
        for l in range(s.k + 1, s.j + 1):
            expr = f"J{l}" if expr is None else f"J{l} · {paren(expr)}"
    else:
        for l in range(s.k, s.i - 1, -1):
            expr = f"J{l}" if expr is None else f"{paren(expr)} · J{l}"
    return expr
