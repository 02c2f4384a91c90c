"""Sparse Jacobians and Hessians (private; the public names are re-exported by
:mod:`functorch_lite`).

- :mod:`functorch_lite._jaxpr.blocks` reads a block-diagonal pattern from the jaxpr as
  axis maps, with its colorings in closed form; :mod:`functorch_lite._jaxpr.sparsity`
  reads any other pattern as index sets;
- :mod:`.coloring` colors it (columns, rows, bicoloring, star);
- :mod:`.pattern` holds it (:class:`Pattern`) with its plan;
- :mod:`.driver` runs the compressed passes and decompresses;
- :mod:`.report` builds the ``explain(..., sparse=True)`` text and the cost the planner
  compares with dense plans.
"""

from .driver import hessian, jacobian, program_pattern, sparsity
from .pattern import Pattern, Plan
from .report import explain_sparse, sparse_cost

__all__ = ["jacobian", "hessian", "sparsity", "program_pattern", "Pattern", "Plan", "explain_sparse", "sparse_cost"]
