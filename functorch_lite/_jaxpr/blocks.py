"""Block-diagonal Jacobian patterns read from a jaxpr as *axis maps*, without index sets.

Many sparse Jacobians are a Kronecker product ``I_B (x) ones(r, c)`` up to the order of
rows and columns: a batch of samples through the same layer, a per-pixel map, a sum
over some axes of a batched computation. Their structure lives in the axes, not in the
elements: output element ``o`` depends on input element ``i`` exactly when
``o[a] == i[pair[a]]`` for each *paired* output axis ``a``. The other input axes are
*full* (``o`` depends on every position along them) and the other output axes are
*free* (``o``'s dependence does not change along them).

Propagating that map through the program costs a few tuple operations per equation,
where the index sets of :mod:`.sparsity` cost time in proportion to the nonzeros. The
colorings come with it, optimal and in closed form:

- columns: color = position along the full input axes, ``c = prod(full sizes)`` JVPs,
  the densest row's count (no coloring can use fewer);
- rows: color = position along the free output axes, ``r = prod(free sizes)`` VJPs;
- no direct bicoloring beats ``min(r, c)``: in a dense ``r x c`` block a JVP entry
  needs its column's color alone in the block's rows, a VJP entry its row's color
  alone, so covering the block takes ``c`` column colors or ``r`` row colors.

A program this reading cannot express (an index set that is not a product of axes, a
known constant with zeros, a union of two different maps, a primitive without a rule
here) gives ``None``, and the caller reads the index sets instead. Where it gives a
map, the map's matrix is the one :func:`.sparsity.jacobian_pattern` computes: the rules
below are that module's rules restricted to axis maps (the tests check it on random
programs).

>>> import jax.numpy as jnp
>>> from functorch_lite._jaxpr import stage
>>> W = jnp.ones((4, 3))
>>> b = block_pattern(stage(lambda X: jnp.tanh(X @ W.T), jnp.ones((5, 3))))
>>> b.pair, b.n_col_colors, b.n_row_colors      # out axis 0 = in axis 0; 3 JVPs or 4 VJPs
(((0,), None), 3, 4)
>>> b.matrix().nnz == 5 * 4 * 3
True
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from . import ClosedJaxpr, primitive_name
from .sparsity import (_CALLS, _ELEMENTWISE, _IDENTITY_MULTI, _REDUCTIONS, _VALUE_ONLY,
                       _ZERO_DERIVATIVE, _Entry, _known, _Propagator, _inexact)

__all__ = ["Blocks", "block_pattern"]


class Blocks(NamedTuple):
    """The Jacobian pattern of ``out`` (``out_shape``) w.r.t. ``in`` (``in_shape``):
    ``out[o]`` depends on ``in[i]`` iff ``o[a]`` is the row-major position of ``i``
    along the input axes ``pair[a]`` (consecutive axes, one or more: a reshape merges
    them) for every output axis ``a`` with ``pair[a]`` not ``None``."""

    out_shape: tuple
    in_shape: tuple
    pair: tuple

    @property
    def full_axes(self) -> tuple:
        """Input axes no output axis is paired with: each output reads all of them."""
        paired = {b for axes in self.pair if axes is not None for b in axes}
        return tuple(b for b in range(len(self.in_shape)) if b not in paired)

    @property
    def free_axes(self) -> tuple:
        """Output axes paired with no input axis."""
        return tuple(a for a, b in enumerate(self.pair) if b is None)

    @property
    def n_col_colors(self) -> int:
        return math.prod(self.in_shape[b] for b in self.full_axes)

    @property
    def n_row_colors(self) -> int:
        return math.prod(self.out_shape[a] for a in self.free_axes)

    @property
    def nnz(self) -> int:
        return math.prod(self.out_shape) * self.n_col_colors

    def column_colors(self) -> np.ndarray:
        """Color of each (flat) input element: its position along the full axes."""
        return _position(self.in_shape, self.full_axes)

    def row_colors(self) -> np.ndarray:
        """Color of each (flat) output element: its position along the free axes."""
        return _position(self.out_shape, self.free_axes)

    def matrix(self) -> sp.csr_matrix:
        """The boolean CSR matrix (flat outputs x flat inputs), canonical: each row's
        columns ascending, ``n_col_colors`` of them."""
        strides = _strides(self.in_shape)
        base = np.zeros(self.out_shape, np.int64)       # the paired part of each row
        for a, axes in enumerate(self.pair):
            if axes is not None:       # consecutive axes: the last one's stride steps them
                view = [1] * len(self.out_shape)
                view[a] = self.out_shape[a]
                base = base + (np.arange(self.out_shape[a]) * strides[axes[-1]]).reshape(view)
        offsets = np.zeros(1, np.int64)                 # the full part, ascending
        for b in self.full_axes:
            offsets = (offsets[:, None] + np.arange(self.in_shape[b]) * strides[b]).ravel()
        m, n, c = math.prod(self.out_shape), math.prod(self.in_shape), offsets.size
        indices = (base.reshape(-1, 1) + offsets).ravel()
        return sp.csr_matrix((np.ones(m * c, bool), indices, np.arange(m + 1) * c), shape=(m, n))


def _strides(shape) -> list:
    out, acc = [0] * len(shape), 1
    for d in range(len(shape) - 1, -1, -1):
        out[d], acc = acc, acc * shape[d]
    return out


def _position(shape, axes) -> np.ndarray:
    """For each flat element of ``shape``, its row-major position along ``axes`` alone."""
    pos = np.zeros(shape, np.int64)
    acc = 1
    for d in reversed(axes):
        view = [1] * len(shape)
        view[d] = shape[d]
        pos = pos + (np.arange(shape[d]) * acc).reshape(view)
        acc *= shape[d]
    return pos.ravel()


class _NotBlocks(Exception):
    """The program's pattern is not an axis map (or this module has no rule for it)."""


