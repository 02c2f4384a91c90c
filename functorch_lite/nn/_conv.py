r"""Convolution and pooling with hand-derived rules: ``conv``, ``max_pool``, ``avg_pool``.

Convolution (cross-correlation, as torch and ``lax`` define it), for one spatial axis
written out (more axes: the same per axis), stride ``s``, dilation ``d``, ``x`` padded::

    y[n, o, p] = b[o] + sum_{c, k} x[n, c, s p + d k] W[o, c, k]

Write ``P(x)[n, (c, k), p] = x[n, c, s p + d k]`` for the *patches* of ``x``
(``lax.conv_general_dilated_patches``). Then ``y = P(x) . W`` is a matrix product over
``(c, k)``, and the rules are those of the linear layer:

- tangent: ``dy = conv(dx, W) + P(x) . dW + db``;
- ``dL/dW[o, c, k] = sum_{n, p} P(x)[n, (c, k), p] G[n, o, p]`` (``G = dL/dy``): the
  patch product ``x^T G`` of the linear layer, an ``einsum``;
- ``dL/dx = conv_transpose(G, W)``: ``G`` dilated by the stride, correlated with ``W``
  flipped in space and with in/out channels swapped (the transpose of ``conv(., W)``);
- ``dL/db[o] = sum_{n, p} G[n, o, p]``.

Why patches for ``dW``: under ``vmap`` (per-sample gradients) JAX's own rule turns the
weight gradient into a convolution whose kernel is batched, which it lowers to a
grouped convolution that XLA:CPU runs slowly; the patch product becomes batched
``dot_general`` s instead, one per kernel offset ``k`` (``P(x) . W = sum_k x_k . W[.., k]``
with ``x_k`` the slice of ``x`` at offset ``k``). The term ``P(x) . dW`` runs under ``jax.checkpoint``, so reverse
mode stores ``x`` and ``W`` only (not the patches) and rebuilds ``P(x)`` in the backward
pass. Groups split ``c`` and ``o`` into ``(group, c)`` and ``(group, o)`` and the product
is taken per group.

Max pooling: ``y[p] = max_k x[s p + d k]`` over the window; with ``k*(p)`` the first
position of the maximum, ``dy[p] = dx[s p + d k*(p)]`` and
``dL/dx[i] = sum of G[p] over the windows whose maximum sits at i`` (ties: the first
maximum, as torch). Reverse mode stores only ``k*`` (one byte per output element when the
window has at most 256 positions), not ``x``. Average pooling is linear:
``y[p] = (1/|window|) sum_k x[s p + d k]``, ``dL/dx[i] = sum over windows containing i of
G[p]/|window|`` (``lax.reduce_window``, which JAX transposes into the same sum).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _common

__all__ = ["conv", "max_pool", "avg_pool"]

_SPATIAL = {1: "W", 2: "HW", 3: "DHW"}


# ------------------------------------------------------------------------ argument checks


def _layouts(layout: Any, n: int | None, where: str) -> tuple[str, int, bool]:
    """``(layout string, spatial dims, channels_last)`` from ``layout``, e.g. "NCHW"."""
    if layout in ("channels_first", "channels_last"):
        if n is None:
            n = 2
        lay = ("N" + _SPATIAL[n] + "C") if layout == "channels_last" else ("NC" + _SPATIAL[n])
        return lay, n, layout == "channels_last"
    if not isinstance(layout, str):
        raise TypeError(f"{where}: layout must be a string such as 'NCHW' or 'NHWC', got "
                        f"{type(layout).__name__}.")
    lay = layout.upper()
    for k, sp in _SPATIAL.items():
        if lay in ("NC" + sp, "N" + sp + "C"):
            if n is not None and n != k:
                raise ValueError(
                    f"{where}: layout={layout!r} has {k} spatial axes but the kernel has {n}; "
                    f"use layout={'NC' + _SPATIAL[n]!r} or {'N' + _SPATIAL[n] + 'C'!r}.")
            return lay, k, lay.endswith("C")
    raise ValueError(
        f"{where}: unknown layout={layout!r}; use one of 'NCW', 'NWC', 'NCHW', 'NHWC', "
        "'NCDHW', 'NDHWC' (or 'channels_first' / 'channels_last').")


def _ints(value: Any, n: int, where: str, name: str, *, minimum: int = 1) -> tuple[int, ...]:
    raw = tuple(value) if isinstance(value, (tuple, list)) else (value,) * n
    if len(raw) != n or any(isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral)
                            or v < minimum for v in raw):
        raise ValueError(f"{where}: {name} must be an int >= {minimum} or a tuple of {n} such "
                         f"ints, got {value!r}.")
    return tuple(int(v) for v in raw)


def _pads(padding: Any, spatial: tuple[int, ...], eff: tuple[int, ...], stride: tuple[int, ...],
          where: str) -> tuple[tuple[int, int], ...]:
    """Explicit ``(lo, hi)`` pads per spatial axis from an int, tuple, pairs or a string."""
    n = len(spatial)
    if isinstance(padding, str):
        kind = padding.lower()
        if kind == "valid":
            return ((0, 0),) * n
        if kind in ("same", "same_lower"):
            pads = []
            for size, k, s in zip(spatial, eff, stride):
                total = max((-(-size // s) - 1) * s + k - size, 0)
                small, big = total // 2, total - total // 2
                pads.append((big, small) if kind == "same_lower" else (small, big))
            return tuple(pads)
        raise ValueError(f"{where}: unknown padding={padding!r}; use 'valid', 'same', "
                         "'same_lower', an int, a tuple of ints or a tuple of (lo, hi) pairs.")
    if isinstance(padding, (tuple, list)) and padding and all(isinstance(p, (tuple, list)) for p in padding):
        if len(padding) != n or any(len(p) != 2 for p in padding):
            raise ValueError(f"{where}: padding={padding!r} must give one (lo, hi) pair per "
                             f"spatial axis ({n}).")
        flat = _ints(tuple(v for p in padding for v in p), 2 * n, where, "padding", minimum=0)
        return tuple(zip(flat[::2], flat[1::2]))
    sym = _ints(padding, n, where, "padding", minimum=0)
    return tuple((p, p) for p in sym)


def _out_spatial(spatial, pads, eff, stride, where, what="kernel"):
    out = []
    for i, (size, (lo, hi), k, s) in enumerate(zip(spatial, pads, eff, stride)):
        padded = size + lo + hi
        if k > padded:
            raise ValueError(
                f"{where}: the {what} spans {k} positions along spatial axis {i} (with dilation) "
                f"but the padded input has only {padded} ({size} + padding {lo} + {hi}); use a "
                "smaller kernel, more padding, or a larger input.")
        out.append((padded - k) // s + 1)
    return tuple(out)


# ----------------------------------------------------------------------------- conv rule


def _conv_rule(lay: str, wlay: str, stride, pads, dilation, groups, has_bias):
    key = ("conv", lay, wlay, stride, pads, dilation, groups, has_bias)
    return _common.RULES.get_or_compute(
        key, lambda: _build_conv(lay, wlay, stride, pads, dilation, groups, has_bias))


@dataclasses.dataclass(frozen=True)
class _ConvSpec:
    """One convolution's static settings, and the pieces its rules are made of."""

    lay: str
    wlay: str
    stride: tuple
    pads: tuple
    dilation: tuple
    groups: int

    @property
    def n(self) -> int:
        return len(self.stride)

    @property
    def caxis(self) -> int:
        return self.n + 1 if self.lay.endswith("C") else 1

    def conv(self, x, w, acc):
        pads, trim = self.pads, _trim_valid(self.pads)
        if trim:   # one more output column, sliced off (see _trim_valid)
            pads = pads[:-1] + ((0, self.stride[-1]),)
        y = lax.conv_general_dilated(x, w, self.stride, pads, rhs_dilation=self.dilation,
                                     dimension_numbers=(self.lay, self.wlay, self.lay),
                                     feature_group_count=self.groups, preferred_element_type=acc)
        if trim:
            axis = self.n if self.lay.endswith("C") else self.n + 1
            y = lax.slice_in_dim(y, 0, y.shape[axis] - 1, axis=axis)
        return y

    def bias(self, b, acc):
        shape = [1] * (self.n + 2)
        shape[self.caxis] = b.shape[0]
        return b.astype(acc).reshape(shape)

    def patch_product(self, x, w, acc):
        """``P(x) . W`` per group (the linear layer on patches); equals ``conv(x, W)``.

        The patches are the ``|kernel|`` strided slices ``x_k`` of the padded ``x`` (data
        movement only), in ``x``'s own layout, and ``P(x) . W = sum_k x_k . W[..., k]``:
        one product per kernel offset, contracting the channels. No stacked
        ``(.., K * C)`` patch array is built (a copy of every slice); under
        ``vmap`` the transpose is ``|kernel|`` batched matmuls ``x_k^T G`` (measured on the
        tutorial CNN: XLA temp 66 vs 93 MiB, a few % faster)."""
        n, cl, wlay, groups = self.n, self.lay.endswith("C"), self.wlay, self.groups
        k = tuple(w.shape[wlay.index(c)] for c in _SPATIAL[n])
        spatial = x.shape[1:1 + n] if cl else x.shape[2:2 + n]
        out_sp = tuple((size + lo + hi - (kk - 1) * d - 1) // s + 1
                       for size, (lo, hi), kk, d, s in zip(spatial, self.pads, k, self.dilation, self.stride))
        sp0 = 1 if cl else 2
        xp = _pad_spatial(x, sp0, self.pads, 0).astype(acc)
        to_oi = tuple(wlay.index(c) for c in "OI" + _SPATIAL[n])    # user weight -> (O, I, *k)
        w_oi = jnp.transpose(w, to_oi).astype(acc)
        o, cg = w_oi.shape[:2]
        wk = w_oi.reshape(groups, o // groups, cg, -1)                # (G, O/G, C/G, K)
        sp = "xyz"[:n]
        spec = f"n{sp}gc,goc->n{sp}go" if cl else f"ngc{sp},goc->ngo{sp}"
        out = None
        for i, xs in enumerate(_window_slices(xp, sp0, k, self.stride, self.dilation, out_sp, stack=False)):
            xg = xs.reshape(xs.shape[:-1] + (groups, cg)) if cl else xs.reshape((xs.shape[0], groups, cg) + xs.shape[2:])
            term = jnp.einsum(spec, xg, wk[..., i], preferred_element_type=acc)
            out = term if out is None else out + term
        return out.reshape(out.shape[:-2] + (o,)) if cl else out.reshape((out.shape[0], o) + out.shape[3:])


def _trim_valid(pads) -> bool:
    """Whether to run an unpadded convolution as one padded by ``stride`` at the end of
    its last spatial axis, then drop the extra output column (same values, one more
    column of products). XLA:CPU (JAX 0.10) runs unpadded 2-D convolutions of a batch
    several times slower than padded ones (measured: 64x26x26x32 -> 64, 3x3: 40 ms
    unpadded, 15 ms padded with the column dropped); other backends keep the plain one."""
    return all(p == (0, 0) for p in pads) and jax.default_backend() == "cpu"


def _build_conv(lay, wlay, stride, pads, dilation, groups, has_bias):
    spec = _ConvSpec(lay, wlay, stride, pads, dilation, groups)
    conv_, bias, patch_product, caxis = spec.conv, spec.bias, spec.patch_product, spec.caxis

    def primal(x, w, *b):
        acc = _common.acc_dtype(x.dtype)
        y = conv_(x, w, acc)
        if has_bias:
            y = y + bias(b[0], acc)
        return y.astype(x.dtype)

    def forward(x, w, *b):
        return primal(x, w, *b), (x, w)

    def tangent(res, tangents):
        """``dy = conv(dx, W) + P(x) . dW + db`` (under ``jax.checkpoint``)."""
        x, w = res
        acc = _common.acc_dtype(x.dtype)
        terms = []
        if tangents[0] is not None:
            terms.append(conv_(tangents[0], w, acc))
        if tangents[1] is not None:
            terms.append(patch_product(x, tangents[1], acc))
        if has_bias and tangents[2] is not None:
            terms.append(bias(tangents[2], acc))
        out = terms[0]
        for t in terms[1:]:
            out = out + t
        return jnp.broadcast_to(out, jax.eval_shape(lambda: conv_(x, w, acc)).shape)

    def seed_bwd(res, g):
        """The rule written out: ``dL/dW`` = the patch product, ``dL/dx`` the transposed
        convolution, ``dL/db`` sums over batch and space."""
        x, w = res
        acc = _common.acc_dtype(x.dtype)
        gf = g.astype(acc)
        (dx,) = jax.linear_transpose(lambda t: conv_(t, w, acc), x.astype(acc))(gf)
        (dw,) = jax.linear_transpose(lambda t: patch_product(x, t, acc), w.astype(acc))(gf)
        grads = (dx.astype(x.dtype), dw.astype(w.dtype))
        if has_bias:
            axes = tuple(i for i in range(gf.ndim) if i != caxis)
            grads += (jnp.sum(gf, axis=axes).astype(x.dtype),)
        return grads

    return _common.rule(primal, forward, tangent, seed=(forward, seed_bwd))


def conv(x: jax.Array, w: jax.Array, b: jax.Array | None = None, *, stride: Any = 1,
         padding: Any = 0, dilation: Any = 1, groups: int = 1, layout: str = "channels_first",
         weight_layout: str | None = None) -> jax.Array:
    r"""N-d convolution (1-D, 2-D or 3-D; the kernel's rank decides), as
    ``torch.nn.functional.conv{1,2,3}d``, with hand-derived rules (module docstring).

    ``y[n, o, p] = b[o] + sum_{c, k} x[n, c, stride * p + dilation * k] W[o, c, k]``.

    Args:
      x: ``(N, C, *spatial)`` for ``layout="channels_first"`` / ``"NCHW"`` (torch), or
        ``(N, *spatial, C)`` for ``"channels_last"`` / ``"NHWC"``; without the ``N``
        axis for one sample (as torch accepts), which suits ``vmap``.
      w: torch's ``(out, in / groups, *kernel)`` (``weight_layout="OIHW"``, the default
        for channels-first) or ``(*kernel, in / groups, out)`` (``"HWIO"``, the default
        for channels-last); any permutation of ``O``, ``I`` and the spatial letters.
      b: ``(out,)`` or ``None``.
      stride, dilation: an int or one per spatial axis.
      padding: an int, one per spatial axis, ``(lo, hi)`` pairs, or ``"valid"``,
        ``"same"`` (extra padding at the end, as torch and ``lax``), ``"same_lower"``.
      groups: channels split into ``groups`` independent convolutions.

    Reverse mode stores ``x`` and ``W``; ``dL/dW`` is a patch product (an ``einsum``),
    also per sample under ``vmap``. Half precision accumulates in float32.

    >>> import jax.numpy as jnp
    >>> x = jnp.arange(5.0).reshape(1, 1, 5)           # N=1, C=1, W=5
    >>> conv(x, jnp.ones((1, 1, 2)), padding="same")   # y[p] = x[p] + x[p+1]
    Array([[[1., 3., 5., 7., 4.]]], dtype=float32)
    """
    where = "nn.conv(x, w, b)"
    _common.check_float(x, where, "x")
    _common.check_float(w, where, "w")
    _common.check_float(b, where, "b", optional=True)
    n = np.ndim(w) - 2
    if n not in _SPATIAL:
        raise ValueError(f"{where}: w must have 3, 4 or 5 axes (1-D, 2-D, 3-D convolution: "
                         f"out, in, *kernel), got shape {tuple(np.shape(w))}.")
    lay, n, cl = _layouts(layout, n, where)
    wlay = _weight_layout(weight_layout, n, cl, where)
    groups = _check_groups(groups, where)
    unbatched = np.ndim(x) == n + 1
    if np.ndim(x) not in (n + 1, n + 2):
        raise ValueError(
            f"{where}: x has shape {tuple(np.shape(x))} ({np.ndim(x)} axes) but the kernel has "
            f"{n} spatial axes; x must have {n + 2} axes ({lay}) or {n + 1} for one sample.")
    xb = x[None] if unbatched else x
    _check_channels(xb.shape[-1] if cl else xb.shape[1], x, w, b, wlay, groups, where)
    stride = _ints(stride, n, where, "stride")
    dilation = _ints(dilation, n, where, "dilation")
    spatial = tuple(xb.shape[1:-1]) if cl else tuple(xb.shape[2:])
    ksize = tuple(w.shape[wlay.index(c)] for c in _SPATIAL[n])
    eff = tuple((k - 1) * d + 1 for k, d in zip(ksize, dilation))
    pads = _pads(padding, spatial, eff, stride, where)
    _out_spatial(spatial, pads, eff, stride, where)
    fn = _conv_rule(lay, wlay, stride, pads, dilation, groups, b is not None)
    y = fn(xb, w) if b is None else fn(xb, w, b)
    return y[0] if unbatched else y


def _check_groups(groups: Any, where: str) -> int:
    if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, numbers.Integral) or groups < 1:
        raise ValueError(f"{where}: groups must be a positive int, got {groups!r}.")
    return int(groups)


