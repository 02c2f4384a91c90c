"""A fused ``linear -> norm -> activation`` block with one reverse rule that stores less.

Unfused, reverse mode keeps, per block, the block input ``x`` and ``W`` (linear), the
norm's input ``h = xW + b`` (norm) and what the activation needs (relu: a mask). The fused
rule keeps only ``x``, ``W``, ``b`` and the per-row statistics, and recomputes
``h = xW + b`` in the backward pass: one input-sized tensor per block instead of two or
three, for one extra matmul (the backward pass does three instead of two).

Reverse rule, with ``G = dL/da``: ``dy = G * act'(y)`` (JAX's VJP of ``activation``),
then the norm's rule (:func:`functorch_lite.nn.layer_norm` / ``rms_norm``) for ``dh``,
``dscale``, ``doffset``, then the linear rule ``dx = dh Wᵀ``, ``dW = xᵀ dh``,
``db = Σ_rows dh``. As for every layer here (:mod:`functorch_lite.nn._common`), the
block is one ``custom_jvp``: its tangent chains the three tangent rules under
``jax.checkpoint`` (recomputing ``h``), reverse mode runs the transpose of that chain,
which equals the rule above (kept as ``linear_norm_act``'s ``.seed``, tested), and
forward mode runs the chain itself (one extra matmul for the recomputed ``h``).

Where the saving shows: in what ``jax.vjp`` keeps (a ``vjp_fn`` held across a ``jax.jit``
boundary, eager reverse mode): 0.35x of plain autodiff for a 4-block MLP against 0.67x
unfused (docs/benchmarks.md). Inside one jitted gradient step XLA plans memory itself: the
recomputation sits behind a ``lax.optimization_barrier``, but XLA:CPU removes barriers
and merges it with the forward matmul, so on CPU the planned temp bytes and the time equal
the unfused block's (measured). Backends that keep the barrier were not measured.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from .. import _caches
from . import _common
from ._linear import backward, bias_row, check_linear, xw
from ._norms import check_param, row_stats, through_xhat

__all__ = ["linear_norm_act"]


_FUSED = _caches.weak("nn.fused", maxsize=256)


def _make(norm: str, activation: Callable, eps: float, has_offset: bool):
    key = (norm, eps, has_offset)
    # keyed weakly on the activation (an activation that cannot be weakly referenced is
    # rebuilt per call)
    return _FUSED.get_or_compute(activation, key, lambda: _build(norm, activation, eps, has_offset))


def _linear_acc(x, w, b, acc):
    return xw(x, w, acc) + bias_row(b, x.ndim, acc)


def _dh(x, w, tx, tw, tb, acc, shape):
    """The tangent ``dh = dx W + x dW + db`` of ``h = xW + b`` (``None``: no such tangent)."""
    dh = jnp.zeros(shape, acc)
    if tx is not None:
        dh = dh + xw(tx, w, acc)
    if tw is not None:
        dh = dh + xw(x, tw, acc)
    if tb is not None:
        dh = dh + bias_row(tb, x.ndim, acc)
    return dh


def _post(h, mu, rstd, scale, offset, centre: bool):
    """``(x_hat, y)``: the normalised rows and the affine output (before activation)."""
    xhat = ((h - mu) if centre else h) * rstd
    shape = (1,) * (h.ndim - 1) + scale.shape
    y = xhat * scale.astype(h.dtype).reshape(shape)
    if offset is not None:
        y = y + offset.astype(h.dtype).reshape(shape)
    return xhat, y


def _build(norm: str, activation: Callable, eps: float, has_offset: bool):
    centre = norm == "layer"

    def pre(x, w, b):
        """``h = xW + b`` and its row statistics, in the accumulation dtype."""
        h = _linear_acc(x, w, b, _common.acc_dtype(x.dtype))
        return (h,) + row_stats(h, (-1,), eps, centre)

    def post(h, mu, rstd, scale, offset):
        return _post(h, mu, rstd, scale, offset, centre)

    def primal(*args):
        return fwd(*args)[0]

    def fwd(x, w, b, scale, *offset):
        h, mu, rstd = pre(x, w, b)
        _, y = post(h, mu, rstd, scale, offset[0] if has_offset else None)
        return activation(y).astype(x.dtype), (x, w, b, mu, rstd, scale, offset)

    def tangent(res, tangents):
        """``dh = dx W + x dW + db``; ``dy = scale * through_xhat(dh) + x_hat * dscale +
        doffset``; ``da = act'(y) dy``. Under ``jax.checkpoint``: reverse mode keeps the
        residuals ``(x, W, b, mu, rstd, scale, offset)`` and recomputes ``h = xW + b``."""
        x, w, b, mu, rstd, scale, offset = res
        acc = rstd.dtype
        tx, tw, tb, tscale = tangents[:4]
        toffset = tangents[4] if has_offset else None
        h = _linear_acc(x, w, b, acc)                                       # recomputed
        xhat, y = post(h, mu, rstd, scale, offset[0] if has_offset else None)
        shape = (1,) * (x.ndim - 1) + scale.shape
        dy = jnp.zeros(y.shape, acc)
        if tx is not None or tw is not None or tb is not None:
            dh = _dh(x, w, tx, tw, tb, acc, h.shape)
            dy = dy + through_xhat(dh, xhat, rstd, (-1,), centre) * scale.astype(acc).reshape(shape)
        if tscale is not None:
            dy = dy + xhat * tscale.astype(acc).reshape(shape)
        if toffset is not None:
            dy = dy + toffset.astype(acc).reshape(shape)
        return jax.jvp(activation, (y,), (dy,))[1]

    def bwd(res, da):
        x, w, b, mu, rstd, scale, offset = res
        acc = rstd.dtype
        h = _linear_acc(x, w, b, acc)                                       # recomputed
        xhat, y = post(h, mu, rstd, scale, offset[0] if has_offset else None)
        _, act_vjp = jax.vjp(activation, y)
        (dy,) = act_vjp(da.astype(acc))
        g = dy * scale.astype(acc).reshape((1,) * (x.ndim - 1) + scale.shape)
        dh = through_xhat(g, xhat, rstd, (-1,), centre)
        dx, dw, db = backward(x, w, dh, acc)
        lead = tuple(range(x.ndim - 1))
        grads = (dx.astype(x.dtype), dw.astype(w.dtype), db.astype(b.dtype),
                 jnp.sum(dy * xhat, axis=lead).astype(scale.dtype))
        if has_offset:
            grads += (jnp.sum(dy, axis=lead).astype(offset[0].dtype),)
        return grads

    return _common.rule(primal, fwd, tangent, seed=(fwd, bwd))


def linear_norm_act(x: jax.Array, w: jax.Array, b: jax.Array, scale: jax.Array,
                    offset: jax.Array | None = None, *, norm: str = "layer",
                    activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
                    eps: float | None = None) -> jax.Array:
    """``activation(norm(x W + b) * scale + offset)`` over the last axis, with one fused
    reverse rule (see the module docstring for the formulas).

    Same value as ``activation(layer_norm(linear(x, w, b), scale, offset))`` (or
    ``rms_norm`` with ``norm="rms"``, which takes no ``offset``); reverse mode stores only
    ``x``, ``W``, ``b``, ``scale``, ``offset`` and two per-row statistics. ``activation``
    must be a fixed elementwise JAX function (it is part of the rule's cache key).

    >>> import jax, jax.numpy as jnp
    >>> x, w, b = jnp.ones((2, 3)), jnp.eye(3), jnp.array([0.0, 1.0, 2.0])
    >>> linear_norm_act(x, w, b, jnp.ones(3), jnp.zeros(3), eps=0.0)
    Array([[0.       , 0.       , 1.2247449],
           [0.       , 0.       , 1.2247449]], dtype=float32)
    """
    where = f"nn.linear_norm_act(x, w, b, scale, offset, norm={norm!r})"
    if norm not in ("layer", "rms"):
        raise ValueError(f"{where}: unknown norm={norm!r}; choose 'layer' or 'rms'.")
    if not callable(activation):
        raise TypeError(f"{where}: activation must be a callable such as jax.nn.relu, got "
                        f"{type(activation).__name__}.")
    if b is None:
        raise TypeError(f"{where}: b is required; pass jnp.zeros(d_out) for no bias.")
    if norm == "rms" and offset is not None:
        raise ValueError(f"{where}: rms_norm has no offset; pass offset=None.")
    if norm == "layer" and offset is None:
        raise ValueError(f"{where}: layer_norm needs an offset; pass jnp.zeros(d_out).")
    eps = _common.check_eps((1e-5 if norm == "layer" else 1e-6) if eps is None else eps, where)
    # the unfused layers' checks, naming this function (no trace of the unfused layers)
    check_linear(x, w, b, where)
    y = jax.ShapeDtypeStruct(tuple(x.shape[:-1]) + (w.shape[1],), x.dtype)   # x W + b
    for name, p in (("scale", scale), ("offset", offset)):
        check_param(p, y, (len(y.shape) - 1,), where, name, x_name="x W + b")
    args = (x, w, b, scale) + ((offset,) if offset is not None else ())
    return _make(norm, activation, eps, offset is not None)(*args)
