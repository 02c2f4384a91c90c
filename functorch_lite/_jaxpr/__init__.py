"""The one place that reads jaxpr structure (public JAX only: ``jax.make_jaxpr``,
``jax.jit(...).trace``, ``jax.extend.core``).

When JAX changes how programs are staged, this package is the only one to update.
Each reader of the program lives in its own module here:

- ``cuts``      narrow vertex cuts of a program, for the planner's mixed mode;
- ``sparsity``  index-set propagation, for sparse Jacobians and Hessians;
- ``blocks``    axis maps, for block-diagonal Jacobian patterns without index sets;
- ``taylor``    collapsed Taylor-mode propagation, for differential operators;
- ``graph``     equation labels, avals and inlined calls, for the pictures of ``viz``.

This module holds what they share: staging a flat function, walking equations, and
telling literals, variables and sub-jaxprs apart.

>>> import jax.numpy as jnp
>>> closed = stage(lambda x: jnp.sin(x) * 2.0, jnp.ones(3))
>>> [primitive_name(e) for e in closed.jaxpr.eqns]
['sin', 'mul']
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.extend.core as jcore

ClosedJaxpr = jcore.ClosedJaxpr
Jaxpr = jcore.Jaxpr
JaxprEqn = jcore.JaxprEqn
Literal = jcore.Literal
Var = jcore.Var

__all__ = ["stage", "primitive_name", "is_literal", "sub_jaxprs", "walk", "evaluate",
           "ClosedJaxpr", "Jaxpr", "JaxprEqn", "Literal", "Var"]


def stage(func: Callable, *args: Any) -> ClosedJaxpr:
    """``jax.make_jaxpr(func)(*args)``: the closed jaxpr of ``func`` at these avals.

    Staged as ``jax.jit(func).trace(*args).jaxpr`` (the public AOT stages), the very
    program ``make_jaxpr`` returns, without the wrapper ``make_jaxpr`` builds around
    ``func`` on each call (~20 us of a 270 us trace of a small layer). One case
    differs: a function that closes over tracers of an enclosing ``jit``/``vmap``/
    ``grad`` gets them as extra inputs from ``jit``, where ``make_jaxpr`` (and every
    reader here) keeps them as constants. Arguments that are tracers say an enclosing
    trace is running: those go to ``make_jaxpr`` at once; a program with more inputs
    than ``args`` has leaves (tracers closed over by a function called with concrete
    arguments) is traced again by ``make_jaxpr``."""
    leaves = jax.tree_util.tree_leaves(args)
    if _plain_callable(func) and not any(isinstance(a, jax.core.Tracer) for a in leaves):
        closed = jax.jit(func).trace(*args).jaxpr
        if len(closed.jaxpr.invars) == len(leaves):
            return closed
    return jax.make_jaxpr(func)(*args)


def _plain_callable(func: Callable) -> bool:
    """``jax.jit`` takes ``func`` as it is (hashable and weakly referable)."""
    try:
        hash(func)
        weakref.ref(func)
    except TypeError:
        return False
    return True


def primitive_name(eqn: JaxprEqn) -> str:
    """The name of the primitive an equation applies (``"dot_general"``, ``"sin"``...)."""
    return eqn.primitive.name


def is_literal(atom: Any) -> bool:
    """True for an inline constant (a :class:`Literal`), false for a variable."""
    return isinstance(atom, Literal)


def sub_jaxprs(eqn: JaxprEqn) -> list:
    """The jaxprs held in an equation's parameters (``pjit``, ``cond`` branches, ``scan``...)."""
    return list(jcore.jaxprs_in_params(eqn.params))


def walk(jaxpr: Jaxpr) -> Iterator[JaxprEqn]:
    """Every equation of ``jaxpr`` and, depth first, of the jaxprs inside its equations."""
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in sub_jaxprs(eqn):
            yield from walk(getattr(sub, "jaxpr", sub))


def evaluate(closed: ClosedJaxpr, *args: Any) -> list:
    """Run a closed jaxpr on arguments (``jax.core.eval_jaxpr``); a list of outputs."""
    return jax.core.eval_jaxpr(closed.jaxpr, closed.consts, *args)