class _Map(NamedTuple):
    """The dependency of one variable: ``pair[a]`` is the tuple of (consecutive) input
    axes that axis ``a`` of the variable is paired with, or ``None``."""

    pair: tuple


class _Moved(NamedTuple):
    """A known constant moved by an index op (:data:`_MOVES`), not computed: the rules
    read only whether it may hold a zero, and moving elements does not change that."""

    zero: bool


_MOVES = frozenset("transpose reshape squeeze expand_dims broadcast_in_dim".split())


def _may_be_zero(e) -> bool:
    """A known operand (moved or not) with a zero: the index sets would drop rows there."""
    if e.dep is not None or e.val is None:
        return False
    return e.val.zero if isinstance(e.val, _Moved) else not e.val.all()


def _top(ndim: int) -> _Map:
    """Every element depends on the whole input."""
    return _Map((None,) * ndim)


def _union(maps: list, ndim: int):
    """The union of operand maps: equal maps, or the whole input when one is top."""
    maps = [m for m in maps if m is not None]
    if not maps:
        return None
    if any(m == _top(ndim) for m in maps):
        return _top(ndim)
    if any(m != maps[0] for m in maps[1:]):
        raise _NotBlocks("a union of two different axis maps")
    return maps[0]


def _same_shape(e, shape):
    """An operand's map as seen at the output's shape (same shape, or a scalar)."""
    if e.dep is None:
        return None
    if tuple(e.shape) == tuple(shape):
        return e.dep
    if not e.shape:
        return _top(len(shape))
    raise _NotBlocks("implicit broadcast")


def _elementwise(prop, eqn, ins, shapes):
    return [_union([_same_shape(e, shapes[0]) for e in ins], len(shapes[0]))]


def _value_only(prop, eqn, ins, shapes):
    return _elementwise(prop, eqn, ins, shapes) if prop.structural else [None]


def _mul(prop, eqn, ins, shapes):
    """As :func:`.sparsity._rule_mul`: a known factor with a zero would drop rows."""
    if any(_may_be_zero(e) for e in ins):
        raise _NotBlocks("a known factor with zeros")
    return _elementwise(prop, eqn, ins, shapes)


def _select_n(prop, eqn, ins, shapes):
    if _known(ins[0]):
        raise _NotBlocks("a known predicate picks cases per element")
    return [_union([_same_shape(e, shapes[0]) for e in ins[1:]], len(shapes[0]))]


def _identity_multi(prop, eqn, ins, shapes):
    return [e.dep for e in ins][:len(shapes)]


