"""``explain``: how ``jacobian(mode="auto")`` accumulates, and what each way costs.

The report renders the very plan object ``jacobian`` runs (the planner's cached
:class:`~functorch_lite._planner.plans.JacobianPlan`; nothing is decided twice): the
width of the program at every cut the planner considered (a text profile, and a panel
of the picture), the static costs of forward, reverse and mixed mode, which one runs
and why (or why no cut pays), and XLA's FLOPs, bytes and planned memory of each
compiled candidate. Measured times appear only with ``calibrate=True``.
``print`` gives a table, ``.plot(path)`` a picture.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax

from . import _args, _cost
from ._cost import format_number as _num
from ._planner.plans import HessianPlan, JacobianPlan
from ._accumulation import Chain, describe_value
from ._jacobians import split_dynamic, tree_size

__all__ = ["explain", "Report", "Candidate", "StageInfo"]


@dataclasses.dataclass
class Candidate:
    """One way to compute the Jacobian, with XLA's figures for its compiled program.

    Attributes:
      name: ``"fwd"``, ``"rev"`` or ``"plan"`` (the mixed-mode plan at the cuts).
      passes: a short description, e.g. ``"300 JVPs"``.
      supported: False if the function cannot run this way (``reason`` says why).
      static_cost: the planner's static cost (FLOP-equivalents), what decides.
      flops, bytes_accessed, temp_bytes: from ``cost_analysis()`` / ``memory_analysis()``
        of the compiled Jacobian program (NaN / -1 when not compiled).
      seconds: measured time, only with ``calibrate=True`` (else NaN).
      chosen: whether ``jacobian(mode="auto")`` runs this one.
    """

    name: str
    passes: str
    supported: bool = True
    reason: str = ""
    static_cost: float = math.nan
    flops: float = math.nan
    bytes_accessed: float = math.nan
    temp_bytes: int = -1
    seconds: float = math.nan
    chosen: bool = False


@dataclasses.dataclass
class StageInfo:
    """One stage between two chosen cuts (or of a :func:`~functorch_lite.chain`, named
    after it): ``name``, ``n_in`` -> ``n_out``, the static FLOPs of one JVP and one VJP
    through it (``inf`` if that mode cannot run it)."""

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
      source: how it was chosen (``static cost model``, or ``calibration``).
      reason: one sentence with the evidence.
      stages: one :class:`StageInfo` per stage of the chosen mixed plan, or of a chain.
      bracketing: the chosen product, e.g. ``J3 · (J2 · J1)``.
      steps: the plan in words.
      predicted_flops: the static costs of ``fwd``, ``rev`` and ``plan`` (mixed).
      plan: the planner's plan object itself (what ``jacobian`` runs).
      cuts: the cuts considered (:class:`~functorch_lite._planner.plans.Cut`); the
        chosen ones are ``plan.cuts``.
      notes: why no cut was taken, what was kept whole, how the passes are split over
        a mesh.
      hessian: for ``explain(..., hessian=True)``, the planner's
        :class:`~functorch_lite._planner.plans.HessianPlan` (the candidates are then the
        four nestings).
      sparse: for ``explain(..., sparse=True)``, the sparse report's text.

    >>> import jax.numpy as jnp
    >>> A = jnp.ones((2, 3))
    >>> report = explain(lambda x: A @ x, jnp.ones(3))     # m = 2 < n = 3: 2 VJPs
    >>> report.chosen, report.in_size, report.out_size
    ('rev', 3, 2)
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
    plan: JacobianPlan | None = None
    cuts: list = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    hessian: HessianPlan | None = None
    sparse: str = ""

    def candidate(self, name: str) -> Candidate:
        return next(c for c in self.candidates if c.name == name)

    def __str__(self) -> str:
        if self.hessian is not None:
            lines = [f"explain({self.name}, hessian=True), argnums={self.argnums}: Hessian "
                     f"of R^{self.in_size} -> R ({self.in_size} x {self.in_size})",
                     f"  inputs:  {', '.join(self.in_shapes)}", ""]
            lines += self.hessian.table()
        else:
            lines = self._jacobian_lines()
        lines += ["", *self._xla_lines(), "",
                  f"  chosen: {self.chosen}, by {self.source}: {self.reason}"]
        lines += [f"  note: {note}" for note in self.notes]
        if self.bracketing:
            lines.append(f"  bracketing: {self.bracketing}")
            lines += [f"    {k}. {step}" for k, step in enumerate(self.steps, start=1)]
        if self.sparse:
            lines += ["", self.sparse]
        return "\n".join(lines)

    def _jacobian_lines(self) -> list[str]:
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
        if self.plan is not None and len(self.plan.profile) > 2:
            lines.append("")
            lines.append(f"  width of the program at the cuts considered ({len(self.plan.profile) - 1} "
                         "equations; the active values live there):")
            lines.extend(self.plan.profile_text(labels={c.position: c.label for c in self.cuts if c.label}))
        return lines

    def _xla_lines(self) -> list[str]:
        w = max([6] + [len(c.name) for c in self.candidates])
        head = (f"  {'':<2}{'mode':<{w}} {'passes':<28} {'static':>10} {'XLA FLOPs':>10} "
                f"{'bytes':>10} {'temp mem':>10} {'time':>10}")
        lines = [head, "  " + "-" * (len(head) - 2)]
        for c in self.candidates:
            mark = "* " if c.chosen else "  "
            if not c.supported:
                lines.append(f"  {mark}{c.name:<{w}} cannot run: {c.reason}")
                continue
            lines.append(f"  {mark}{c.name:<{w}} {c.passes[:28]:<28} {_num(c.static_cost):>10} "
                         f"{_num(c.flops):>10} {_bytes(c.bytes_accessed):>10} "
                         f"{_bytes(c.temp_bytes):>10} {_secs(c.seconds):>10}")
        return lines

    def plot(self, path: str) -> str:
        """Draw the report as a PNG at ``path`` (needs matplotlib: the ``plot`` extra)."""
        try:
            from matplotlib.figure import Figure
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("Report.plot needs matplotlib: pip install "
                              "'functorch-lite[plot]'.") from exc
        rows = [c for c in self.candidates if c.supported]
        profile = list(self.plan.profile) if self.plan is not None else []
        panels = 3 if len(profile) > 2 else 2
        fig = Figure(figsize=(4.2 * panels, 3.8), layout="constrained")
        axes = fig.subplots(1, panels)
        names = [c.name + (" *" if c.chosen else "") for c in rows]
        colours = ["tab:orange" if c.chosen else "tab:blue" for c in rows]
        axes[0].bar(names, [c.static_cost for c in rows], color=colours)
        axes[0].set_yscale("log")
        axes[0].set_title("static cost (planner)")
        axes[1].bar(names, [max(c.temp_bytes, 0) / 2**20 for c in rows], color=colours)
        axes[1].set_title("planned temp memory (MiB)")
        if len(profile) > 2:
            ax = axes[2]
            ax.step(range(len(profile)), [max(w, 0.5) for w in profile], where="post")
            ax.set_yscale("log")
            ax.set_xlabel("position in the program (equations)")
            ax.set_ylabel("active width")
            for cut in self.cuts:
                chosen = cut.position in self.plan.cuts
                ax.plot([cut.position], [max(cut.width, 0.5)], "o",
                        color="tab:orange" if chosen else "tab:gray")
                if chosen:
                    ax.annotate(cut.label or str(cut.width), (cut.position, max(cut.width, 0.5)),
                                fontsize=7, textcoords="offset points", xytext=(3, 5))
            ax.set_title("cuts: " + (self.bracketing or "none taken"), fontsize=9)
        fig.suptitle(f"explain({self.name}): R^{self.in_size} -> R^{self.out_size}, "
                     f"chosen {self.chosen} ({self.source})", fontsize=10)
        fig.savefig(path, dpi=110)
        return path



def _bytes(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v < 0:
        return "-"
    return _cost.format_bytes(v)


def _secs(v: float) -> str:
    if math.isnan(v):
        return "-"
    return f"{v * 1e3:.3g}ms"


def _shapes(tree: Any) -> list[str]:
    return [describe_value(leaf) for leaf in jax.tree_util.tree_leaves(tree)]




def _fill(c: Candidate, run: Callable, abstract: list) -> None:
    try:
        stats = _cost.analyse(run, *abstract)
        c.flops, c.bytes_accessed, c.temp_bytes = stats.flops, stats.bytes_accessed, stats.temp_bytes
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        c.reason = f"could not compile: {_args.first_line(exc)}"


def _check_func(func: Any) -> None:
    if not callable(func):
        raise TypeError(
            f"explain: expected func to be a callable, got {type(func).__name__}; pass the "
            "function and then its arguments, e.g. explain(f, x), not explain(f(x), x).")


def _stage_rows(plan: JacobianPlan, info: Any, bounds: list[int], names: list[str]) -> list[StageInfo]:
    rows = []
    for k, (a, b) in enumerate(zip(bounds, bounds[1:]), start=1):
        t = sum(info.tangent[a:b]) if info is not None else math.nan
        fwd_bad = info is not None and any(a <= i < b for i, _ in info.no_forward)
        rev_bad = info is not None and any(a <= i < b for i, _ in info.no_reverse)
        rows.append(StageInfo(k, names[k - 1], plan.profile[a], plan.profile[b],
                              math.inf if fwd_bad else t, math.inf if rev_bad else t))
    return rows


def explain(func: Callable, *args: Any, argnums: _args.Argnums = 0, calibrate: bool = False,
            xla: bool = True, hessian: bool = False, sparse: bool = False, mesh: Any = None,
            mesh_axis: str | None = None, **kwargs: Any) -> Report:
    """How ``jacobian(func, argnums, mode="auto")`` accumulates at ``args``, and what the
    alternatives cost.

    Shows the planner's plan for this signature, the very object ``jacobian`` runs: the
    active width of the program at each cut considered (``print`` shows a text profile,
    ``plot`` a picture), the static costs of forward, reverse and mixed mode, which one
    runs and why, or why no cut pays. With ``xla=True`` (default) the candidate Jacobian
    programs are also compiled (not run) for XLA's ``cost_analysis()`` and
    ``memory_analysis()``. ``calibrate=True`` plans as ``jacobian(..., calibrate=True)``
    does (candidates compiled and timed) and shows the times. For a :func:`chain` the
    cuts at stage boundaries are named after the stages. Keyword arguments are passed to
    ``func`` undifferentiated.

    ``hessian=True`` explains ``hessian(func, mode="auto")`` instead: the four nestings
    priced term by term and the one that runs. ``sparse=True`` adds the sparse report
    (the detected pattern, the passes of each coloring against dense forward, reverse
    and the planner's dense plan). ``mesh=`` (and ``mesh_axis=``) prices the pure modes
    per device, as ``jacobian(mode="auto", mesh=...)`` runs them, and shows the split.

    >>> import jax.numpy as jnp
    >>> A = jnp.ones((50, 2))
    >>> r = explain(lambda x: jnp.tanh(A @ x), jnp.ones(2), xla=False)
    >>> r.in_size, r.out_size, r.candidate("fwd").passes, r.chosen
    (2, 50, '2 JVPs', 'fwd')
    """
    _check_func(func)
    where = f"explain({_args.func_name(func)})"
    _args.check_argnums(argnums, where)
    for option, value in (("calibrate", calibrate), ("xla", xla), ("hessian", hessian),
                          ("sparse", sparse)):
        _args.check_bool(value, where, option)
    devices = _devices(mesh, mesh_axis, where)
    if hessian and (calibrate or mesh is not None):
        raise ValueError(f"{where}: hessian=True explains the static choice of nesting; "
                         "calibrate= and mesh= apply to Jacobians only. Drop them.")
    _args.differentiable_positions(args, argnums, where)
    if hessian:
        report = _hessian_report(func, args, kwargs, argnums, xla, where)
    else:
        report = _jacobian_report(func, args, kwargs, argnums, calibrate, xla, where, devices)
    if sparse:
        from ._sparse import explain_sparse
        dense = report.chosen if hessian else _dense_kind(report.plan)
        report.sparse = explain_sparse(func, *args, argnums=argnums, hessian=hessian,
                                       dense_plan=dense, **kwargs)
    return report


def _dense_kind(plan: JacobianPlan) -> str:
    """The planner's dense choice (``fwd``, ``rev`` or ``mixed``), sparse set aside."""
    if plan.kind != "sparse":
        return plan.kind
    return min((k for k in ("fwd", "rev", "mixed") if k in plan.costs),
               key=lambda k: (plan.costs[k], k))


def _devices(mesh: Any, mesh_axis: str | None, where: str) -> int:
    """The number of devices along ``mesh``'s axis ``mesh_axis`` (1 without a mesh)."""
    from . import _mesh

    axis = _mesh.check(mesh, mesh_axis, False, where)
    return 1 if mesh is None else int(mesh.shape[axis])


def _chain_labels(func: Callable, args: tuple, profile: tuple) -> tuple[list[int], dict]:
    """For a :func:`chain`: where its stages end in the composed program, and the cut
    labels naming them (empty when the stages traced apart do not add up)."""
    ends = func.stage_positions(args[0]) if isinstance(func, Chain) else []
    if ends and ends[-1] != len(profile) - 1:
        ends = []
    labels = {end: f"after stage {k} ({func.names[k - 1]})"
              for k, end in enumerate(ends[:-1], start=1)}
    return ends, labels


def _jacobian_report(func, args, kwargs, argnums, calibrate, xla, where, devices) -> Report:
    from ._planner import api

    if isinstance(func, Chain):
        if kwargs or len(args) != 1:
            raise TypeError(f"{where}: a chain takes exactly one positional argument (stage "
                            f"1's input), got {len(args)} and keywords {sorted(kwargs)}.")
        args = (_args.cast_python_scalars(args[0], args[0]),)
        func.boundaries(args[0], where)  # names the stage that does not compose
    plan, traced = api.plan_jacobian(func, args, kwargs, argnums, calibrate=calibrate,
                                     where=where, devices=devices)
    if traced is None:
        traced = api.trace(func, args, kwargs, argnums, False, where)
    primal = tuple(args[p] for p in _args.normalize_argnums(argnums, len(args), where))
    report = Report(name=_args.func_name(func), argnums=argnums, in_shapes=_shapes(primal),
                    out_shapes=[describe_value(a) for a in traced.out_avals],
                    in_size=tree_size(primal), out_size=plan.out_size, candidates=[],
                    chosen=_NAMES[plan.kind], source=plan.source, reason=_reason(plan),
                    plan=plan, notes=list(plan.reasons) + ([plan.split] if plan.split else []))
    ends, labels = _chain_labels(func, args, plan.profile)
    report.cuts = [c._replace(label=labels.get(c.position, c.label))
                   for c in plan.candidates]
    run = _runner(func, args, kwargs, argnums, where) if xla else None
    report.candidates = [_candidate(plan, kind, run) for kind in _NAMES if kind in plan.costs]
    report.predicted_flops = {_NAMES[k]: v for k, v in plan.costs.items()}
    if plan.kind == "mixed":
        bounds = [0] + list(plan.cuts) + [len(plan.profile) - 1]
        names = [labels.get(b, f"eqns {a}..{b - 1}") for a, b in zip(bounds, bounds[1:])]
        report.stages = _stage_rows(plan, traced.info, bounds, names)
        report.bracketing, report.steps = plan.bracketing(), plan.describe_steps()
    if ends:
        report.stages = _stage_rows(plan, traced.info, [0] + ends, list(func.names))
    return report


_NAMES = {"fwd": "fwd", "rev": "rev", "mixed": "plan", "sparse": "sparse"}


def _runner(func, args, kwargs, argnums, where) -> tuple[Callable, list]:
    """``(make, abstract)``: ``make(variant)`` is a function of the call's array leaves
    running the plan ``variant``; ``abstract`` their shapes (for compiling, not running)."""
    from ._planner import api

    dynamic, rebuild = split_dynamic(args, kwargs)

    def make(variant: JacobianPlan) -> Callable:
        def run(*dyn):
            a, kw = rebuild(list(dyn))
            return api.run_jacobian(variant, None, func, a, kw, argnums, has_aux=False,
                                    chunk_size=None, layout="numerator", where=where)
        return run

    return make, _cost.abstract(dynamic)


def _passes(plan: JacobianPlan, kind: str) -> str:
    if kind == "sparse":
        s = plan.sparse
        return f"{s['n_jvp']} JVP, {s['n_vjp']} VJP (nnz {s['nnz']})"
    if kind == "mixed":
        counts = plan.chain.passes()
        return f"{counts['jvp']} JVP, {counts['vjp']} VJP, {counts['matmul']} matmul"
    return f"{plan.in_size} JVPs" if kind == "fwd" else f"{plan.out_size} VJPs"


def _candidate(plan: JacobianPlan, kind: str, run: tuple | None) -> Candidate:
    """The row of ``kind``, with XLA's figures of its compiled program when ``run``."""
    c = Candidate(_NAMES[kind], _passes(plan, kind), static_cost=plan.costs[kind],
                  seconds=plan.seconds.get(kind, math.nan), chosen=plan.kind == kind)
    if kind in plan.unsupported:
        c.supported, c.reason = False, plan.unsupported[kind]
    elif math.isinf(plan.costs[kind]):
        c.supported, c.reason = False, "a stage cannot run this mode"
    elif run is not None:
        cuts = tuple(x.position for x in plan.candidates) if kind == "mixed" else ()
        make, abstract = run
        _fill(c, make(dataclasses.replace(plan, kind=kind, cuts=cuts)), abstract)
    return c


def _reason(plan: JacobianPlan) -> str:
    costs = ", ".join(f"{_NAMES[k]} {_num(v)}" for k, v in plan.costs.items())
    if plan.kind == "mixed":
        widths = ", ".join(str(plan.profile[p]) for p in plan.cuts)
        reason = f"mixed mode at {len(plan.cuts)} cut(s) of width {widths}; static costs {costs}"
    elif plan.kind == "sparse":
        reason = (f"sparse Jacobian ({plan.sparse['plan']}, nnz {plan.sparse['nnz']}), "
                  f"decompressed to dense; static costs {costs}")
    else:
        reason = f"{'forward' if plan.kind == 'fwd' else 'reverse'} mode; static costs {costs}"
    for m, why in plan.unsupported.items():
        reason += f"; {m} cannot run: {why}"
    if plan.seconds:
        reason += "; measured " + ", ".join(
            f"{_NAMES[k]} {t * 1e3:.3g} ms" for k, t in plan.seconds.items())
    return reason


def _on_leaves(g: Callable, rebuild: Callable) -> Callable:
    """``g`` as a function of the call's array leaves (the rest closed over)."""
    def run(*dyn):
        a, kw = rebuild(list(dyn))
        return g(*a, **kw)
    return run


def _hessian_report(func, args, kwargs, argnums, xla, where) -> Report:
    """The report of ``hessian(func, mode="auto")``: the four nestings priced."""
    from ._planner import api
    from ._higher import _nesting

    plan = api.plan_hessian(func, args, kwargs, argnums, where=where)
    primal = tuple(args[p] for p in _args.normalize_argnums(argnums, len(args), where))
    out = jax.eval_shape(lambda *a: func(*a, **kwargs), *args)
    dynamic, rebuild = split_dynamic(args, kwargs)
    candidates = []
    for mode, cost in plan.costs.items():
        c = Candidate(mode, f"{plan.n} outer passes", static_cost=cost, chosen=mode == plan.mode)
        if mode in plan.unsupported:
            c.supported, c.reason = False, plan.unsupported[mode]
        elif xla:
            _fill(c, _on_leaves(_nesting(func, mode, argnums, None), rebuild),
                  _cost.abstract(dynamic))
        candidates.append(c)
    return Report(name=_args.func_name(func), argnums=argnums, in_shapes=_shapes(primal),
                  out_shapes=_shapes(out), in_size=plan.n, out_size=plan.n,
                  candidates=candidates, chosen=plan.mode, source=plan.source,
                  reason=f"the cheapest nesting that runs: {plan.describe()}", hessian=plan)