def _weight_layout(weight_layout: Any, n: int, cl: bool, where: str) -> str:
    """The weight's layout string: the default for the data layout, or ``weight_layout`` checked."""
    if weight_layout is None:
        return (_SPATIAL[n] + "IO") if cl else ("OI" + _SPATIAL[n])
    wlay = str(weight_layout).upper()
    if sorted(wlay) != sorted("OI" + _SPATIAL[n]):
        raise ValueError(f"{where}: weight_layout={weight_layout!r} must order the letters "
                         f"O, I and {', '.join(_SPATIAL[n])} (e.g. {'OI' + _SPATIAL[n]!r}, "
                         f"torch's, or {_SPATIAL[n] + 'IO'!r}).")
    return wlay


def _check_channels(c_in: int, x: jax.Array, w: jax.Array, b: Any, wlay: str, groups: int, where: str) -> None:
    """``w``'s input channels times ``groups`` match ``x``'s ``c_in``; ``b`` has one entry per
    output; all share one dtype."""
    wshape = dict(zip(wlay, w.shape))
    out_ch, in_per_group = wshape["O"], wshape["I"]
    if in_per_group * groups != c_in:
        raise ValueError(
            f"{where}: x has {c_in} channels but w (layout {wlay}, shape {tuple(w.shape)}) takes "
            f"{in_per_group} per group x groups={groups} = {in_per_group * groups}; check the "
            "channel axis of x (layout=) and of w (weight_layout=).")
    if out_ch % groups:
        raise ValueError(f"{where}: w has {out_ch} output channels, not divisible by "
                         f"groups={groups}.")
    if b is not None and tuple(np.shape(b)) != (out_ch,):
        raise ValueError(f"{where}: b has shape {tuple(np.shape(b))}; it must have shape "
                         f"({out_ch},), one entry per output channel.")
    dtypes = {np.dtype(a.dtype).name for a in (x, w, b) if a is not None}
    if len(dtypes) > 1:
        raise TypeError(f"{where}: x, w and b must share one dtype, got {sorted(dtypes)}; cast "
                        "them, e.g. w.astype(x.dtype).")


