"""The plan objects: what the planner decided, with the evidence, and nothing else.

A plan holds numbers and strings only (no user function, array or jaxpr), so it can be
cached across calls and shown by :func:`functorch_lite.explain` exactly as it runs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

from .._cost import format_number as _num
from .chain import Plan as ChainPlan

__all__ = ["JacobianPlan", "HessianPlan", "Cut"]


class Cut(NamedTuple):
    """A vertex cut the planner considered: ``position`` (equations before it), its
    active ``width``, and the primitive just before it (for the profile)."""

    position: int
    width: int
    after: str
    label: str = ""


@dataclasses.dataclass
class JacobianPlan:
    """How ``jacobian(mode="auto")`` accumulates one signature.

    Attributes:
      kind: ``"fwd"``, ``"rev"``, ``"mixed"`` or ``"sparse"`` (compressed passes of a
        detected sparsity pattern, decompressed to the dense result): what runs.
      in_size, out_size: ``n`` and ``m`` of the ``m x n`` Jacobian.
      costs: static cost (FLOP-equivalents) per candidate: ``fwd``, ``rev`` and, when a
        cut was found, ``mixed`` (``inf`` where the mode cannot run).
      chain: the bracketing of the stages between the chosen cuts (``None`` for a pure
        plan without candidate cuts).
      cuts: the cuts the chain splits at (interior positions).
      profile: the active width at every position of the program (0 .. ``n_nodes``).
      names: each equation's primitive (for the profile).
      candidates: every cut considered (narrow local minima of the profile).
      unsupported: mode -> why it cannot run this function.
      reasons: why no cut was taken, or notes on the program (control flow kept whole).
      source: ``"static cost model"`` or ``"calibration"``.
      seconds: measured time per candidate (calibration only).
      n_nodes: equations in the flat program (checks a cached mixed plan still fits).
      stage_names: for a :func:`functorch_lite.chain`, the names of its stages.
      devices: the mesh's device count the pure modes were priced for (1: no mesh);
        ``split``: how the chosen mode's passes are split over it (for ``explain``).
      sparse: for a detected pattern: ``nnz``, ``n_jvp``, ``n_vjp`` and ``plan`` (its
        coloring in words); empty when sparsity was not considered.

    >>> import jax.numpy as jnp
    >>> from functorch_lite import explain
    >>> A = jnp.ones((2, 3))
    >>> explain(lambda x: A @ x, jnp.ones(3)).plan.kind    # the plan jacobian() runs
    'rev'
    """

    kind: str
    in_size: int
    out_size: int
    costs: dict[str, float]
    chain: ChainPlan | None
    cuts: tuple[int, ...]
    profile: tuple[int, ...]
    names: tuple[str, ...]
    candidates: tuple[Cut, ...] = ()
    unsupported: dict[str, str] = dataclasses.field(default_factory=dict)
    reasons: list[str] = dataclasses.field(default_factory=list)
    source: str = "static cost model"
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    n_nodes: int = 0
    stage_names: tuple[str, ...] = ()
    primal_flops: float = 0.0
    tangent_flops: float = 0.0
    devices: int = 1
    split: str = ""
    sparse: dict = dataclasses.field(default_factory=dict)

    # ---- the figures explain() and the tests read

    @property
    def mode(self) -> str:
        """Alias of :attr:`kind` (``ModeChoice`` compatibility)."""
        return self.kind

    @property
    def cost(self) -> float:
        return self.costs[self.kind]

    @property
    def fwd_cost_total(self) -> float:
        return self.costs["fwd"]

    @property
    def rev_cost_total(self) -> float:
        return self.costs["rev"]

    @property
    def widths(self) -> list[int]:
        """Widths at the chosen cuts, ``[n, w_1, ..., m]``."""
        if self.chain is not None:
            return list(self.chain.widths)
        return [self.in_size, self.out_size]

    def passes(self) -> dict[str, int]:
        if self.kind == "mixed":
            return self.chain.passes()
        if self.kind == "sparse":
            return {"jvp": self.sparse["n_jvp"], "vjp": self.sparse["n_vjp"], "matmul": 0}
        if self.kind == "fwd":
            return {"jvp": self.in_size, "vjp": 0, "matmul": 0}
        return {"jvp": 0, "vjp": self.out_size, "matmul": 0}

    def bracketing(self) -> str:
        if self.kind == "mixed":
            return self.chain.bracketing()
        if self.kind == "sparse":
            return f"sparse: {self.sparse['plan']}"
        return "forward: J · I" if self.kind == "fwd" else "reverse: I · J"

    def describe_steps(self) -> list[str]:
        if self.kind == "mixed":
            return self.chain.describe_steps()
        if self.kind == "sparse":
            return [f"sparsity pattern read from the program: nnz {self.sparse['nnz']}",
                    f"{self.sparse['plan']}, decompressed into the dense Jacobian"]
        if self.kind == "fwd":
            return [f"forward mode: {self.in_size} JVPs through the whole program"]
        return [f"reverse mode: one stored forward pass, {self.out_size} VJPs"]

    def describe(self) -> str:
        """One sentence: the choice and the evidence."""
        costs = ", ".join(f"{k} {_num(v)}" for k, v in self.costs.items())
        why = f"{self.kind} ({self.source}: {costs}"
        if self.seconds:
            why += "; measured " + ", ".join(f"{k} {t * 1e3:.3g} ms" for k, t in self.seconds.items())
        for m, reason in self.unsupported.items():
            why += f"; {m} cannot run: {reason}"
        return why + ")"

    def profile_text(self, width: int = 40, max_rows: int = 24,
                     labels: dict[int, str] | None = None) -> list[str]:
        """The active width along the program as text bars, one row per cut considered
        (and the two ends), the chosen cuts marked ``<= cut``."""
        labels = labels or {}
        rows = [(0, self.in_size, "inputs")]
        rows += [(c.position, c.width, labels.get(c.position) or c.label or f"after {c.after}")
                 for c in self.candidates]
        n = len(self.profile) - 1
        rows.append((n, self.out_size, "outputs"))
        rows = rows[:max_rows]
        top = max(max(w for _, w, _ in rows), 1)
        lines = []
        for pos, w, label in rows:
            bar = "#" * max(1, round(width * math.log1p(w) / math.log1p(top))) if w else ""
            mark = "  <= cut" if pos in self.cuts else ""
            lines.append(f"  eqn {pos:>5} {w:>9}  {bar:<{width}} {label}{mark}")
        return lines


@dataclasses.dataclass
class HessianPlan:
    """Which nesting ``hessian(mode="auto")`` runs for one signature, and why.

    Attributes:
      mode: the chosen nesting, e.g. ``"fwd-over-rev"``.
      n: the number of differentiated input elements (the Hessian is ``n x n``).
      costs: static cost per nesting (``inf`` where it cannot run).
      terms: nesting -> its cost term by term
        (:class:`~functorch_lite._planner.model.NestingTerms`), for the nestings whose
        inner program traced.
      unsupported: nesting -> the first line of the error tracing it raised.
      probed: the nestings that were traced to check that they run.

    Each nesting is priced as ``passes · per_pass + primal + extra`` (``terms``).

    >>> import jax.numpy as jnp
    >>> from functorch_lite import explain
    >>> explain(lambda x: (x ** 3).sum(), jnp.ones(3), hessian=True).hessian.mode
    'fwd-over-rev'
    """

    mode: str
    n: int
    costs: dict[str, float]
    unsupported: dict[str, str] = dataclasses.field(default_factory=dict)
    probed: tuple[str, ...] = ()
    source: str = "static cost model"
    terms: dict = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        costs = ", ".join(f"{k} {_num(v)}" for k, v in self.costs.items())
        text = f"{self.mode} ({self.source}: {costs}"
        for m, reason in self.unsupported.items():
            text += f"; {m} cannot run: {reason}"
        return text + ")"

    def table(self) -> list[str]:
        """The four nestings priced, one row each, the chosen one starred."""
        lines = [f"  {'':<2}{'nesting':<13} {'outer passes':>12} {'per pass':>10} "
                 f"{'primal':>10} {'extra term':>26} {'static':>10}"]
        lines.append("  " + "-" * (len(lines[0]) - 2))
        for mode, cost in self.costs.items():
            mark = "* " if mode == self.mode else "  "
            t = self.terms.get(mode)
            if mode in self.unsupported or t is None:
                lines.append(f"  {mark}{mode:<13} cannot run: {self.unsupported.get(mode, '')}")
                continue
            extra = f"{t.extra_name} {_num(t.extra)}"
            lines.append(f"  {mark}{mode:<13} {t.passes:>12} {_num(t.per_pass):>10} "
                         f"{_num(t.primal):>10} {extra:>26} {_num(cost):>10}")
        return lines