def _merge(pairs: list, in_shape: tuple):
    """The pair of one axis that merges (row-major) axes with these pairs: all free, or
    all paired with input axes in order, with only length-1 input axes between them."""
    if all(p is None for p in pairs):
        return None
    if any(p is None for p in pairs):
        raise _NotBlocks("a reshape that merges paired and free axes")
    axes = tuple(b for p in pairs for b in p)
    if any(b >= c or any(in_shape[g] != 1 for g in range(b + 1, c)) for b, c in zip(axes, axes[1:])):
        raise _NotBlocks("a reshape that merges input axes out of order")
    return axes


def _split(axes, sizes: list, in_shape: tuple) -> list:
    """The pairs of the axes of ``sizes`` (none of length 1) that split one axis paired
    with ``axes`` (row-major): each takes whole input axes."""
    if axes is None:
        return [None] * len(sizes)
    out, k = [], 0
    for size in sizes:
        taken, prod = [], 1
        while k < len(axes) and prod < size:
            prod *= in_shape[axes[k]]
            taken.append(axes[k])
            k += 1
        if prod != size:
            raise _NotBlocks("a reshape that splits an input axis")
        out.append(tuple(taken))
    return out[:-1] + [out[-1] + tuple(axes[k:])]      # length-1 axes left over


def _reshape(prop, eqn, ins, shapes):
    """A row-major reshape: axes are grouped where the sizes' running products meet; in
    each group the operand's axes merge into one and split into the output's."""
    x, out_shape = ins[0], tuple(shapes[0])
    if eqn.params.get("dimensions") is not None:
        raise _NotBlocks("reshape with a transpose")
    src = [d for d, s in enumerate(x.shape) if s != 1]
    dst = [d for d, s in enumerate(out_shape) if s != 1]
    pair = [None] * len(out_shape)
    i = j = 0
    while i < len(src) or j < len(dst):
        gi, gj, pi, pj = [src[i]], [dst[j]], x.shape[src[i]], out_shape[dst[j]]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                gi.append(src[i]); pi *= x.shape[src[i]]; i += 1   # noqa: E702
            else:
                gj.append(dst[j]); pj *= out_shape[dst[j]]; j += 1  # noqa: E702
        merged = _merge([x.dep.pair[d] for d in gi], prop.in_shape)
        for d, p in zip(gj, _split(merged, [out_shape[d] for d in gj], prop.in_shape)):
            pair[d] = p
    return [_Map(tuple(pair))]


def _split_one(prop, eqn, ins, shapes):
    """``split`` into one piece (how a single array is unraveled): the operand itself."""
    if len(shapes) != 1:
        raise _NotBlocks("split into pieces")
    return [ins[0].dep]


def _broadcast_in_dim(prop, eqn, ins, shapes):
    x, out_shape = ins[0], shapes[0]
    pair = [None] * len(out_shape)
    for i, d in enumerate(eqn.params["broadcast_dimensions"]):
        if x.shape[i] == out_shape[d]:
            pair[d] = x.dep.pair[i]      # a length-1 axis stretched becomes free
    return [_Map(tuple(pair))]


def _transpose(prop, eqn, ins, shapes):
    pair = ins[0].dep.pair
    return [_Map(tuple(pair[p] for p in eqn.params["permutation"]))]