# ---------------------------------------------------------------------------- pooling


def _pool_args(x, window, stride, padding, dilation, layout, where):
    _common.check_float(x, where, "x")
    n = len(window) if isinstance(window, (tuple, list)) else None
    if n is None and layout not in ("channels_first", "channels_last"):
        n = len(str(layout)) - 2 if isinstance(layout, str) else None
    if n is None:   # an int window and a generic layout: x is a batch (N, C, *spatial)
        n = min(max(np.ndim(x) - 2, 1), 3)
    lay, n, cl = _layouts(layout, n, where)
    window = _ints(window, n, where, "window")
    stride = window if stride is None else _ints(stride, n, where, "stride")
    dilation = _ints(dilation, n, where, "dilation")
    if np.ndim(x) not in (n + 1, n + 2):
        raise ValueError(f"{where}: x has shape {tuple(np.shape(x))} but a {n}-D pool over "
                         f"layout {lay} needs {n + 2} axes (or {n + 1} for one sample).")
    unbatched = np.ndim(x) == n + 1
    xb = x[None] if unbatched else x
    spatial = tuple(xb.shape[1:-1]) if cl else tuple(xb.shape[2:])
    eff = tuple((k - 1) * d + 1 for k, d in zip(window, dilation))
    pads = _pads(padding, spatial, eff, stride, where)
    for i, ((lo, hi), k) in enumerate(zip(pads, eff)):
        if max(lo, hi) > k // 2 and not isinstance(padding, str):
            raise ValueError(f"{where}: padding {max(lo, hi)} on spatial axis {i} exceeds half "
                             f"the window ({k}); a window could then see only padding.")
    out = _out_spatial(spatial, pads, eff, stride, where, what="window")
    def full(per_axis, fill):
        """A per-spatial-axis tuple extended to every axis of ``x`` (``fill`` elsewhere)."""
        return ((fill,) + tuple(per_axis) + (fill,)) if cl else ((fill, fill) + tuple(per_axis))

    return xb, unbatched, dict(n=n, cl=cl, window=window, stride=stride, dilation=dilation,
                                pads=pads, out=out, full=full)


