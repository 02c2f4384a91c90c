"""The planner's entry points: plan a Jacobian or a Hessian, and run the plan.

:func:`plan_jacobian` traces the function once at the call's shapes and dtypes
(:func:`functorch_lite._jaxpr.stage`: ``make_jaxpr``'s program, through
``jax.jit(f).trace``), reads the program (:mod:`functorch_lite._jaxpr.cuts`), probes a
mode by tracing only where the program holds something that mode may not handle (a
``custom_vjp`` for forward mode, a ``while_loop`` for reverse mode), and decides by the
static model (:mod:`functorch_lite._planner.model`). No clock is read unless
``calibrate=True`` asked for it. :func:`run_jacobian` executes exactly that plan.

Plans are cached weakly on the function (``_caches.weak``: the entry dies with the
function) under a key of what determines them: the arguments' structure, shapes and
dtypes, the values of non-array arguments (a Python ``bool`` can change the program),
argnums, has_aux, chunk_size, calibrate, the mesh's device count and axis, and whether
Taylor mode is tracing. A plan holds numbers and strings only. A cached mixed plan is checked against the
program traced for the call before it runs (a function whose program changed is
planned again). A sparse plan's pattern is read from the program the planner traced
and reused by the run of the same call; a sparse plan from the cache reads the
call's program again (its constants shape the pattern).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from .. import _args, _caches, _cost
from .._jaxpr import cuts as _cuts
from .._jaxpr import stage as _stage
from .._mode import in_taylor_mode
from .._jacobians import BY_MODE, _closed_over, pure_mode, split_dynamic, to_layout
from . import model as _model
from .model import decide
from .plans import HessianPlan, JacobianPlan
from .run import matrix_to_tree, run_mixed

__all__ = ["plan_jacobian", "run_jacobian", "plan_hessian", "clear", "Traced"]

_jacobian_plans = _caches.weak("planner.jacobian", maxsize=512)
_hessian_plans = _caches.weak("planner.hessian", maxsize=512)


def clear() -> None:
    """Forget the planner's plans (``fl.clear_caches()`` clears these with all others)."""
    _jacobian_plans.clear()
    _hessian_plans.clear()


def _argnums_key(argnums: Any) -> Any:
    return tuple(argnums) if isinstance(argnums, list) else argnums


def plan_key(args: tuple, kwargs: dict, argnums: Any, *options: Any) -> Any:
    """The cache key of a plan (hashable, holds no array: shapes, dtypes, values of
    non-array leaves), or ``None`` when some leaf is unhashable."""
    try:
        key = (_cost.signature((args, kwargs)), _argnums_key(argnums), options,
               in_taylor_mode())
        hash(key)
    except TypeError:
        return None
    return key


# ``flat(*leaves)``'s signature: JAX reads it (``inspect.signature``) for the trace's debug
# info; set on each new ``flat`` it spares that lookup (~6 us a call).
_FLAT_SIGNATURE = inspect.Signature([inspect.Parameter("leaves", inspect.Parameter.VAR_POSITIONAL)])


@dataclasses.dataclass
class Traced:
    """The function read at one call: its program (``closed``, and flattened: ``prog``)
    and how to rebuild pytrees; ``pattern``: the sparsity pattern the planner detected
    in ``closed``, which the run of the same call reuses. Lives for one call only (it
    holds the call's arrays)."""

    closed: Any
    prog: _cuts.Program
    info: _cuts.Analysis
    n_out: int
    in_tree: Any
    out_tree: Any
    aux_tree: Any
    out_avals: list
    primal: Any
    pattern: Any = None


