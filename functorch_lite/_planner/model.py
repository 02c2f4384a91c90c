"""The static cost model and the choice it makes: fwd, rev, mixed at the narrow cuts, or sparse.

From one reading of the program (:func:`functorch_lite._jaxpr.cuts.analyse`): ``P``,
the primal FLOPs, and ``T``, the FLOPs of pushing one tangent (or pulling one cotangent)
through every active equation. With ``n`` inputs and ``m`` outputs:

- forward mode costs ``n·T + P + L(m, n)``: ``n`` JVPs, the primal once, and
  ``L(m, n)``, writing the ``m x n`` result with the basis axis last (``vmap`` puts the
  tangent axis first; the Jacobian wants it last: a transposing copy);
- reverse mode costs ``m·T + P + S(s)``: ``m`` VJPs after one forward pass that stores
  the ``s`` elements of the active intermediates.

``L(m, n) = LAYOUT · m · n`` and ``S(s) = STORE · s``, but only where the matrix (the
stored values) exceed :data:`CACHE_ELEMENTS`, and ``L`` only where a matrix product is
active (XLA fuses the transpose into the loop that writes an elementwise result; a
batched ``dot_general`` writes its own layout and the transpose is a separate copy): a transposing write or a store/reload
that stays in cache costs no more than a contiguous one; past it every element is a
cache miss, worth about ``LAYOUT`` FLOPs of a matrix product (XLA:CPU here: a strided
copy of the Jacobian ran at 1-4 ns per element, a GEMM at ~60 GFLOP/s; the residual
block 400 -> 6 -> 400 and a batched layer are where forward mode lost on FLOP ties:
docs/benchmarks.md, planner). A tie goes to forward.

For mixed mode the program is split at its narrow cuts (the local minima of the width
profile narrower than ``min(n, m)``, at most :data:`MAX_CUTS` of the narrowest), the
stages' per-pass costs are the sums of ``T`` over their equations, each pass through a
stage also repeats its primal work and a fixed :data:`STEP_OVERHEAD`, and
:func:`~functorch_lite._planner.chain.plan_chain` brackets them. A mixed (or sparse,
:func:`sparse_cost`) plan is taken only when it is predicted at least ``1 / PAY`` times
cheaper than the best pure mode: small gains are not worth the extra dispatches.

For a Hessian (the Jacobian of the gradient program ``g: R^n -> R^n``, traced as
``jacrev`` or ``jacfwd`` of ``f``) each nesting is priced by :func:`nesting_terms` on the
inner program: the outer forward mode ``n·T + P + L'``, the outer reverse mode
``n·T + P + S(s)``. ``L'`` is the transposed write ``L(n, n)`` of the Hessian, but only
where a matrix product (``dot_general``) is active in the gradient program: XLA fuses
the transpose into the loop that writes an elementwise result (the compiled HLO holds
one loop fusion with the transpose inside), but a batched matrix product writes its own
layout and the transpose is a separate copy of ``n²`` elements. Measured on this CPU
(n = 512, equal XLA FLOPs and bytes): rev-over-rev 1.2-1.65x faster than
fwd-over-rev for ``sum(tanh(Ax)²)``, ``sum(sin(Bx)³)`` and ``logsumexp(Ax)``;
fwd-over-rev as fast or faster for elementwise and banded ones (Rosenbrock), where the
model ties and the tie goes to fwd-over-rev.

With a device mesh (``devices > 1``) each pure mode runs its share of the passes per
device, ``ceil(n / devices)`` JVPs or ``ceil(m / devices)`` VJPs (the cost per device).

Everything here is arithmetic on counts from the program: the same program at the same
shapes gives the same plan in every process.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .._jaxpr import cuts as _cuts
from .chain import plan_chain
from .plans import Cut, JacobianPlan

__all__ = ["decide", "pure_costs", "nesting_terms", "NestingTerms", "layout_cost", "store_cost", "sparse_cost", "MAX_CUTS",
           "PAY", "STEP_OVERHEAD", "LAYOUT", "STORE", "CACHE_ELEMENTS", "SPARSE_DEPS", "DETECT_MIN"]

MAX_CUTS = 8            # candidate cuts fed to the DP (the narrowest local minima)
PAY = 0.5               # a mixed or sparse plan must be predicted at most this fraction of pure
STEP_OVERHEAD = 2.0e4   # FLOP-equivalents of one extra batched pass (dispatch, copies)
LAYOUT = 100.0          # FLOP-equivalents per element of a transposing write out of cache
STORE = 100.0           # ... per element stored for reverse mode and read back, out of cache
CACHE_ELEMENTS = 4096   # elements (16 KiB of float32) that stay in cache: no layout/store cost
SPARSE_DEPS = 4         # sparsity is detected only when one output element depends on at
                        # most min(n, m) / SPARSE_DEPS inputs (a static bound from the program)
DETECT_MIN = 5.0e8      # ... and the best dense plan costs at least this (FLOP-equivalents):
                        # reading a pattern as index sets and coloring it takes
                        # milliseconds of Python (~1.9 ms on a cold cache for the
                        # 3072 x 1536 block-diagonal pattern of 48 samples through a
                        # 32 -> 64 layer: detection 1.1, cyclic coloring 0.8; several ms
                        # more where the graph coloring runs), about what a dense plan of
                        # this cost runs in on a CPU core (a jacrev priced 6.8e7 ran
                        # 1.25 ms, one priced 5.1e8 4.1 ms): below it, detecting would
                        # cost more than the run it might shorten. (That same pattern
                        # read as an axis map, _jaxpr/blocks.py, takes ~0.05 ms; the gate
                        # stays, since which reading applies is known only after trying.)


def layout_cost(m: int, n: int) -> float:
    """``L(m, n)``: writing an ``m x n`` Jacobian with the basis axis last."""
    return LAYOUT * m * n if m > 1 and n > 1 and m * n > CACHE_ELEMENTS else 0.0


def store_cost(stored: int) -> float:
    """``S(s)``: storing ``s`` intermediate elements for reverse mode and reading them back."""
    return STORE * stored if stored > CACHE_ELEMENTS else 0.0


def pure_costs(info: _cuts.Analysis, devices: int = 1) -> dict[str, float]:
    """The static costs of forward and reverse mode (per device over ``devices``); the
    transposed write only where a matrix product is active (``info.active_matmul``)."""
    n, m = info.in_size, info.out_size
    P, T = info.primal, info.per_pass
    per_n, per_m = -(-n // devices) if n else 0, -(-m // devices) if m else 0
    layout = layout_cost(m, per_n) if info.active_matmul else 0.0
    return {"fwd": per_n * T + P + layout, "rev": per_m * T + P + store_cost(info.stored)}


class NestingTerms(NamedTuple):
    """One nesting's static cost, term by term: ``passes`` outer passes of ``per_pass``
    FLOPs each, the ``primal`` work once, and ``extra`` (named ``extra_name``)."""

    passes: int
    per_pass: float
    primal: float
    extra_name: str
    extra: float

    @property
    def total(self) -> float:
        return self.passes * self.per_pass + self.primal + self.extra


def nesting_terms(info: _cuts.Analysis, outer: str) -> NestingTerms:
    """The outer Jacobian (``outer`` ``"fwd"`` or ``"rev"``) of a Hessian's inner
    gradient program ``info``, priced term by term (see the module docstring)."""
    n, m = info.in_size, info.out_size
    P, T = float(info.primal), float(info.per_pass)
    if outer == "fwd":
        extra = layout_cost(m, n) if info.active_matmul else 0.0
        return NestingTerms(n, T, P, "transposed write", extra)
    return NestingTerms(m, T, P, "store", store_cost(info.stored))


def sparse_cost(info: _cuts.Analysis, n_jvp: int, n_vjp: int) -> float:
    """A sparse plan: ``n_jvp`` compressed JVPs and ``n_vjp`` VJPs, the primal once (twice
    with both), and one write per element of the dense result (decompression)."""
    P, T = info.primal, info.per_pass
    return ((n_jvp + n_vjp) * T + P * (1 + (n_jvp > 0 and n_vjp > 0))
            + (store_cost(info.stored) if n_vjp else 0.0) + info.in_size * info.out_size)


def may_be_sparse(info: _cuts.Analysis, dense_cost: float | None = None) -> bool:
    """Whether sparsity detection may pay: every output element depends on at most
    ``min(n, m) / SPARSE_DEPS`` inputs by the program's static bound, and (given the
    best dense plan's ``dense_cost``) that plan costs at least :data:`DETECT_MIN`, so
    that detecting and coloring the pattern (milliseconds of Python) is small next to
    what it may save on every call."""
    limit = min(info.in_size, info.out_size)
    cheap = dense_cost is not None and dense_cost < DETECT_MIN
    return limit > 1 and not cheap and 0 < info.deps * SPARSE_DEPS <= limit   # deps: a pass


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


def _no_cut_reason(info: _cuts.Analysis, names: tuple, limit: int) -> str:
    N = len(info.widths) - 1
    inner = info.widths[1:N]
    if not inner:
        return "the program has no interior position to cut at"
    p = 1 + min(range(len(inner)), key=inner.__getitem__)   # the first narrowest
    return (f"no cut is narrower than min(n_in, n_out) = {limit}: the narrowest is "
            f"{info.widths[p]} wide, after equation {p - 1} ({names[p - 1]})")


def _chain(info: _cuts.Analysis, positions: list[int], forced: dict[int, str],
           unsupported: dict[str, str]):
    """The bracketing of the stages between ``positions`` (plan_chain)."""
    N = len(info.widths) - 1
    bounds = [0, *positions, N]
    no_fwd = [k for k, _ in info.no_forward]
    no_rev = [k for k, _ in info.no_reverse]
    fwd_off = "fwd" in unsupported and not no_fwd   # the whole function, not one stage
    rev_off = "rev" in unsupported and not no_rev
    cf, cr, pc = [], [], []
    for a, b in zip(bounds, bounds[1:]):
        t = sum(info.tangent[a:b])
        cf.append(math.inf if fwd_off or any(a <= k < b for k in no_fwd) else t)
        cr.append(math.inf if rev_off or any(a <= k < b for k in no_rev) else t)
        pc.append(sum(info.flops[a:b]) + STEP_OVERHEAD)
    chain = plan_chain([info.widths[b] for b in bounds], cf, cr, pc)
    chain.names = [forced.get(b, f"eqns {a}..{b - 1}" if b > a else "identity")
                   for a, b in zip(bounds, bounds[1:])]
    return chain


def _control_flow_note(info: _cuts.Analysis) -> str:
    P = info.primal
    k, name = max(info.control_flow, key=lambda c: info.flops[c[0]])
    share = info.flops[k] / P if P else 0.0
    return (f"cuts are taken between top-level equations only: the {name} at equation {k} "
            f"({share:.0%} of the work) is kept whole")


def decide(prog: _cuts.Program, info: _cuts.Analysis, *, unsupported: dict[str, str],
           forced: dict[int, str] | None = None, allow_mixed: bool = True,
           why_not_mixed: str = "", devices: int = 1) -> JacobianPlan:
    """The plan for one program (see the module docstring). ``unsupported``: modes that
    probing found cannot run the whole function. ``forced``: cut positions that must
    be candidates (a chain's stage boundaries), with their labels. ``devices``: the
    mesh's device count (pure modes split over it)."""
    forced = forced or {}
    N, names, limit = len(prog.nodes), tuple(info.names), min(info.in_size, info.out_size)
    costs = pure_costs(info, devices)
    for mode in unsupported:
        costs[mode] = math.inf
    positions = _candidates(info, limit) if allow_mixed else []
    if forced:
        positions = sorted(set(positions).union(p for p in forced if 0 < p < N))
    reasons = [] if allow_mixed else [why_not_mixed]
    if allow_mixed and not positions:
        reasons.append(_no_cut_reason(info, names, limit))
    chain = _chain(info, positions, forced, unsupported) if positions else None
    if chain is not None and chain.kind == "mixed":
        costs["mixed"] = chain.cost
    pure = "fwd" if costs["fwd"] <= costs["rev"] else "rev"   # a tie goes to forward
    kind = pure
    if "mixed" in costs and costs["mixed"] <= PAY * costs[pure]:
        kind = "mixed"
    elif "mixed" in costs:
        reasons.append(f"the best mixed plan ({chain.bracketing()}, cost {costs['mixed']:.3g}) "
                       f"is not {1 / PAY:g}x cheaper than {pure} ({costs[pure]:.3g})")
    elif chain is not None and allow_mixed:
        reasons.append("no bracketing over the cuts beats a pure mode")
    if kind != "mixed" and info.control_flow and allow_mixed:
        reasons.append(_control_flow_note(info))
    if math.isinf(costs[kind]):
        kind = pure
    return JacobianPlan(kind=kind, in_size=info.in_size, out_size=info.out_size, costs=costs,
                        chain=chain, cuts=tuple(positions) if kind == "mixed" else (),
                        profile=tuple(info.widths), names=names,
                        candidates=tuple(Cut(p, info.widths[p], names[p - 1] if p else "",
                                             forced.get(p, "")) for p in positions),
                        unsupported=dict(unsupported), reasons=reasons, n_nodes=N,
                        primal_flops=info.primal, tangent_flops=info.per_pass,
                        stage_names=tuple(forced.values()), devices=devices)
