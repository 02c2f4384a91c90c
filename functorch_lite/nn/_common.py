"""Shared plumbing of the layers: input checks, dtypes, axes, and how a rule is built.

Every layer in :mod:`functorch_lite.nn` is one ``jax.custom_jvp`` (:func:`rule`): a
hand-derived tangent rule ``dy = L(res)(dx, dparams...)``, linear in the tangents,
whose linear part ``L`` runs inside ``jax.checkpoint``. JAX derives everything else
from it:

- forward mode (``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``) runs ``L`` directly;
- reverse mode (``jax.grad``, ``jax.vjp``, ``jax.jacrev``) transposes ``L``. Because
  ``L`` is checkpointed, the only values kept from the forward pass are ``L``'s
  inputs ``res`` (the layer's input and its per-row statistics, unbroadcast), and
  anything ``L`` derives from them (``x_hat``, broadcasts) is recomputed in the
  backward pass. The transpose of the tangent rule *is* the seed's reverse rule (for
  ``linear``: ``dy W^T``, ``x^T dy``, row sums; for the norms: the self-adjoint
  ``through_xhat``); each layer keeps that rule, written out, as a ``jax.custom_vjp``
  (``layer.seed``), and tests check that both store the same residuals and give the
  same cotangents;
- second order (every Hessian nesting) differentiates ``L`` again, which is plain JAX;
- ``jax.vmap`` batches the rule like any JAX code.

So the layers need no mode switch: they work under raw JAX, Equinox and this
library alike. One exception remains: Taylor mode (``jax.experimental.jet``) cannot
trace any ``custom_jvp`` in JAX 0.10 (``UnexpectedTracerError``); inside
:func:`functorch_lite._mode.taylor_mode` (which this library's Taylor transforms enter)
the layers run their plain primal instead.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from .. import _caches
from .._args import ARRAY_TYPES
from .._mode import in_taylor_mode

HALF = (np.dtype(jnp.bfloat16), np.dtype(jnp.float16))

# One registry of built rules, keyed on what determines them (kind, axes, eps, flags).
RULES = _caches.lru("nn.rules", maxsize=512)


def rule(primal: Callable, forward: Callable, linear: Callable, *, remat: bool = True,
         seed: tuple[Callable, Callable] | None = None) -> Callable:
    """A layer as one ``jax.custom_jvp`` over ``primal``.

    ``forward(*primals) -> (y, res)`` computes the output and the pytree of arrays the
    tangent needs; ``linear(res, tangents) -> dy`` is the tangent rule, linear in
    ``tangents`` (a tuple with ``None`` for an input whose tangent is a symbolic zero).
    With ``remat`` the linear part runs under ``jax.checkpoint``, so reverse mode stores
    ``res`` only. ``seed = (fwd, bwd)`` is the hand-written reverse rule, kept as
    ``.seed`` (a ``jax.custom_vjp``) for tests and documentation.
    """
    layer = jax.custom_jvp(primal)

    def jvp(primals, tangents):
        y, res = forward(*primals)
        present = tuple(not is_zero(t) for t in tangents)
        given = tuple(t for t in tangents if not is_zero(t))
        if not given:
            return y, jnp.zeros_like(y)

        def lin(res, given):
            it = iter(given)
            return linear(res, tuple(next(it) if p else None for p in present))

        dy = (jax.checkpoint(lin) if remat else lin)(res, given)
        return y, dy.astype(y.dtype)

    layer.defjvp(jvp, symbolic_zeros=True)

    def call(*args):
        if in_taylor_mode():  # jet cannot trace custom rules: expand the primal itself
            return primal(*args)
        return layer(*args)

    call.layer, call.primal = layer, primal
    if seed is not None:
        rev = jax.custom_vjp(primal)
        rev.defvjp(*seed)
        call.seed = rev
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