def trace(func: Callable, args: tuple, kwargs: dict, argnums: Any, has_aux: bool,
          where: str) -> Traced:
    """The program of ``func`` in its differentiated arguments (``_jaxpr.stage``),
    flattened and analysed. User mistakes (integer outputs, bad aux) raise here, naming
    ``where``."""
    positions = _args.normalize_argnums(argnums, len(args), where)
    as_tuple = isinstance(argnums, (tuple, list))
    g = _closed_over(func, args, kwargs, positions, as_tuple, has_aux, where)
    diff = tuple(args[p] for p in positions)
    primal = diff if as_tuple else diff[0]
    leaves, in_tree = jax.tree_util.tree_flatten(primal)
    store: dict = {}

    def flat(*ls):
        out, aux = g(jax.tree_util.tree_unflatten(in_tree, ls))
        o_leaves, o_tree = jax.tree_util.tree_flatten(out)
        a_leaves, a_tree = jax.tree_util.tree_flatten(aux)
        store.update(out_tree=o_tree, aux_tree=a_tree, n_out=len(o_leaves))
        return o_leaves + a_leaves

    flat.__signature__ = _FLAT_SIGNATURE   # what inspect.signature would find, known already
    closed = _stage(flat, *leaves)
    if store["n_out"] == 0:
        raise ValueError(f"{where}: the function returned no arrays (None or an empty "
                         "pytree), so there is nothing to differentiate; return the "
                         "floating-point values whose Jacobian you want.")
    prog = _cuts.flatten(closed)
    info = _cuts.analyse(prog, store["n_out"])
    return Traced(closed, prog, info, store["n_out"], in_tree, store["out_tree"], store["aux_tree"],
                  list(closed.out_avals[:store["n_out"]]), primal)


def _probe(func: Callable, mode: str, args: tuple, kwargs: dict, argnums: Any,
           has_aux: bool) -> str | None:
    """Trace (abstractly) ``jacfwd``/``jacrev`` of ``func``; the error's first line if it
    cannot run, else None."""
    dynamic, rebuild = split_dynamic(args, kwargs)
    jac = BY_MODE[mode](func, argnums, has_aux=has_aux)

    def run(*dyn):
        a, kw = rebuild(list(dyn))
        return jac(*a, **kw)

    try:
        jax.eval_shape(run, *_cost.abstract(dynamic))
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot run this way"
        return _args.first_line(exc)
    return None


def _complex(prog: _cuts.Program) -> bool:
    return any(d.kind == "c" for d in prog.dtypes)


def _unsupported(func, info, args, kwargs, argnums, has_aux, where) -> dict[str, str]:
    """The modes probing finds cannot run ``func`` (probed only where the program holds
    something doubtful for that mode)."""
    unsupported = {}
    for mode, doubtful in (("fwd", info.no_forward), ("rev", info.no_reverse)):
        if doubtful:
            reason = _probe(func, mode, args, kwargs, argnums, has_aux)
            if reason is not None:
                unsupported[mode] = reason
    if len(unsupported) == 2:
        raise TypeError(f"{where}: neither forward nor "
                        f"reverse mode can differentiate this function: fwd: "
                        f"{unsupported['fwd']}; rev: {unsupported['rev']}")
    return unsupported


def _decide(func, traced: Traced, args, kwargs, argnums, has_aux, where,
            devices: int = 1) -> JacobianPlan:
    info = traced.info
    unsupported = _unsupported(func, info, args, kwargs, argnums, has_aux, where)
    allow, why = True, ""
    if _complex(traced.prog):
        allow, why = False, "complex values: mixed mode is planned for real programs only"
    elif devices > 1:
        allow, why = False, f"mesh= splits the pure modes over {devices} devices (a mixed plan is not split)"
    plan = decide(traced.prog, info, unsupported=unsupported, allow_mixed=allow,
                  why_not_mixed=why, devices=devices)
    if allow and not unsupported and _sparse_applies(traced, argnums, plan.cost):
        plan = _consider_sparse(plan, func, traced, args, kwargs, argnums)
    if devices > 1:
        passes = plan.in_size if plan.kind == "fwd" else plan.out_size
        plan.split = (f"{passes} {'JVP' if plan.kind == 'fwd' else 'VJP'} passes over "
                      f"{devices} devices: {-(-passes // devices)} per device")
    return plan


