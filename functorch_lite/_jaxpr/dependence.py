"""Which outputs of a program depend on its inputs (for ``jvp(strict=True)``).

A variable depends on the inputs when it is an input or an equation computing it reads
one that does; an equation with sub-jaxprs counts as reading all of its operands
(conservative: it may report a dependence that a finer reading would not).

>>> import jax.numpy as jnp
>>> independent_outputs(lambda x: [x * 2.0, jnp.zeros(3)], jnp.ones(3))
[False, True]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import is_literal, stage


def independent_outputs(func: Callable, *args: Any) -> list[bool]:
    """For each output of ``func`` (a flat list), whether it is independent of ``args``."""
    closed = stage(func, *args)
    jaxpr = closed.jaxpr
    dependent = set(jaxpr.invars)
    for eqn in jaxpr.eqns:
        if any(not is_literal(v) and v in dependent for v in eqn.invars):
            dependent.update(eqn.outvars)
    return [is_literal(v) or v not in dependent for v in jaxpr.outvars]