def _dot_general(prop, eqn, ins, shapes):
    """``out`` axes: batch, lhs free, rhs free. Through the operand that depends on the
    input, its contracted axes become full and the other operand's free axes free; the
    other operand must be traced or known without zeros (its zeros would thin the
    pattern)."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = ins
    if lhs.dep is not None and rhs.dep is not None:
        raise _NotBlocks("a product of two operands that both depend on the input")
    if any(_may_be_zero(e) for e in ins):
        raise _NotBlocks("a known operand with zeros")
    lf = [d for d in range(len(lhs.shape)) if d not in lc and d not in lb]
    rf = [d for d in range(len(rhs.shape)) if d not in rc and d not in rb]
    if lhs.dep is not None:
        p = lhs.dep.pair
        pair = [p[d] for d in lb] + [p[d] for d in lf] + [None] * len(rf)
    else:
        p = rhs.dep.pair
        pair = [p[d] for d in rb] + [None] * len(lf) + [p[d] for d in rf]
    return [_Map(tuple(pair))]


def _reduction(prop, eqn, ins, shapes):
    axes = set(eqn.params["axes"])
    return [_Map(tuple(b for d, b in enumerate(ins[0].dep.pair) if d not in axes))]


def _table() -> dict:
    table: dict = {}
    families = [
        (_ZERO_DERIVATIVE | _VALUE_ONLY, _value_only), ({"mul"}, _mul),
        ({"select_n"}, _select_n), (_ELEMENTWISE, _elementwise),
        (_IDENTITY_MULTI, _identity_multi),
        ({"reshape", "squeeze", "expand_dims"}, _reshape), ({"split"}, _split_one),
        ({"broadcast_in_dim"}, _broadcast_in_dim), ({"transpose"}, _transpose),
        ({"dot_general"}, _dot_general), (_REDUCTIONS, _reduction),
    ]
    for names, fn in families:
        for name in names:
            table.setdefault(name, fn)
    return table


_RULES = _table()


class _AxisPropagator(_Propagator):
    """:class:`.sparsity._Propagator` (its constant folding, its calls, its
    differentiability checks) with axis maps in place of dependency matrices."""

    def eqn(self, eqn, ins: list) -> list:
        avals = [v.aval for v in eqn.outvars]
        if all(e.dep is None for e in ins):     # constants: folded as the index sets fold them,
            moved = [e.val for e in ins if isinstance(e.val, _Moved)]   # or only moved
            if len(ins) == 1 and primitive_name(eqn) in _MOVES and (moved or _known(ins[0])):
                return [_Entry(None, _Moved(_may_be_zero(ins[0])), avals[0].shape, avals[0].dtype)]
            if moved:                           # computed from a moved constant: say it may
                return [_Entry(None, _Moved(True), a.shape, a.dtype) for a in avals]  # hold zeros
            return super().eqn(eqn, ins)
        keep = [self.structural > 0 or _float(a.dtype) for a in avals]
        if not any(keep):
            return [_Entry(None, None, a.shape, a.dtype) for a in avals]
        deps = self.rule(eqn, ins, [a.shape for a in avals])
        return [_Entry(d if k else None, None, a.shape, a.dtype) for d, k, a in zip(deps, keep, avals)]

    def rule(self, eqn, ins, shapes) -> list:
        name = primitive_name(eqn)
        if name in _CALLS:
            if not any(k in eqn.params for k in ("jaxpr", "call_jaxpr", "fun_jaxpr")):
                raise _NotBlocks(name)
            return self._call(eqn, ins)
        fn = _RULES.get(name)
        if fn is None:
            raise _NotBlocks(name)
        return fn(self, eqn, ins, shapes)


def _float(dtype) -> bool:
    """:func:`.sparsity._inexact` (differentiable), its common answers first."""
    kind = getattr(dtype, "kind", None)
    return True if kind in ("f", "c") else False if kind in ("i", "u", "b") else _inexact(dtype)


def block_pattern(closed: ClosedJaxpr, in_shape: tuple | None = None) -> Blocks | None:
    """The pattern of the first output of ``closed`` (one array in) w.r.t. its input as
    :class:`Blocks`, or ``None`` where it is not an axis map (or is empty). ``in_shape``:
    the input's shape when the program reads it flattened (its size the same)."""
    (var,) = closed.jaxpr.invars
    out = closed.out_avals[0]
    var_shape, out_shape = tuple(var.aval.shape), tuple(out.shape)
    in_shape = var_shape if in_shape is None else tuple(in_shape)
    if (not _float(var.aval.dtype) or 0 in in_shape or 0 in out_shape
            or math.prod(in_shape) != math.prod(var_shape)):
        return None
    start = tuple((b,) for b in range(len(in_shape))) if in_shape == var_shape else None
    prop = _AxisPropagator(math.prod(in_shape))
    prop.in_shape = in_shape
    try:
        if start is None:      # the flat input: its one axis merges all the input's axes
            if len(var_shape) != 1:
                return None
            start = (tuple(range(len(in_shape))),) if in_shape else (None,)
        ins = [_Entry(_Map(start), None, var_shape, var.aval.dtype)]
        first = prop.run_closed(closed, ins)[0]
    except _NotBlocks:
        return None
    if first.dep is None:
        return None
    return Blocks(out_shape, in_shape, first.dep.pair)
