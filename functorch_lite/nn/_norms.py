"""Norm layers with hand-written rules: ``l2_norm``, ``layer_norm``, ``rms_norm``.

Autodiff of the plain ``jnp`` formulas keeps every intermediate the backward pass of
each primitive needs (centred input, squares, the normalised tensor, reciprocal
square roots...). The rules here keep one input-sized tensor (the input itself, in
its own dtype) and per-row statistics, and rebuild ``x_hat`` in the backward pass with
one fused elementwise op. Keeping the input rather than ``x_hat`` costs the same bytes
and keeps half-precision gradients as accurate as the forward pass (``x_hat`` is
recomputed in float32 from the exact input instead of being rounded to half).

Safe at zero: every division by a norm or standard deviation goes through a
"double where" (:func:`_safe_rsqrt`, :func:`_unit`), so a zero vector, or a constant
row with ``eps=0``, gets the derivative 0 (a subgradient, as PyTorch uses for norms),
finite in first and second order, in both rules and under differentiation of the
rules themselves.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _common

__all__ = ["l2_norm", "layer_norm", "rms_norm"]


def _safe_rsqrt(v):
    """``1/sqrt(v)`` where ``v > 0``, else 0; its derivative is finite everywhere."""
    pos = v > 0
    return jnp.where(pos, lax.rsqrt(jnp.where(pos, v, 1)), 0)


# ----------------------------------------------------------------------------- l2_norm


def _norm_stats(x, axes, eps):
    """``(n, pos)``: the norm (keepdims, accumulation dtype) and where it exceeds eps."""
    xf = x.astype(_common.acc_dtype(x.dtype))
    s = jnp.sum(xf * xf, axis=axes, keepdims=True)
    raw = jnp.sqrt(s)
    pos = raw > eps
    # same value as `raw`; the where keeps d(sqrt)/ds = inf at s = 0 out of any derivative
    n = jnp.where(pos, jnp.sqrt(jnp.where(pos, s, 1)), lax.stop_gradient(raw))
    return n, pos


def _unit(x, n, pos):
    """``x / ||x||`` where the norm exceeds eps, else 0 (the subgradient used)."""
    xf = x.astype(n.dtype)
    return jnp.where(pos, xf / jnp.where(pos, n, 1), 0)


def _make_l2(axes: tuple[int, ...], keepdims: bool, eps: float):
    key = ("l2", axes, keepdims, eps)
    return _common.RULES.get_or_compute(key, lambda: _build_l2(axes, keepdims, eps))


def _build_l2(axes, keepdims, eps):
    def out(n, x):
        return (n if keepdims else jnp.squeeze(n, axes)).astype(x.dtype)

    def primal(x):
        n, _ = _norm_stats(x, axes, eps)
        return out(n, x)

    def forward(x):
        n, _ = _norm_stats(x, axes, eps)
        return out(n, x), (x, n)

    def tangent(res, tangents):
        x, n = res
        (t,) = tangents
        dn = jnp.sum(_unit(x, n, n > eps) * t.astype(n.dtype), axis=axes, keepdims=True)
        return out(dn, x)                                     # d||x|| = <x/||x||, dx>

    def seed_bwd(res, g):
        x, n = res
        gk = g if keepdims else jnp.expand_dims(g, axes)
        dx = gk.astype(n.dtype) * _unit(x, n, n > eps)       # dL/dx = g x / ||x||
        return (dx.astype(x.dtype),)

    return _common.rule(primal, forward, tangent, seed=(forward, seed_bwd))


def l2_norm(x: jax.Array, axis: int | tuple[int, ...] | None = None, keepdims: bool = False,
            eps: float = 0.0) -> jax.Array:
    r"""Euclidean norm ``||x|| = sqrt(sum x_i^2)`` over ``axis`` (all axes by default).

    Reverse rule: ``dL/dx = g * x / ||x||``; forward rule: ``d||x|| = <x / ||x||, dx>``.
    Where ``||x|| <= eps`` (by default: exactly at 0, where the norm is not
    differentiable) the derivative is the subgradient 0, as PyTorch uses, never NaN; the
    second derivative there is 0 too (``jax.grad(jnp.linalg.norm)`` gives NaN at 0).
    Residuals: ``x`` and the per-row norm. Half-precision inputs sum squares in float32.

    >>> import jax, jax.numpy as jnp
    >>> l2_norm(jnp.array([3.0, 4.0]))
    Array(5., dtype=float32)
    >>> jax.grad(l2_norm)(jnp.zeros(2))
    Array([0., 0.], dtype=float32)
    """
    where = f"nn.l2_norm(x, axis={axis!r})"
    _common.check_float(x, where, "x")
    axes = _common.normalize_axes(axis, np.ndim(x), where, allow_none=True)
    if not isinstance(keepdims, bool):
        raise TypeError(f"{where}: keepdims must be True or False, got {keepdims!r}.")
    eps = _common.check_eps(eps, where)
    return _make_l2(axes, keepdims, eps)(x)       # a scalar x has axes (): |x|


# ----------------------------------------------------------------------- layer / rms norm


def row_stats(xf, axes, eps, centre):
    """Per-row ``(mu, rstd)`` of ``xf`` (already in the accumulation dtype) over
    ``axes``, keepdims: ``rstd = 1 / sqrt(mean((x - mu)^2) + eps)``; without ``centre``
    (rms) ``mu`` is None and ``rstd = 1 / sqrt(mean(x^2) + eps)``."""
    mu = jnp.mean(xf, axis=axes, keepdims=True) if centre else None
    xc = xf - mu if centre else xf
    return mu, _safe_rsqrt(jnp.mean(xc * xc, axis=axes, keepdims=True) + eps)


def through_xhat(v, xhat, rstd, axes, centre):
    """``rstd * (v - mean(v) - x_hat mean(x_hat v))`` over ``axes`` (no ``mean(v)``
    without ``centre``): the derivative of ``x_hat`` with respect to ``x``. It is
    self-adjoint, so it maps a tangent ``dx`` to ``dx_hat`` (forward rule) and a
    cotangent ``dL/dx_hat`` to ``dL/dx`` (reverse rule)."""
    def mean(u):
        return jnp.mean(u, axis=axes, keepdims=True)

    inner = v - xhat * mean(v * xhat)
    if centre:
        inner = inner - mean(v)
    return rstd * inner


def check_param(p, x, axes, where, name, x_name="x"):
    """A norm's ``scale``/``offset`` ``p`` (None: none) against its input ``x`` (an array or
    a ``ShapeDtypeStruct``, called ``x_name`` in messages) normalised over ``axes``."""
    _common.check_float(p, where, name, optional=True)
    if p is None:
        return
    want = _common.param_shape(x.shape, axes)
    if tuple(np.shape(p)) != want:
        raise ValueError(
            f"{where}: {name} has shape {tuple(np.shape(p))} but {x_name} has shape {tuple(x.shape)}, "
            f"whose normalised axes {axes} have shape {want}; give {name} the shape {want}."
        )
    if p.dtype != x.dtype:
        raise TypeError(
            f"{where}: {name} has dtype {np.dtype(p.dtype).name} but {x_name} has "
            f"{np.dtype(x.dtype).name}; cast it, e.g. {name}.astype(x.dtype)."
        )


def _make_norm(kind: str, axes: tuple[int, ...], eps: float, has_scale: bool, has_offset: bool):
    """``kind``: "layer" (centre, then scale) or "rms" (scale only)."""
    key = ("norm", kind, axes, eps, has_scale, has_offset)
    return _common.RULES.get_or_compute(
        key, lambda: _build_norm(kind, axes, eps, has_scale, has_offset))


def _bcast(p, x, acc, axes):
    return p.astype(acc).reshape(_common.broadcast_shape(x.shape, axes))


def _normalise(x, mu, rstd, centre):
    xf = x.astype(rstd.dtype)
    return ((xf - mu) if centre else xf) * rstd


def _build_norm(kind, axes, eps, has_scale, has_offset):
    centre = kind == "layer"

    def stats(x):
        return row_stats(x.astype(_common.acc_dtype(x.dtype)), axes, eps, centre)

    def normalise(x, mu, rstd):
        return _normalise(x, mu, rstd, centre)

    def affine(xhat, x, params):
        y = xhat
        if has_scale:
            y = y * _bcast(params[0], x, xhat.dtype, axes)
        if has_offset:
            y = y + _bcast(params[-1], x, xhat.dtype, axes)
        return y.astype(x.dtype)

    def primal(x, *params):
        return fwd(x, *params)[0]

    def fwd(x, *params):
        mu, rstd = stats(x)
        res = (x, mu, rstd, params[0] if has_scale else None)
        return affine(normalise(x, mu, rstd), x, params), res

    def bwd(res, dy):
        x, mu, rstd, scale = res
        acc = rstd.dtype
        xhat = normalise(x, mu, rstd)
        dyf = dy.astype(acc)
        g = dyf * _bcast(scale, x, acc, axes) if has_scale else dyf            # dL/dx_hat
        grads = (through_xhat(g, xhat, rstd, axes, centre).astype(x.dtype),)   # dL/dx
        rows = _common.other_axes(x.ndim, axes)
        shape = _common.param_shape(x.shape, axes)
        if has_scale:
            grads += (jnp.sum(dyf * xhat, axis=rows).reshape(shape).astype(x.dtype),)
        if has_offset:
            grads += (jnp.sum(dyf, axis=rows).reshape(shape).astype(x.dtype),)
        return grads

    def tangent(res, tangents):
        """``dy = scale * dx_hat + x_hat * dscale + doffset`` with ``dx_hat`` =
        :func:`through_xhat` of ``dx``; run under ``jax.checkpoint``, so reverse mode keeps
        ``(x, mu, rstd, scale)`` and rebuilds ``x_hat`` from them."""
        x, mu, rstd, scale = res
        acc = rstd.dtype
        xhat = normalise(x, mu, rstd)
        terms = []
        if tangents[0] is not None:
            dxhat = through_xhat(tangents[0].astype(acc), xhat, rstd, axes, centre)
            terms.append(dxhat * _bcast(scale, x, acc, axes) if has_scale else dxhat)
        if has_scale and tangents[1] is not None:
            terms.append(xhat * _bcast(tangents[1], x, acc, axes))
        if has_offset and tangents[-1] is not None:
            terms.append(jnp.broadcast_to(_bcast(tangents[-1], x, acc, axes), x.shape))
        return sum(terms[1:], terms[0])

    return _common.rule(primal, fwd, tangent, seed=(fwd, bwd))


def _norm(kind, x, scale, offset, axis, eps, where):
    _common.check_float(x, where, "x")
    if np.ndim(x) < 1:
        raise ValueError(f"{where}: x must have at least one axis to normalise, got a scalar.")
    axes = _common.normalize_axes(axis, x.ndim, where, allow_none=False)
    check_param(scale, x, axes, where, "scale")
    check_param(offset, x, axes, where, "offset")
    eps = _common.check_eps(eps, where)
    params = tuple(p for p in (scale, offset) if p is not None)
    fn = _make_norm(kind, axes, eps, scale is not None, offset is not None)
    return fn(x, *params)


def layer_norm(x: jax.Array, scale: jax.Array | None, offset: jax.Array | None, *,
               axis: int | tuple[int, ...] = -1, eps: float = 1e-5) -> jax.Array:
    r"""Layer normalisation over ``axis``: ``y = x_hat * scale + offset`` with

    ``mu = mean(x)``, ``rstd = 1 / sqrt(mean((x - mu)^2) + eps)``, ``x_hat = (x - mu) * rstd``
    (means over ``axis``; every other axis is a batch of rows).

    ``scale`` and ``offset`` have the shape of the normalised axes (``None``: no scale /
    no offset). Reverse rule, from the formulas, with ``g = dL/dy * scale``:
    ``dL/dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat))``,
    ``dL/dscale = sum over rows of dL/dy * x_hat``, ``dL/doffset = sum over rows of dL/dy``.
    Forward rule: ``dx_hat = rstd * (dx - mean(dx) - x_hat * mean(x_hat * dx))``.
    Residuals: ``x`` (its own dtype), per-row ``mu`` and ``rstd`` (float32 for half
    inputs), ``scale``. A constant row is finite in all orders (with ``eps=0`` its
    derivative is 0).

    >>> import jax.numpy as jnp
    >>> layer_norm(jnp.array([1.0, 2.0, 3.0]), jnp.ones(3), jnp.zeros(3), eps=0.0)
    Array([-1.2247449,  0.       ,  1.2247449], dtype=float32)
    """
    where = f"nn.layer_norm(x, scale, offset, axis={axis!r})"
    return _norm("layer", x, scale, offset, axis, eps, where)


def rms_norm(x: jax.Array, scale: jax.Array | None, *, axis: int | tuple[int, ...] = -1,
             eps: float = 1e-6) -> jax.Array:
    r"""RMS normalisation over ``axis``: ``y = x * rstd * scale``,
    ``rstd = 1 / sqrt(mean(x^2) + eps)``.

    Reverse rule, with ``x_hat = x * rstd`` and ``g = dL/dy * scale``:
    ``dL/dx = rstd * (g - x_hat * mean(g * x_hat))``,
    ``dL/dscale = sum over rows of dL/dy * x_hat``. Forward rule:
    ``dx_hat = rstd * (dx - x_hat * mean(x_hat * dx))``. Residuals: ``x``, per-row
    ``rstd``, ``scale``. A zero row is finite in all orders.

    >>> import math
    >>> import jax.numpy as jnp
    >>> rms_norm(jnp.array([3.0, 4.0]), jnp.ones(2), eps=0.0) * math.sqrt(12.5)
    Array([3., 4.], dtype=float32)
    """
    where = f"nn.rms_norm(x, scale, axis={axis!r})"
    return _norm("rms", x, scale, None, axis, eps, where)