def _sparse_applies(traced: Traced, argnums: Any, dense_cost: float) -> bool:
    """The planner tries sparsity for one array in, one array out (the dense result
    keeps its layout), when the static dependency bound and the dense plan's cost say
    it may pay (:func:`~functorch_lite._planner.model.may_be_sparse`)."""
    return (isinstance(argnums, int) and traced.in_tree.num_leaves == 1
            and traced.in_tree.num_nodes == 1 and traced.n_out == 1
            and traced.out_tree.num_nodes == 1
            and _model.may_be_sparse(traced.info, dense_cost))


def _consider_sparse(plan: JacobianPlan, func, traced: Traced, args, kwargs,
                     argnums) -> JacobianPlan:
    """``plan``, or the sparse plan where the detected pattern's coloring is predicted
    at least ``1 / PAY`` times cheaper than ``plan`` (the same static model)."""
    from .. import _sparse

    try:   # read from the program traced for this decision (no second trace)
        pattern = _sparse.program_pattern(traced.closed, _args.func_name(func), traced.prog)
    except Exception as exc:  # noqa: BLE001 - detection failed: stay dense, say why
        plan.reasons.append(f"sparsity not detected: {_args.first_line(exc)}")
        return plan
    traced.pattern = pattern
    colored = pattern.plan("auto")
    cost = _model.sparse_cost(traced.info, colored.n_jvp, colored.n_vjp)
    info = {"nnz": int(pattern.nnz), "n_jvp": colored.n_jvp, "n_vjp": colored.n_vjp,
            "plan": colored.describe()}
    # ``plan`` was made for this call (not cached yet): completed in place
    if cost <= _model.PAY * plan.cost:
        plan.kind, plan.cuts = "sparse", ()
    else:
        plan.reasons.append(f"the sparse plan ({colored.describe()}, cost {cost:.3g}) is "
                            f"not {1 / _model.PAY:g}x cheaper than {plan.kind} ({plan.cost:.3g})")
    plan.costs["sparse"], plan.sparse = cost, info
    return plan


def _fits(plan: JacobianPlan, traced: Traced) -> bool:
    info = traced.info
    return (plan.n_nodes == len(traced.prog.nodes)
            and all(info.widths[c] == plan.profile[c] for c in plan.cuts))


def plan_jacobian(func: Callable, args: tuple, kwargs: dict | None = None,
                  argnums: Any = 0, *, has_aux: bool = False, chunk_size: int | None = None,
                  calibrate: bool = False, where: str | None = None,
                  traced: Traced | None = None,
                  devices: int = 1) -> tuple[JacobianPlan, Traced | None]:
    """The plan for ``jacobian(func, argnums, mode="auto")`` at ``args`` (cached), and the
    program traced to make it (``None`` when the plan came from the cache). ``devices``:
    the device count of the mesh axis the passes are split over (``mesh=``)."""
    kwargs = dict(kwargs or {})
    where = where or f"jacobian({_args.func_name(func)})(*args)"
    key = plan_key(args, kwargs, argnums, has_aux, chunk_size, bool(calibrate), devices)
    plan = _jacobian_plans.get(func, key) if key is not None else None
    if plan is not None:
        return plan, traced
    if calibrate:
        _check_concrete(args, kwargs, where)
    if traced is None:
        traced = trace(func, args, kwargs, argnums, has_aux, where)
    if calibrate:
        _check_no_closed_tracers(traced, where)
    plan = _decide(func, traced, args, kwargs, argnums, has_aux, where, devices)
    if calibrate:
        plan = _calibrated(plan, func, args, kwargs, argnums, has_aux, chunk_size, where)
    if key is not None:
        _jacobian_plans.put(func, key, plan)
    return plan, traced


