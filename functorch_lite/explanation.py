"""``explain``: how ``jacobian(mode="auto")`` accumulates, and what each way costs.

The report lists forward, reverse and (for a :func:`~functorch_lite.chain`) the planned
mixed-mode program with XLA's FLOPs, bytes and planned memory of each compiled Jacobian
program, which one runs and why; ``print`` gives a table, ``.plot(path)`` a picture.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax

from . import _args, _cost
from .accumulation import Chain, _describe
from .jacobians import BY_MODE, ModeChoice, choose_mode, jacfwd, jacobian, jacrev, split_dynamic, tree_size

__all__ = ["explain", "Report", "Candidate", "StageInfo"]


@dataclasses.dataclass
class Candidate:
    """One way to compute the Jacobian, with XLA's figures for its compiled program.

    Attributes:
      name: ``"fwd"``, ``"rev"`` or ``"plan"`` (a chain's mixed-mode plan).
      passes: a short description, e.g. ``"300 JVPs"``.
      supported: False if the function cannot run this way (``reason`` says why).
      flops, bytes_accessed, temp_bytes: from ``cost_analysis()`` / ``memory_analysis()``
        of the compiled Jacobian program (NaN / -1 when not compiled).
      seconds: measured time when ``mode="auto"`` calibrated (else NaN).
      chosen: whether ``jacobian(mode="auto")`` runs this one.
    """

    name: str
    passes: str
    supported: bool = True
    reason: str = ""
    flops: float = math.nan
    bytes_accessed: float = math.nan
    temp_bytes: int = -1
    seconds: float = math.nan
    chosen: bool = False


@dataclasses.dataclass
class StageInfo:
    """One stage of a chain: ``name``, ``n_in`` -> ``n_out``, the FLOPs of one JVP and one
    VJP through it (``inf`` if that mode cannot run it)."""

    index: int
    name: str
    n_in: int
    n_out: int
    jvp_flops: float
    vjp_flops: float


@dataclasses.dataclass
class Report:
    """What :func:`explain` found. Public fields (stable, for tools built on it):

    Attributes:
      name: the function's name.
      argnums: as passed.
      in_shapes, out_shapes: ``dtype[shape]`` strings of the differentiated inputs and
        of the outputs.
      in_size, out_size: total element counts (``n`` and ``m`` of the ``m x n`` Jacobian).
      candidates: :class:`Candidate` rows: ``fwd``, ``rev`` and, for a chain, ``plan``.
      chosen: the name of the candidate ``jacobian(mode="auto")`` runs.
      source: how it was chosen (``calibration``, ``cost analysis``, ``sizes``,
        ``only supported mode``, or ``matrix-chain dynamic programming``).
      reason: one sentence with the evidence.
      stages: for a chain, one :class:`StageInfo` per stage (else empty).
      bracketing: for a chain, the chosen product, e.g. ``J3 · (J2 · J1)``.
      steps: for a chain, the plan in words.
      predicted_flops: for a chain, the planner's FLOPs for ``fwd``, ``rev``, ``plan``.
    """

    name: str
    argnums: Any
    in_shapes: list[str]
    out_shapes: list[str]
    in_size: int
    out_size: int
    candidates: list[Candidate]
    chosen: str
    source: str
    reason: str
    stages: list[StageInfo] = dataclasses.field(default_factory=list)
    bracketing: str = ""
    steps: list[str] = dataclasses.field(default_factory=list)
    predicted_flops: dict[str, float] = dataclasses.field(default_factory=dict)

    def candidate(self, name: str) -> Candidate:
        return next(c for c in self.candidates if c.name == name)

    def __str__(self) -> str:
        lines = [f"explain({self.name}), argnums={self.argnums}: Jacobian of "
                 f"R^{self.in_size} -> R^{self.out_size} ({self.out_size} x {self.in_size})",
                 f"  inputs:  {', '.join(self.in_shapes)}",
                 f"  outputs: {', '.join(self.out_shapes)}"]
        if self.stages:
            lines.append("")
            lines.append(f"  {'stage':<6} {'name':<16} {'n_in':>7} {'n_out':>7} "
                         f"{'JVP FLOPs':>11} {'VJP FLOPs':>11}")
            for s in self.stages:
                lines.append(f"  {s.index:<6} {s.name[:16]:<16} {s.n_in:>7} {s.n_out:>7} "
                             f"{_num(s.jvp_flops):>11} {_num(s.vjp_flops):>11}")
        lines.append("")
        head = (f"  {'':<2}{'mode':<6} {'passes':<28} {'FLOPs':>10} {'bytes':>10} "
                f"{'temp mem':>10} {'time':>10}")
        lines.append(head)
        lines.append("  " + "-" * (len(head) - 2))
        for c in self.candidates:
            mark = "* " if c.chosen else "  "
            if not c.supported:
                lines.append(f"  {mark}{c.name:<6} cannot run: {c.reason}")
                continue
            lines.append(f"  {mark}{c.name:<6} {c.passes[:28]:<28} {_num(c.flops):>10} "
                         f"{_bytes(c.bytes_accessed):>10} {_bytes(c.temp_bytes):>10} "
                         f"{_secs(c.seconds):>10}")
        lines.append("")
        lines.append(f"  chosen: {self.chosen}, by {self.source}: {self.reason}")
        if self.bracketing:
            lines.append(f"  bracketing: {self.bracketing}")
            for k, step in enumerate(self.steps, start=1):
                lines.append(f"    {k}. {step}")
        return "\n".join(lines)

    def plot(self, path: str) -> str:
        """Draw the report as a PNG at ``path`` (needs matplotlib: the ``plot`` extra)."""
        try:
            from matplotlib.figure import Figure
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("Report.plot needs matplotlib: pip install "
                              "'functorch-lite[plot]'.") from exc
        rows = [c for c in self.candidates if c.supported]
        panels = 3 if self.stages else 2
        fig = Figure(figsize=(4.2 * panels, 3.8), layout="constrained")
        axes = fig.subplots(1, panels)
        names = [c.name + (" *" if c.chosen else "") for c in rows]
        colours = ["tab:orange" if c.chosen else "tab:blue" for c in rows]
        axes[0].bar(names, [c.flops for c in rows], color=colours)
        axes[0].set_yscale("log")
        axes[0].set_title("FLOPs (XLA cost analysis)")
        axes[1].bar(names, [max(c.temp_bytes, 0) / 2**20 for c in rows], color=colours)
        axes[1].set_title("planned temp memory (MiB)")
        if self.stages:
            widths = [self.stages[0].n_in] + [s.n_out for s in self.stages]
            ax = axes[2]
            ax.plot(range(len(widths)), widths, marker="o")
            ax.set_yscale("log")
            ax.set_xticks(range(len(widths)), ["in"] + [s.name[:10] for s in self.stages])
            ax.set_title("widths: " + self.bracketing, fontsize=9)
        fig.suptitle(f"explain({self.name}): R^{self.in_size} -> R^{self.out_size}, "
                     f"chosen {self.chosen} ({self.source})", fontsize=10)
        fig.savefig(path, dpi=110)
        return path


def _num(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if math.isinf(v):
        return "n/a"
    return f"{v:.3g}"


def _bytes(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v < 0:
        return "-"
    return _cost.format_bytes(v)


def _secs(v: float) -> str:
    if math.isnan(v):
        return "-"
    return f"{v * 1e3:.3g}ms"


def _shapes(tree: Any) -> list[str]:
    return [_describe(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


def _fill(c: Candidate, run: Callable, abstract: list) -> None:
    try:
        stats = _cost.analyse(run, *abstract)
        c.flops, c.bytes_accessed, c.temp_bytes = stats.flops, stats.bytes_accessed, stats.temp_bytes
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        c.reason = f"could not compile: {_args.first_line(exc)}"


def explain(func: Callable, *args: Any, argnums: _args.Argnums = 0, **kwargs: Any) -> Report:
    """How ``jacobian(func, argnums, mode="auto")`` accumulates at ``args``, and what the
    alternatives cost.

    Compiles (does not run) the forward, reverse and chosen programs and reads XLA's
    ``cost_analysis()`` and ``memory_analysis()``. For a :func:`chain` it also lists the
    stages and the chosen bracketing. ``print(report)`` gives a table; ``report.plot(path)``
    draws it (matplotlib). Keyword arguments are passed to ``func`` undifferentiated.

    >>> import jax.numpy as jnp
    >>> A = jnp.ones((50, 2))
    >>> r = explain(lambda x: jnp.tanh(A @ x), jnp.ones(2))
    >>> r.in_size, r.out_size, r.candidate("fwd").passes
    (2, 50, '2 JVPs')
    """
    where = f"explain({_args.func_name(func)})"
    _args.check_callable(func, where)
    _, as_tuple = _args.check_argnums(argnums, where)
    positions = _args.differentiable_positions(args, argnums, where)
    primal = tuple(args[p] for p in positions)
    if isinstance(func, Chain):
        if kwargs or len(args) != 1:
            raise TypeError(f"{where}: a chain takes exactly one positional argument (stage "
                            f"1's input), got {len(args)} and keywords {sorted(kwargs)}.")
        args = (_args.cast_python_scalars(args[0], args[0]),)
        func.boundaries(args[0], where)  # names the stage that does not compose
    dynamic, rebuild = split_dynamic(args, kwargs)
    abstract = _cost.abstract(dynamic)

    def call(*dyn):
        a, kw = rebuild(list(dyn))
        return func(*a, **kw)

    out = jax.eval_shape(call, *abstract)
    in_size, out_size = tree_size(primal), tree_size(out)
    report = Report(name=_args.func_name(func), argnums=argnums, in_shapes=_shapes(primal),
                    out_shapes=_shapes(out), in_size=in_size, out_size=out_size,
                    candidates=[], chosen="", source="", reason="")

    def runner(transform: Callable) -> Callable:
        jac = transform(func, argnums)

        def run(*dyn):
            a, kw = rebuild(list(dyn))
            return jac(*a, **kw)

        return run

    fwd = Candidate("fwd", f"{in_size} JVPs")
    rev = Candidate("rev", f"{out_size} VJPs")
    report.candidates = [fwd, rev]

    if isinstance(func, Chain):
        plan = func.plan(args[0], where)
        counts = plan.passes()
        planned = Candidate("plan", f"{counts['jvp']} JVP, {counts['vjp']} VJP, "
                                    f"{counts['matmul']} matmul")
        report.candidates.append(planned)
        bad_fwd = {k: d["fwd"] for k, d in plan.unsupported.items() if "fwd" in d}
        bad_rev = {k: d["rev"] for k, d in plan.unsupported.items() if "rev" in d}
        for c, bad in ((fwd, bad_fwd), (rev, bad_rev)):
            if bad:
                c.supported = False
                c.reason = "; ".join(f"stage {k}: {r}" for k, r in bad.items())
        if fwd.supported:
            _fill(fwd, runner(jacfwd), abstract)
        if rev.supported:
            _fill(rev, runner(jacrev), abstract)
        planned_jac = jacobian(func, argnums)

        def run_plan(*dyn):
            a, _ = rebuild(list(dyn))
            return planned_jac(*a)

        report.source = "matrix-chain dynamic programming"
        report.reason = (f"predicted {_num(plan.cost)} FLOPs vs fwd {_num(plan.fwd_cost_total)}, "
                         f"rev {_num(plan.rev_cost_total)} (per-pass costs: {plan.cost_source})")
        if plan.kind == "mixed":
            _fill(planned, run_plan, abstract)
            planned.chosen = True
            report.chosen = "plan"
            report.reason = "mixed mode; " + report.reason
        else:  # a pure mode: jacobian measures which one (see Chain.__fl_jacobian__)
            report.candidates.remove(planned)
            choice = choose_mode(func, args, {}, argnums)
            for c in (fwd, rev):
                c.seconds = choice.seconds.get(c.name, math.nan)
                c.chosen = c.name == choice.mode
            report.chosen = choice.mode
            report.source += " + " + choice.source
            report.reason = (f"no mixed bracketing is cheaper ({report.reason}); "
                             f"then {choice.describe()}")
        report.stages = [StageInfo(k, name, plan.widths[k - 1], plan.widths[k],
                                   plan.fwd_cost[k - 1], plan.rev_cost[k - 1])
                         for k, name in enumerate(plan.names, start=1)]
        report.bracketing = plan.bracketing()
        report.steps = plan.describe_steps()
        report.predicted_flops = {"fwd": plan.fwd_cost_total, "rev": plan.rev_cost_total,
                                  "plan": plan.cost}
        return report

    choice: ModeChoice = choose_mode(func, args, kwargs, argnums)
    for c in (fwd, rev):
        if c.name in choice.unsupported:
            c.supported, c.reason = False, choice.unsupported[c.name]
        else:
            _fill(c, runner(BY_MODE[c.name]), abstract)
        c.seconds = choice.seconds.get(c.name, math.nan)
        c.chosen = c.name == choice.mode
    report.chosen, report.source = choice.mode, choice.source
    report.reason = choice.describe()
    return report
