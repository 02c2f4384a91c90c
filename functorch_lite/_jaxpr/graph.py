"""What the pictures (:mod:`functorch_lite._viz`) read from a jaxpr: each equation's
label and output avals, which calls to inline, literals and dropped outputs.

>>> import jax, jax.numpy as jnp
>>> closed = jax.make_jaxpr(lambda x: jnp.sum(x ** 3))(jnp.ones(2))
>>> [op_label(e) for e in closed.jaxpr.eqns]
['integer_pow y=3', 'reduce_sum axes=(0,)']
>>> count_ops(closed.jaxpr, inline=True), aval_str(closed.jaxpr.invars[0].aval)
(2, 'f32[2]')
"""

from __future__ import annotations

import math
from typing import Any

import jax.extend.core as jcore
import numpy as np

from . import JaxprEqn, is_literal, primitive_name

__all__ = ["aval_str", "aval_bytes", "short_dtype", "literal_str", "op_label", "inlined_call",
           "count_ops", "is_dropped", "read"]

# Calls of jit-compiled helpers (``jnp.linalg.norm`` is one): inlined into the picture.
_INLINE = ("jit", "pjit", "closed_call", "core_call")
_CUSTOM = ("custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr", "custom_lin")
_NOT_EXPANDED = ("while", "cond", "scan")


def short_dtype(dtype: Any) -> str:
    """``f32``, ``i32``, ``bf16``, ``bool``: a dtype in a few letters."""
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return "bool"
    if dt.name == "bfloat16":
        return "bf16"
    return f"{dt.kind}{8 * dt.itemsize}"


def aval_str(aval: Any) -> str:
    """``f32[2,3]``: an abstract value's dtype and shape."""
    shape = getattr(aval, "shape", None)
    dtype = getattr(aval, "dtype", None)
    if shape is None or dtype is None:
        return str(aval)
    try:
        dt = short_dtype(dtype)
    except TypeError:  # float0 and other extended dtypes
        dt = str(dtype)
    return f"{dt}[{','.join(map(str, shape))}]"


def aval_bytes(aval: Any) -> int:
    """The bytes a value of this aval takes (0 for extended dtypes)."""
    try:
        return int(math.prod(aval.shape) * np.dtype(aval.dtype).itemsize)
    except TypeError:
        return 0


def literal_str(lit: Any) -> str:
    """A literal's value (a scalar) or ``const<aval>`` (an array)."""
    val = np.asarray(lit.val)
    if val.ndim == 0:
        v = val.item()
        return f"{v:g}" if isinstance(v, float) else str(v)
    return f"const{aval_str(lit.aval)}"


def _custom_name(params: dict) -> str | None:
    """The name of the function a ``custom_jvp``/``custom_vjp`` call wraps, if known."""
    sub = params.get("name")
    if sub is not None:
        return sub
    for key in ("call_jaxpr", "fun_jaxpr"):
        j = params.get(key)
        dbg = getattr(getattr(j, "jaxpr", j), "debug_info", None)
        sub = getattr(dbg, "func_name", None) if dbg is not None else None
        if sub:
            return sub
    return None


def op_label(eqn: JaxprEqn) -> str:
    """The text of an equation's box: the primitive and its telling parameters."""
    name = primitive_name(eqn)
    params = eqn.params
    if name == "integer_pow":
        return f"integer_pow y={params.get('y')}"
    if name.startswith("reduce_") and "axes" in params:
        return f"{name} axes={tuple(params['axes'])}"
    if name in _CUSTOM:
        sub = _custom_name(params)
        return f"{name}({sub})" if sub else name
    if name in _NOT_EXPANDED:
        return f"{name} (not expanded)"
    if name == "convert_element_type":
        return f"convert {short_dtype(params['new_dtype'])}" if "new_dtype" in params else name
    return name


def inlined_call(eqn: JaxprEqn) -> Any:
    """The closed jaxpr of a ``jit`` call to draw inline, or None."""
    sub = eqn.params.get("jaxpr") if primitive_name(eqn) in _INLINE else None
    return sub if sub is not None and hasattr(sub, "jaxpr") else None


def count_ops(jaxpr: Any, inline: bool) -> int:
    """Primitives of ``jaxpr``, counting inside jit calls (``inline``) and inside the
    primal function of custom_jvp / custom_vjp calls (what runs without differentiation)."""
    n = 0
    for eqn in jaxpr.eqns:
        sub = eqn.params.get("jaxpr") if primitive_name(eqn) in _INLINE else None
        if primitive_name(eqn) in ("custom_jvp_call", "custom_vjp_call"):
            sub = eqn.params.get("call_jaxpr")
        if inline and sub is not None and hasattr(sub, "jaxpr"):
            n += count_ops(sub.jaxpr, inline)
        else:
            n += 1
    return n


def is_dropped(var: Any) -> bool:
    """True for an output an equation computes that nothing reads (``_``)."""
    return isinstance(var, jcore.DropVar)


def read(env: dict, atom: Any) -> Any:
    """The node id ``env`` maps a variable to, or ``("lit", text)`` for a literal."""
    if is_literal(atom):
        return ("lit", literal_str(atom))
    return env[atom]
