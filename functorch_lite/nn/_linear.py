"""The linear layer ``y = x W + b`` with the seed's hand-derived rules.

Tangent rule ``dy = dx W + x dW + db``; reverse mode runs its transpose, which is the
seed's reverse rule (the lecture notes' derivation, rows of ``x`` are samples)::

    dL/dx = dL/dy W^T        dL/dW = x^T dL/dy        dL/db = sum over rows of dL/dy

with "rows" meaning every leading (batch) axis of ``x``. Reverse mode stores ``x`` and
``W`` and nothing else. Under ``vmap`` (per-sample gradients) ``x^T dL/dy`` becomes a
batched outer product, one ``dot_general`` with a batch axis.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _common

__all__ = ["linear"]


def _mm(a, b, contract_a, contract_b, acc):
    """``dot_general`` contracting the given axes, accumulating in ``acc``."""
    return lax.dot_general(a, b, ((contract_a, contract_b), ((), ())), preferred_element_type=acc)


def xw(x, w, acc):  # (..., d) @ (d, m) -> (..., m)
    return _mm(x, w, (x.ndim - 1,), (0,), acc)


def bias_row(b, ndim, acc):
    return b.astype(acc).reshape((1,) * (ndim - 1) + b.shape)


def backward(x, w, dy, acc, *, bias: bool = True):
    """The reverse rule of ``y = x W + b`` in the dtype ``acc``: ``(dL/dx, dL/dW, dL/db)``
    = ``(dy W^T, x^T dy, sum of dy over the rows)``, rows being every leading axis of
    ``x`` (``dL/db`` is None when ``bias`` is False)."""
    lead = tuple(range(x.ndim - 1))
    dx = _mm(dy, w, (dy.ndim - 1,), (1,), acc)               # dL/dy W^T
    if lead:
        dw = _mm(x, dy, lead, lead, acc)                     # x^T dL/dy
    else:  # one sample: the outer product, as a broadcast (vmaps to a fused multiply)
        dw = x.astype(acc)[:, None] * dy.astype(acc)[None, :]
    db = jnp.sum(dy.astype(acc), axis=lead) if bias else None  # sum over rows
    return dx, dw, db


def _make(has_bias: bool):
    return _common.RULES.get_or_compute(("linear", has_bias), lambda: _build(has_bias))


def _build(has_bias: bool):
    def primal(x, w, *b):
        acc = _common.acc_dtype(x.dtype)
        y = xw(x, w, acc)
        if has_bias:
            y = y + bias_row(b[0], y.ndim, acc)
        return y.astype(x.dtype)

    def forward(x, w, *b):
        return primal(x, w, *b), (x, w)

    def tangent(res, tangents):
        """``dy = dx W + x dW + db``; its transpose is :func:`backward`."""
        x, w = res
        tx, tw = tangents[:2]
        acc = _common.acc_dtype(x.dtype)
        terms = []
        if tx is not None:
            terms.append(xw(tx, w, acc))
        if tw is not None:
            if x.ndim == 1:   # one sample: x dW as a broadcast product, whose transpose is the
                # outer product x^T dL/dy as a broadcast too (under vmap: one fused multiply,
                # not a batch of rank-1 matmuls)
                terms.append(jnp.sum(x.astype(acc)[:, None] * tw.astype(acc), axis=0))
            else:
                terms.append(xw(x, tw, acc))
        if has_bias and tangents[2] is not None:
            terms.append(jnp.broadcast_to(bias_row(tangents[2], x.ndim, acc), x.shape[:-1] + w.shape[1:]))
        return sum(terms[1:], terms[0])

    def seed_fwd(x, w, *b):
        return primal(x, w, *b), (x, w)

    def seed_bwd(res, dy):
        x, w = res
        dx, dw, db = backward(x, w, dy, _common.acc_dtype(x.dtype), bias=has_bias)
        grads = (dx.astype(x.dtype), dw.astype(w.dtype))
        return grads + (db.astype(x.dtype),) if has_bias else grads

    # the tangent is linear in (dx, dW, db) with only x and W as coefficients: nothing to
    # recompute, so no checkpoint is needed for reverse mode to store just (x, W)
    return _common.rule(primal, forward, tangent, remat=False, seed=(seed_fwd, seed_bwd))


def linear(x: jax.Array, w: jax.Array, b: jax.Array | None = None) -> jax.Array:
    r"""Linear layer ``y = x W + b`` with a hand-written reverse rule.

    Shapes: ``x`` is ``(..., d_in)`` (any number of leading batch axes, or none), ``w``
    is ``(d_in, d_out)``, ``b`` is ``(d_out,)`` or ``None``; ``y`` is ``(..., d_out)``.
    ``x``, ``w`` and ``b`` share one floating dtype; half precision (bfloat16, float16)
    accumulates the products in float32 and returns the input dtype.

    Reverse rule, from the formulas (the seed's derivation): with ``G = dL/dy``,
    ``dL/dx = G W^T``, ``dL/dW = x^T G`` (summed over all leading axes),
    ``dL/db = sum of G over the leading axes``. Residuals: ``x`` and ``W`` only.
    Forward rule: ``dy = dx W + x dW + db``. Both rules are ordinary JAX code, so they
    are themselves differentiable (Hessians in every nesting) and batchable (``vmap``).

    >>> import jax.numpy as jnp
    >>> x = jnp.array([[1.0, 2.0]])                     # N=1, D=2
    >>> w = jnp.array([[1.0, 0.0, 2.0], [0.0, 1.0, 3.0]])  # D=2, M=3
    >>> linear(x, w, jnp.array([0.5, 0.5, 0.5]))
    Array([[1.5, 2.5, 8.5]], dtype=float32)
    """
    check_linear(x, w, b, "nn.linear(x, w, b)")
    if b is None:
        return _make(False)(x, w)
    return _make(True)(x, w, b)


def check_linear(x: Any, w: Any, b: Any, where: str) -> None:
    """The arguments of :func:`linear` (also checked by the fused block, naming itself)."""
    _common.check_float(x, where, "x")
    _common.check_float(w, where, "w")
    _common.check_float(b, where, "b", optional=True)
    if np.ndim(x) < 1:
        raise ValueError(f"{where}: x must have at least one axis (features last), got a scalar.")
    if np.ndim(w) != 2:
        raise ValueError(
            f"{where}: w must be a matrix of shape (d_in, d_out), got shape {tuple(np.shape(w))}."
        )
    if x.shape[-1] != w.shape[0]:
        raise ValueError(
            f"{where}: x has shape {tuple(x.shape)} and w has shape {tuple(w.shape)}; the last "
            f"axis of x ({x.shape[-1]}) must equal the first axis of w ({w.shape[0]}). "
            "Transpose w if it is stored as (d_out, d_in)."
        )
    if b is not None and tuple(np.shape(b)) != (w.shape[1],):
        raise ValueError(
            f"{where}: b has shape {tuple(np.shape(b))} but w has shape {tuple(w.shape)}; b "
            f"must have shape ({w.shape[1]},), one entry per output feature."
        )
    dtypes = {np.dtype(a.dtype).name for a in (x, w, b) if a is not None}
    if len(dtypes) > 1:
        raise TypeError(
            f"{where}: x, w and b must share one dtype, got {sorted(dtypes)}; cast them, "
            "e.g. w.astype(x.dtype)."
        )
