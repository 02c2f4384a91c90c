"""The planner: every automatic choice of accumulation, made by reading the program.

- :mod:`.chain`: the matrix-chain dynamic programme over a chain of Jacobians;
- :mod:`.model`: the static cost model, the cut candidates and the choice;
- :mod:`.plans`: the plan objects (numbers and strings only; cached, and shown by
  ``explain`` exactly as they run);
- :mod:`.run`: executing a mixed plan on the traced program;
- :mod:`.api`: ``plan_jacobian`` / ``run_jacobian`` / ``plan_hessian`` (tracing, probing,
  caching, opt-in calibration). Imported lazily by ``jacobians`` and ``higher``.
"""

from .chain import Plan as Plan, Step as Step, plan_chain as plan_chain
from .plans import Cut as Cut, HessianPlan as HessianPlan, JacobianPlan as JacobianPlan
