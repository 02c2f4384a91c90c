"""What ``jax.experimental.jet`` can propagate, read from the jaxpr (for
:mod:`functorch_lite._taylor`).

``jet`` has a rule per primitive (``jet.jet_rules``); a primitive the input reaches
without one makes it fail, and a ``custom_jvp``/``custom_vjp`` call is one it would
silently differentiate through its primal, ignoring the custom rule. This module names
those primitives, so :mod:`functorch_lite._taylor` can fall back to nested
differentiation before (or after) ``jet`` fails; it is the place to update when JAX
renames the primitives or changes how ``jet`` reports a missing rule.

>>> import jax.numpy as jnp
>>> from functorch_lite._jaxpr import stage
>>> blockers(stage(lambda x: jnp.tan(x) * 2.0, jnp.ones(3)))
['tan']
>>> blockers(stage(jnp.sinc, jnp.ones(3)))
['custom_jvp_call of _sinc_maclaurin (jet would ignore its custom rule)']
"""

from __future__ import annotations

from jax.experimental import jet as _jet

from . import ClosedJaxpr, Jaxpr, is_literal, primitive_name

__all__ = ["blockers", "reverse_only", "missing_rule"]

CUSTOM_RULES = ("custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr")
CALLS = ("pjit", "jit")   # jet recurses into these sub-programs


def blockers(closed: ClosedJaxpr) -> list[str]:
    """Primitives reached by the input for which ``jet`` has no (faithful) rule, in
    words, without repeats.

    Walks the jaxpr following the data flow from the inputs (a primitive applied to
    constants only never sees a Taylor series, so it needs no rule), and into ``jit``
    sub-programs, which ``jet`` handles by recursion.
    """
    found: list[str] = []
    _walk(closed.jaxpr, [True] * len(closed.jaxpr.invars), found)
    return list(dict.fromkeys(found))


def _walk(jaxpr: Jaxpr, tainted_in: list[bool], found: list[str]) -> list[bool]:
    """Append the blockers of ``jaxpr`` to ``found``; which of its outputs the input reaches."""
    tainted = {v for v, t in zip(jaxpr.invars, tainted_in) if t}
    reached = lambda atoms: [not is_literal(v) and v in tainted for v in atoms]  # noqa: E731
    for eqn in jaxpr.eqns:
        hit = reached(eqn.invars)
        if not any(hit):
            continue
        name = primitive_name(eqn)
        out_hit = [True] * len(eqn.outvars)
        if name in CUSTOM_RULES:
            found.append(f"{name} of {_rule_owner(eqn.params)} (jet would ignore its custom rule)")
        elif eqn.primitive not in _jet.jet_rules:
            found.append(name)
        elif name in CALLS and "jaxpr" in eqn.params:
            out_hit = _walk(eqn.params["jaxpr"].jaxpr, hit, found)
        tainted.update(v for v, t in zip(eqn.outvars, out_hit) if t)
    return reached(jaxpr.outvars)


def _rule_owner(params: dict) -> str:
    """The name of the function a custom_jvp/custom_vjp equation wraps."""
    if "name" in params:
        return str(params["name"])
    call = params.get("call_jaxpr")
    info = getattr(getattr(call, "jaxpr", call), "debug_info", None)
    src = getattr(info, "func_src_info", None) or "?"
    return src.split(" at ")[0]


def reverse_only(found: list[str]) -> bool:
    """True if one of :func:`blockers`' findings is a ``custom_vjp`` (reverse mode only)."""
    return any("custom_vjp" in b for b in found)


def missing_rule(err: Exception) -> str | None:
    """The primitive named by a ``jet`` failure, or None if ``err`` is something else
    (``jet`` raises ``KeyError(primitive)`` for a primitive without a rule)."""
    if isinstance(err, KeyError) and err.args and hasattr(err.args[0], "bind"):
        return str(getattr(err.args[0], "name", err.args[0]))
    if isinstance(err, NotImplementedError):
        return str(err) or "unknown primitive"
    return None

