"""The static cost model and the choice it makes: fwd, rev, or mixed at the narrow cuts.

From one reading of the program (:func:`functorch_lite._jaxpr.cuts.analyse`): ``P``,
the primal FLOPs, and ``T``, the FLOPs of pushing one tangent (or pulling one cotangent)
through every active equation. Forward mode costs ``n·T + P`` (``n`` JVPs, the primal
once), reverse mode ``m·T + P`` (``m`` VJPs after one stored forward pass); a tie goes to
forward (on a CPU the measured crossover of the two is at ``n ≈ m``, with forward a
little ahead there: docs/benchmarks.md, accumulation).

For mixed mode the program is split at its narrow cuts (the local minima of the width
profile narrower than ``min(n, m)``, at most :data:`MAX_CUTS` of the narrowest), the
stages' per-pass costs are the sums of ``T`` over their equations, each pass through a
stage also repeats its primal work and a fixed :data:`STEP_OVERHEAD`, and
:func:`~functorch_lite._planner.chain.plan_chain` brackets them. A mixed plan is taken
only when it is predicted at least ``1 / PAY`` times cheaper than the best pure mode:
small gains are not worth the extra dispatches.

Everything here is arithmetic on counts from the program: the same program at the same
shapes gives the same plan in every process.
"""

from __future__ import annotations

import math

import numpy as np

from .._jaxpr import cuts as _cuts
from .chain import plan_chain
from .plans import Cut, JacobianPlan

__all__ = ["decide", "MAX_CUTS", "PAY", "STEP_OVERHEAD"]

MAX_CUTS = 8            # candidate cuts fed to the DP (the narrowest local minima)
PAY = 0.5               # a mixed plan must be predicted at most this fraction of pure
STEP_OVERHEAD = 2.0e4   # FLOP-equivalents of one extra batched pass (dispatch, copies)


def _candidates(info: _cuts.Analysis, limit: int) -> list[int]:
    """Interior positions that are local minima of the width profile, narrower than
    ``limit``; a flat valley floor counts once, at its last position (after the
    activation that ends a layer, where a chain's stage boundary lies)."""
    w = info.widths
    N = len(w) - 1
    found = []
    for p in range(1, N):
        if w[p] >= limit or w[p] == 0:
            continue
        if w[p] > w[p - 1] or w[p] >= w[p + 1]:
            continue  # not where a valley (or its flat bottom) ends
        if found and info.live[found[-1]] == info.live[p]:
            continue  # the same cut again
        found.append(p)
    if len(found) > MAX_CUTS:
        found = sorted(sorted(found, key=lambda p: (w[p], p))[:MAX_CUTS])
    return found


def decide(prog: _cuts.Program, info: _cuts.Analysis, *, unsupported: dict[str, str],
           forced: dict[int, str] | None = None, allow_mixed: bool = True,
           why_not_mixed: str = "") -> JacobianPlan:
    """The plan for one program (see the module docstring). ``unsupported``: modes that
    probing found cannot run the whole function. ``forced``: cut positions that must
    be candidates (a chain's stage boundaries), with their labels."""
    forced = dict(forced or {})
    N = len(prog.nodes)
    n, m = info.in_size, info.out_size
    P, T = sum(info.flops), sum(info.tangent)
    costs = {"fwd": n * T + P, "rev": m * T + P}
    for mode in unsupported:
        costs[mode] = math.inf
    reasons: list[str] = []
    names = tuple(info.names)
    limit = min(n, m)
    positions = [] if not allow_mixed else _candidates(info, limit)
    positions = sorted(set(positions) | {p for p in forced if 0 < p < N})
    candidates = tuple(Cut(p, info.widths[p], names[p - 1] if p else "", forced.get(p, ""))
                       for p in positions)
    chain = None
    if not allow_mixed:
        reasons.append(why_not_mixed)
    elif not positions:
        inner = info.widths[1:N]
        if inner:
            p = 1 + int(np.argmin(inner))
            reasons.append(f"no cut is narrower than min(n_in, n_out) = {limit}: the "
                           f"narrowest is {info.widths[p]} wide, after equation {p - 1} "
                           f"({names[p - 1]})")
        else:
            reasons.append("the program has no interior position to cut at")
    if positions:
        bounds = [0] + positions + [N]
        widths = [info.widths[b] for b in bounds]
        cf, cr, pc = [], [], []
        for a, b in zip(bounds, bounds[1:]):
            t = sum(info.tangent[a:b])
            fwd_bad = any(a <= k < b for k, _ in info.no_forward)
            rev_bad = any(a <= k < b for k, _ in info.no_reverse)
            cf.append(math.inf if fwd_bad or "fwd" in unsupported and not info.no_forward else t)
            cr.append(math.inf if rev_bad or "rev" in unsupported and not info.no_reverse else t)
            pc.append(sum(info.flops[a:b]) + STEP_OVERHEAD)
        chain = plan_chain(widths, cf, cr, pc)
        chain.names = [f"eqns {a}..{b - 1}" if b > a else "identity" for a, b in zip(bounds, bounds[1:])]
        if forced:
            chain.names = [forced.get(b, f"eqns {a}..{b - 1}") for a, b in zip(bounds, bounds[1:])]
        if chain.kind == "mixed":
            costs["mixed"] = chain.cost
    pure = min(("fwd", "rev"), key=lambda k: (costs[k], k != "fwd"))
    kind = pure
    if "mixed" in costs:
        if costs["mixed"] <= PAY * costs[pure]:
            kind = "mixed"
        else:
            reasons.append(f"the best mixed plan ({chain.bracketing()}, cost "
                           f"{costs['mixed']:.3g}) is not {1 / PAY:g}x cheaper than "
                           f"{pure} ({costs[pure]:.3g})")
    elif chain is not None and allow_mixed:
        reasons.append("no bracketing over the cuts beats a pure mode")
    if kind != "mixed" and info.control_flow and allow_mixed:
        k, name = max(info.control_flow, key=lambda c: info.flops[c[0]])
        share = info.flops[k] / P if P else 0.0
        reasons.append(f"cuts are taken between top-level equations only: the {name} at "
                       f"equation {k} ({share:.0%} of the work) is kept whole")
    if math.isinf(costs[kind]):
        kind = pure
    cuts = tuple(positions) if kind == "mixed" else ()
    return JacobianPlan(kind=kind, in_size=n, out_size=m, costs=costs, chain=chain,
                        cuts=cuts, profile=tuple(info.widths), names=names,
                        candidates=candidates, unsupported=dict(unsupported),
                        reasons=reasons, n_nodes=N, primal_flops=P, tangent_flops=T,
                        stage_names=tuple(forced.values()))