def _window_slices(x, sp0, window, stride, dilation, out, axis=0, stack=True):
    """The ``|window|`` strided slices ``x[s p + d k]`` (one per window offset ``k``, in
    row-major order) of the padded ``x``, whose spatial axes start at ``sp0``, stacked on
    a new axis ``axis`` (default leading: shape ``(|window|, *y.shape)``); with
    ``stack=False`` the list of slices."""
    slices = []
    for offs in np.ndindex(*window):
        start, limit, strides = [0] * x.ndim, list(x.shape), [1] * x.ndim
        for i, (o, s, d, m) in enumerate(zip(offs, stride, dilation, out)):
            start[sp0 + i] = o * d
            limit[sp0 + i] = o * d + (m - 1) * s + 1
            strides[sp0 + i] = s
        slices.append(lax.slice(x, start, limit, strides))
    return jnp.stack(slices, axis=axis) if stack else slices


def _pad_spatial(x, sp0, pads, value):
    cfg = [(0, 0, 0)] * x.ndim
    for i, (lo, hi) in enumerate(pads):
        cfg[sp0 + i] = (lo, hi, 0)
    if not any(lo or hi for lo, hi in pads):
        return x
    return lax.pad(x, jnp.asarray(value, x.dtype), cfg)


def _pool_windows(x, a, fill):
    sp0 = 1 if a["cl"] else 2
    return _window_slices(_pad_spatial(x, sp0, a["pads"], fill), sp0, a["window"], a["stride"],
                          a["dilation"], a["out"])


