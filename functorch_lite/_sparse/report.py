"""What ``explain(f, x, sparse=True)`` says, and the cost the planner compares.

The cost model is static and deterministic, in units of one evaluation of ``f``
(the planner may pass its own per-pass costs, e.g. XLA FLOPs):

- dense forward: ``n`` JVPs, each ``jvp_cost``;
- dense reverse: one stored forward pass (``eval_cost``) and ``m`` VJPs (``vjp_cost``);
- sparse: ``p`` JVPs and, if the plan has VJPs, one stored forward pass and ``q`` VJPs,
  plus the decompression gather (``nnz`` loads, ``gather_cost`` each, negligible).

>>> import numpy as np
>>> from functorch_lite._sparse.pattern import Pattern
>>> c = sparse_cost(Pattern(np.eye(100, dtype=bool)))
>>> c["passes"], c["sparse"] < c["fwd"]
(1, True)
"""

from __future__ import annotations

from typing import Any

from .pattern import Pattern

__all__ = ["sparse_cost", "explain_sparse"]

JVP_COST, VJP_COST, EVAL_COST, GATHER_COST = 2.0, 3.0, 1.0, 1e-6


def sparse_cost(pattern: Pattern, *, mode: str = "auto", jvp_cost: float = JVP_COST,
                vjp_cost: float = VJP_COST, eval_cost: float = EVAL_COST,
                gather_cost: float = GATHER_COST) -> dict[str, Any]:
    """Costs of the sparse plan and of the dense pure modes, same units.

    Returns ``{"sparse", "fwd", "rev", "best", "plan", "passes", "n_jvp", "n_vjp"}``;
    ``best`` is the cheapest of ``"sparse"``, ``"fwd"``, ``"rev"`` (ties: sparse).
    """
    m, n = pattern.matrix_shape
    plan = pattern.plan("star" if pattern.symmetric else mode)
    sparse = plan.n_jvp * jvp_cost + gather_cost * pattern.nnz
    if plan.n_vjp:
        sparse += eval_cost + plan.n_vjp * vjp_cost
    fwd = n * jvp_cost
    rev = eval_cost + m * vjp_cost
    costs = {"sparse": sparse, "fwd": fwd, "rev": rev}
    best = min(costs, key=lambda k: (costs[k], k != "sparse"))
    return dict(costs, best=best, plan=plan.describe(), passes=plan.passes,
                n_jvp=plan.n_jvp, n_vjp=plan.n_vjp)


def _dense_row(dense_plan: str, m: int, n: int, cost: dict) -> tuple:
    """Passes and cost of the planner's dense plan in this table's units: its outer mode
    (``"fwd"``, ``"rev"``, or a Hessian nesting ``"fwd-over-rev"``...) priced as that
    pure mode; a mixed plan is not priced by this model (``explain`` shows its cost)."""
    outer = dense_plan.split("-")[0]
    if outer == "fwd":
        return n, cost["fwd"]
    if outer == "rev":
        return m, cost["rev"]
    return None, None


def explain_sparse(func_or_pattern: Any, *args: Any, argnums: Any = 0, hessian: bool = False,
                   dense_plan: str | None = None, **kwargs: Any) -> str:
    """The text of ``explain(f, x, sparse=True)``: the pattern (spy plot), the passes of
    each coloring against dense forward and reverse (and the planner's dense plan, when
    given as ``dense_plan``), and the relative costs. Takes a :class:`Pattern`, or a
    function and its arguments (detected as :func:`functorch_lite.sparsity` does).

    >>> import jax.numpy as jnp
    >>> text = explain_sparse(lambda x: x[1:] * x[:-1], jnp.ones(50))
    >>> "columns colored (JVPs)" in text and "chosen: 2 JVPs" in text
    True
    """
    if isinstance(func_or_pattern, Pattern):
        pattern = func_or_pattern
    else:
        from .driver import sparsity
        pattern = sparsity(func_or_pattern, *args, argnums=argnums, hessian=hessian, **kwargs)
    m, n = pattern.matrix_shape
    p = pattern.passes()
    cost = sparse_cost(pattern)
    kind = "Hessian" if pattern.symmetric else "Jacobian"
    rows = [("dense forward (jacfwd)", n, cost["fwd"]),
            ("dense reverse (jacrev)", m, cost["rev"])]
    if dense_plan:
        rows.append((f"planner's dense plan: {dense_plan}", *_dense_row(dense_plan, m, n, cost)))
    rows.append(("columns colored (JVPs)", p["fwd"], p["fwd"] * JVP_COST))
    rows.append(("rows colored (VJPs)", p["rev"], EVAL_COST + p["rev"] * VJP_COST))
    if "bi" in p:
        rows.append(("bicoloring (JVPs + VJPs)", p["bi"], None))
    if "star" in p:
        rows.append(("star coloring (HVPs)", p["star"], p["star"] * JVP_COST))
    width = max(28, 2 + max(len(label) for label, _, _ in rows))
    lines = [f"sparse {kind} of {pattern.name}: {m} x {n}, nnz {pattern.nnz} "
             f"(density {pattern.density:.3g}), pattern from {pattern.source}",
             "",
             f"  {'accumulation':<{width}}{'passes':>8}{'cost (f evals)':>16}"]
    for label, passes, c in rows:
        lines.append(f"  {label:<{width}}{'' if passes is None else passes:>8}"
                     f"{'' if c is None else f'{c:>16.4g}'}")
    lines += ["", f"  chosen: {cost['plan']}; cheapest by the cost model: {cost['best']}", "",
              pattern.spy()]
    return "\n".join(lines)
