"""Shared plumbing of the layers: input checks, dtypes, axes, and the reverse/forward switch.

Every layer in :mod:`functorch_lite.nn` is defined twice over one primal function:

- a ``jax.custom_vjp`` carrying the hand-written reverse rule (used by default, so
  ``grad``/``vjp``/``jacrev`` store only the residuals the rule names), and
- a ``jax.custom_jvp`` carrying a hand-written tangent rule (used while one of this
  library's forward-mode transforms traces the layer, see :mod:`functorch_lite._mode`).

:func:`dual` builds the pair and returns a function that picks one at trace time.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from .._args import ARRAY_TYPES
from .._mode import in_forward_mode, in_taylor_mode

HALF = (np.dtype(jnp.bfloat16), np.dtype(jnp.float16))


def dual(primal: Callable, fwd: Callable, bwd: Callable, tangent: Callable) -> Callable:
    """One layer, two rules: ``custom_vjp(primal)`` with ``(fwd, bwd)`` in reverse mode,
    ``custom_jvp(primal)`` with ``tangent`` (symbolic zeros on) in forward mode, the
    bare ``primal`` in Taylor mode."""
    rev = jax.custom_vjp(primal)
    rev.defvjp(fwd, bwd)
    fwd_rule = jax.custom_jvp(primal)
    fwd_rule.defjvp(tangent, symbolic_zeros=True)

    def call(*args):
        if in_taylor_mode():  # jet cannot trace custom rules: expand the primal itself
            return primal(*args)
        return (fwd_rule if in_forward_mode() else rev)(*args)

    call.reverse, call.forward = rev, fwd_rule
    return call


def is_zero(t: Any) -> bool:
    """A symbolic-zero tangent (nothing flows in through this input)."""
    return isinstance(t, SymbolicZero)


def acc_dtype(dtype: Any) -> np.dtype:
    """Statistics and matmuls of half-precision inputs accumulate in float32."""
    dtype = np.dtype(dtype)
    return np.dtype(jnp.float32) if dtype in HALF else dtype


def check_float(value: Any, where: str, name: str, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, ARRAY_TYPES):
        raise TypeError(
            f"{where}: {name} must be a floating-point array, got {type(value).__name__}; "
            f"pass e.g. jnp.asarray({name}, jnp.float32)."
        )
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(
            f"{where}: {name} has dtype {np.dtype(value.dtype).name}; these layers take "
            f"floating-point arrays (float16, bfloat16, float32, float64). Convert it, e.g. "
            f"{name}.astype(jnp.float32)."
        )


def check_eps(eps: Any, where: str) -> float:
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real):
        raise TypeError(
            f"{where}: eps must be a Python float, got {type(eps).__name__}; it is a "
            "static constant of the layer, e.g. eps=1e-5."
        )
    eps = float(eps)
    if not eps >= 0.0 or eps == float("inf"):
        raise ValueError(f"{where}: eps must be a finite number >= 0, got {eps}.")
    return eps


def normalize_axes(axis: Any, ndim: int, where: str, *, allow_none: bool) -> tuple[int, ...]:
    """``axis`` (int, tuple of ints, or None for all) as sorted non-negative indices."""
    if axis is None:
        if allow_none:
            return tuple(range(ndim))
        raise TypeError(f"{where}: axis must be an int or a tuple of ints, got None.")
    raw = axis if isinstance(axis, (tuple, list)) else (axis,)
    out = []
    for a in raw:
        if isinstance(a, (bool, np.bool_)) or not isinstance(a, numbers.Integral):
            raise TypeError(f"{where}: axis must be an int or a tuple of ints, got {axis!r}.")
        if not -ndim <= a < ndim:
            raise ValueError(
                f"{where}: axis={axis!r} is out of range for an input with {ndim} "
                f"dimension(s); use axes in [{-ndim}, {ndim - 1}]."
            )
        out.append(int(a) % ndim)
    if not out:
        raise ValueError(f"{where}: axis={axis!r} names no axis; give at least one.")
    if len(set(out)) != len(out):
        raise ValueError(f"{where}: axis={axis!r} names the same axis twice.")
    return tuple(sorted(out))


def param_shape(x_shape: tuple, axes: tuple[int, ...]) -> tuple[int, ...]:
    """The shape a per-feature parameter (scale, offset) must have."""
    return tuple(x_shape[a] for a in axes)


def broadcast_shape(x_shape: tuple, axes: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of a parameter reshaped to broadcast against ``x`` (1 off the axes)."""
    return tuple(n if i in axes else 1 for i, n in enumerate(x_shape))


def other_axes(ndim: int, axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(i for i in range(ndim) if i not in axes)