def run_jacobian(plan: JacobianPlan, traced: Traced | None, func: Callable, args: tuple,
                 kwargs: dict, argnums: Any, *, has_aux: bool, chunk_size: int | None,
                 layout: str, where: str) -> Any:
    """Execute ``plan`` at ``args``: a pure mode through :func:`jacfwd`/:func:`jacrev`,
    a mixed plan on the program traced for this call."""
    if plan.kind in BY_MODE:
        jac = BY_MODE[plan.kind](func, argnums, has_aux=has_aux, chunk_size=chunk_size,
                                 layout=layout)
        return jac(*args, **kwargs)
    if plan.kind == "sparse":  # compressed passes, decompressed to the dense result
        from .. import _sparse
        # the pattern planning just read from this call's program; a plan from the cache
        # reads the program again (it may have changed since: its constants shape it)
        pattern = traced.pattern if traced is not None else None
        return _sparse.jacobian(func, argnums, layout=layout, chunk_size=chunk_size,
                                has_aux=has_aux, output="dense",
                                sparsity=pattern)(*args, **kwargs)
    if traced is None:
        traced = trace(func, args, kwargs, argnums, has_aux, where)
    if not _fits(plan, traced):  # the function's program changed since it was planned
        plan = _decide(func, traced, args, kwargs, argnums, has_aux, where)
        if plan.kind != "mixed":
            return run_jacobian(plan, traced, func, args, kwargs, argnums, has_aux=has_aux,
                                chunk_size=chunk_size, layout=layout, where=where)
    leaves = jax.tree_util.tree_leaves(traced.primal)
    leaves = [jax.numpy.asarray(x) for x in leaves]
    matrix, outs = run_mixed(plan, traced.prog, traced.info, leaves, traced.n_out, chunk_size)
    jac = matrix_to_tree(matrix, jax.tree_util.tree_unflatten(traced.out_tree, traced.out_avals),
                         traced.primal)
    jac = to_layout(jac, traced.primal, layout)
    if has_aux:
        return jac, jax.tree_util.tree_unflatten(traced.aux_tree, outs[traced.n_out:])
    return jac


# ----------------------------------------------------------------------------- calibration


