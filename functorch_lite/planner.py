"""The matrix-chain bracketing of Jacobians, kept under its old name.

The planner lives in :mod:`functorch_lite._planner` (cost model, cut finding, plans);
this module re-exports its chain dynamic programme, :func:`plan_chain`.

>>> print(plan_chain([4, 2, 4], [8.0, 4.0], [8.0, 4.0]).bracketing())
J2 · J1
"""

from ._planner.chain import Plan as Plan, Step as Step, plan_chain as plan_chain

__all__ = ["plan_chain", "Plan", "Step"]