def _max_rule(a):
    key = ("max_pool",) + tuple((k, v) for k, v in a.items() if k != "full")
    return _common.RULES.get_or_compute(key, lambda: _build_max(a))


def _build_max(a):
    size = math.prod(a["window"])
    idx_dtype = jnp.uint8 if size <= 256 else jnp.int32

    def windows(x, fill):
        return _pool_windows(x, a, fill)

    def primal(x):
        return jnp.max(windows(x, -jnp.inf), axis=0)

    def forward(x):
        win = windows(x, -jnp.inf)
        k = jnp.argmax(win, axis=0)                  # first maximum, as torch
        y = jnp.take_along_axis(win, k[None], axis=0)[0]
        return y, (k.astype(idx_dtype),)

    def tangent(res, tangents):
        """``dy[p] = dx[s p + d k*(p)]``: pick the tangent at the window's first maximum."""
        (k,) = res
        win = windows(tangents[0], 0)
        hit = k[None].astype(jnp.int32) == jnp.arange(size, dtype=jnp.int32).reshape(
            (size,) + (1,) * k.ndim)
        return jnp.sum(jnp.where(hit, win, jnp.zeros((), win.dtype)), axis=0)

    return _common.rule(primal, forward, tangent)


def max_pool(x: jax.Array, window: Any, stride: Any = None, padding: Any = 0, *, dilation: Any = 1,
             layout: str = "channels_first") -> jax.Array:
    r"""Max pooling, as ``torch.nn.functional.max_pool{1,2,3}d`` (floor mode):
    ``y[p] = max_k x[stride * p + dilation * k]`` over each window (padding counts as -inf).

    ``window`` (and ``stride``, default = ``window``; ``dilation``) is an int or one per
    spatial axis. The number of spatial axes is the tuple's length, else that of a
    ``layout`` string such as ``"NCHW"``, else ``x.ndim - 2``. ``x``: ``(N, C, *spatial)``
    channels-first, or ``(N, *spatial, C)`` channels-last; one sample without ``N`` needs a
    tuple window or a layout string (``max_pool(x, (2, 2))``).

    Rules: ``dy[p] = dx`` at the window's first maximum ``k*(p)``; ``dL/dx`` adds ``G[p]``
    at each window's maximum. Reverse mode stores ``k*`` only (uint8 for windows of <= 256).

    >>> import jax, jax.numpy as jnp
    >>> x = jnp.array([[[[1.0, 2.0], [4.0, 3.0]]]])
    >>> max_pool(x, 2)
    Array([[[[4.]]]], dtype=float32)
    >>> jax.grad(lambda x: max_pool(x, 2).sum())(x)[0, 0]
    Array([[0., 0.],
           [1., 0.]], dtype=float32)
    """
    where = f"nn.max_pool(x, window={window!r})"
    xb, unbatched, a = _pool_args(x, window, stride, padding, dilation, layout, where)
    y = _max_rule(a)(xb)
    return y[0] if unbatched else y