def _is_tracer(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _check_concrete(args: tuple, kwargs: dict, where: str) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path((args, kwargs)):
        if _is_tracer(leaf):
            raise ValueError(
                f"{where}: calibrate=True times the candidate programs on the arguments, "
                f"but {'args' if path[0].idx == 0 else 'kwargs'}{jax.tree_util.keystr(path[1:])} "
                "is a tracer (the call is inside jax.jit, vmap or grad). Call it outside the "
                "transformation, or drop calibrate (the static model needs no values).")


def _check_no_closed_tracers(traced: Traced, where: str) -> None:
    if any(_is_tracer(c) for c in traced.prog.consts.values()):
        raise ValueError(
            f"{where}: calibrate=True needs a function that can run on its own, but it "
            "closes over a tracer of an enclosing jax.jit/vmap/grad. Drop calibrate (the "
            "static model needs no values) or calibrate outside the transformation.")


def _calibrated(plan: JacobianPlan, func, args, kwargs, argnums, has_aux, chunk_size,
                where) -> JacobianPlan:
    """``plan`` with its kind chosen by timing the supported candidates (compiled,
    interleaved, fastest wins)."""
    dynamic, rebuild = split_dynamic(args, kwargs)
    positions = tuple(c.position for c in plan.candidates)
    kinds = [k for k in ("fwd", "rev") if k not in plan.unsupported]
    if "mixed" in plan.costs:
        kinds.append("mixed")
    runs = {}
    for kind in kinds:
        variant = dataclasses.replace(plan, kind=kind, cuts=positions if kind == "mixed" else ())

        def run(*dyn, variant=variant):
            a, kw = rebuild(list(dyn))
            return run_jacobian(variant, None, func, a, kw, argnums, has_aux=has_aux,
                                chunk_size=chunk_size, layout="numerator", where=where)

        compiled = jax.jit(run).lower(*dynamic).compile()
        runs[kind] = (lambda c=compiled: c(*dynamic))
    seconds = _cost.race(runs)
    best = min(seconds, key=seconds.get)
    return dataclasses.replace(plan, kind=best, cuts=positions if best == "mixed" else (),
                               source="calibration", seconds=seconds)


# ----------------------------------------------------------------------------- hessian

NESTINGS = ("fwd-over-rev", "rev-over-rev", "fwd-over-fwd", "rev-over-fwd")


def _nesting(func: Callable, mode: str, argnums: Any, chunk_size: int | None = None) -> Callable:
    outer, _, inner = mode.split("-")
    return BY_MODE[outer](BY_MODE[inner](func, argnums), argnums, chunk_size=chunk_size)


def plan_hessian(func: Callable, args: tuple, kwargs: dict | None = None,
                 argnums: Any = 0, where: str | None = None) -> HessianPlan:
    """The nesting ``hessian(func, mode="auto")`` runs at ``args`` (cached).

    The inner derivative (``jacrev`` or ``jacfwd`` of ``func``) is traced; a nesting
    whose inner derivative does not trace cannot run. On each inner program the static
    model prices the outer Jacobian forward and reverse
    (:func:`~functorch_lite._planner.model.nesting_terms`: ``n`` passes, the primal, and
    the transposed write or the store): the inner ``jacfwd`` program carries ``n``
    tangents, so the nestings over it cost about ``n`` times more. Outer modes the
    program makes doubtful (a ``custom_vjp`` inside the gradient, a ``while_loop``) are
    probed by tracing the whole nesting. The cheapest nesting that runs wins; ties go
    to the order fwd-over-rev, rev-over-rev, fwd-over-fwd, rev-over-fwd.
    """
    kwargs = dict(kwargs or {})
    where = where or f"hessian({_args.func_name(func)})(*args)"
    key = plan_key(args, kwargs, argnums)
    plan = _hessian_plans.get(func, key) if key is not None else None
    if plan is not None:
        return plan
    positions = _args.normalize_argnums(argnums, len(args), where)
    n = sum(math.prod(np.shape(x)) for p in positions for x in jax.tree_util.tree_leaves(args[p]))
    costs, terms, unsupported, probed, errors = {}, {}, {}, [], []
    for inner in ("rev", "fwd"):
        try:
            traced = trace(pure_mode(inner, func, argnums, transform="hessian"), args, kwargs,
                           argnums, False, where)
        except Exception as exc:  # noqa: BLE001 - this inner mode cannot run
            errors.append(exc)
            for outer in ("fwd", "rev"):
                unsupported[f"{outer}-over-{inner}"] = _args.first_line(exc)
                costs[f"{outer}-over-{inner}"] = math.inf
            continue
        info = traced.info
        for outer, doubtful in (("fwd", info.no_forward), ("rev", info.no_reverse)):
            mode = f"{outer}-over-{inner}"
            terms[mode] = _model.nesting_terms(info, outer)
            costs[mode] = terms[mode].total
            reason = _probe_nesting(func, mode, args, kwargs, argnums) if doubtful else None
            probed += [mode] if doubtful else []
            if reason is not None:
                unsupported[mode], costs[mode] = reason, math.inf
    ok = [m for m in NESTINGS if m not in unsupported]
    if not ok:
        if len(errors) == 2:
            raise errors[0]  # the function itself fails: its own error, unchanged
        raise TypeError(f"{where}: no nesting of forward and reverse mode can take this "
                        "Hessian: " + "; ".join(f"{m}: {r}" for m, r in unsupported.items()))
    chosen = min(ok, key=lambda m: (costs[m], NESTINGS.index(m)))
    plan = HessianPlan(mode=chosen, n=n, costs={m: costs[m] for m in NESTINGS},
                       unsupported=unsupported, probed=tuple(probed), terms=terms)
    if key is not None:
        _hessian_plans.put(func, key, plan)
    return plan


def _probe_nesting(func, mode, args, kwargs, argnums) -> str | None:
    dynamic, rebuild = split_dynamic(args, kwargs)
    nested = _nesting(func, mode, argnums)

    def run(*dyn):
        a, kw = rebuild(list(dyn))
        return nested(*a, **kw)

    try:
        jax.eval_shape(run, *_cost.abstract(dynamic))
    except Exception as exc:  # noqa: BLE001
        return _args.first_line(exc)
    return None

