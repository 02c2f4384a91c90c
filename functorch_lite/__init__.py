"""functorch_lite: the torch.func programming model on JAX.

>>> import jax.numpy as jnp
>>> import functorch_lite as fl
>>> fl.grad(lambda x: (x * x).sum())(jnp.array([1.0, 2.0]))
Array([2., 4.], dtype=float32)
"""

from . import nn as nn, train as train
from ._caches import clear_caches as clear_caches
from ._porting import functional_call as functional_call, stack_module_state as stack_module_state
from ._accumulation import Chain as Chain, chain as chain
from ._explanation import Report as Report, explain as explain
from ._planner.plans import HessianPlan as HessianPlan, JacobianPlan as JacobianPlan
from ._check import GradCheckError as GradCheckError, GradCheckReport as GradCheckReport, check_grad as check_grad
from ._higher import (
    hessian as hessian,
    NestingFallbackWarning as NestingFallbackWarning,
    hessian_diag as hessian_diag,
    hvp as hvp,
    vhp as vhp,
)
from ._operators import (
    OperatorCost as OperatorCost,
    UnsupportedPrimitiveError as UnsupportedPrimitiveError,
    biharmonic as biharmonic,
    diff_operator as diff_operator,
    divergence as divergence,
    laplacian as laplacian,
)
from ._jaxpr.sparsity import SparsityWarning as SparsityWarning
from ._sparse import Pattern as Pattern, sparsity as sparsity
from ._jacobians import jacfwd as jacfwd, jacobian as jacobian, jacrev as jacrev
from ._taylor import TaylorFallbackWarning as TaylorFallbackWarning, derivative as derivative, taylor as taylor
from ._transforms import (
    grad as grad,
    grad_and_value as grad_and_value,
    jvp as jvp,
    linearize as linearize,
    value_and_grad as value_and_grad,
    vjp as vjp,
    vmap as vmap,
)
from ._viz import ComputationGraph as ComputationGraph, graph as graph

# The public names: the documentation site has one reference entry per name (and per
# public name of the nn and train modules); tests/test_docs_site.py checks it.
__all__ = [
    # torch.func transforms
    "grad", "grad_and_value", "value_and_grad", "vjp", "jvp", "linearize", "vmap",
    # porting helpers
    "functional_call", "stack_module_state",
    # Jacobians and accumulation
    "jacrev", "jacfwd", "jacobian", "chain", "Chain", "explain", "Report", "JacobianPlan",
    "HessianPlan",
    # higher order
    "hessian", "hvp", "vhp", "hessian_diag", "derivative", "taylor", "NestingFallbackWarning",
    "TaylorFallbackWarning",
    # sparse Jacobians and Hessians
    "sparsity", "Pattern", "SparsityWarning",
    # differential operators
    "laplacian", "diff_operator", "biharmonic", "divergence", "OperatorCost",
    "UnsupportedPrimitiveError",
    # checking
    "check_grad", "GradCheckReport", "GradCheckError",
    # pictures
    "graph", "ComputationGraph",
    # caches
    "clear_caches",
    # modules
    "nn", "train",
]

__version__ = "0.1.0"