def avg_pool(x: jax.Array, window: Any, stride: Any = None, padding: Any = 0, *,
             count_include_pad: bool = True, layout: str = "channels_first") -> jax.Array:
    r"""Average pooling, as ``torch.nn.functional.avg_pool{1,2,3}d`` (floor mode):
    ``y[p] = (1/|window|) sum_k x[stride * p + k]`` (padding counts as 0; with
    ``count_include_pad=False`` the divisor is the number of real entries).

    Linear, so its reverse rule is its transpose: ``dL/dx[i] = sum over the windows that
    contain i of G[p] / |window|``. Reverse mode stores nothing. Arguments as
    :func:`max_pool`.

    >>> import jax.numpy as jnp
    >>> avg_pool(jnp.array([[[1.0, 2.0, 3.0, 5.0]]]), 2)
    Array([[[1.5, 4. ]]], dtype=float32)
    """
    where = f"nn.avg_pool(x, window={window!r})"
    if not isinstance(count_include_pad, bool):
        raise TypeError(f"{where}: count_include_pad must be True or False, got "
                        f"{count_include_pad!r}.")
    xb, unbatched, a = _pool_args(x, window, stride, padding, 1, layout, where)
    full = a["full"]
    acc = _common.acc_dtype(xb.dtype)
    padcfg = full(a["pads"], (0, 0))
    dims, strides = full(a["window"], 1), full(a["stride"], 1)
    total = lax.reduce_window(xb.astype(acc), jnp.zeros((), acc), lax.add, dims, strides, padcfg)
    if count_include_pad:
        y = total / math.prod(a["window"])
    else:
        ones = jnp.ones((1,) * xb.ndim, acc)
        shape = tuple(1 if i not in _spatial_axes(a, xb.ndim) else s for i, s in enumerate(xb.shape))
        count = lax.reduce_window(jnp.broadcast_to(ones, shape), jnp.zeros((), acc), lax.add,
                                  dims, strides, padcfg)
        y = total / count
    y = y.astype(xb.dtype)
    return y[0] if unbatched else y


def _spatial_axes(a, ndim):
    sp0 = 1 if a["cl"] else 2
    return tuple(range(sp0, sp0 + a["n"]))
