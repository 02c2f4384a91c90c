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

import jax
import numpy as np
import scipy.sparse as sp

from . import ClosedJaxpr
from .cuts import Lit, Program, flatten
from .sparsity import (_CALLS, _ELEMENTWISE, _IDENTITY_MULTI, _REDUCTIONS, _VALUE_ONLY,
                       _ZERO_DERIVATIVE, _inexact)

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


# A variable's map is the tuple ``pair`` (``pair[a]``: the tuple of input axes that its
# axis ``a`` is paired with, or ``None``), or ``None`` when it depends on no input.


class _Ops:
    """One node's operands: their maps and shapes, and what the index sets would know of
    the value of each operand that depends on no input (``known``, ``zero``)."""

    __slots__ = ("maps", "shapes", "_ins", "_know")

    def __init__(self, maps: list, shapes: list, ins: tuple, know: "_Known"):
        self.maps, self.shapes, self._ins, self._know = maps, shapes, ins, know

    def known(self, k: int) -> bool:
        """Operand ``k``'s value is known (a constant, a literal, or folded from them)."""
        return self._know.known(self._ins[k])

    def zero(self, k: int) -> bool:
        """Operand ``k`` depends on no input, is known, and may hold a zero."""
        return self.maps[k] is None and self._know.zero(self._ins[k])


def _top(ndim: int) -> tuple:
    """Every element depends on the whole input."""
    return (None,) * ndim


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


def _at(ops: _Ops, k: int, shape: tuple):
    """Operand ``k``'s map as seen at the output's shape (same shape, or a scalar)."""
    m = ops.maps[k]
    if m is None or tuple(ops.shapes[k]) == tuple(shape):
        return m
    if not ops.shapes[k]:
        return _top(len(shape))
    raise _NotBlocks("implicit broadcast")


def _elementwise(eqn, ops, out_shapes, structural):
    shape = out_shapes[0]
    return [_union([_at(ops, k, shape) for k in range(len(ops.maps))], len(shape))]


def _value_only(eqn, ops, out_shapes, structural):
    """Zero derivative: no dependence, except inside a custom rule (as the index sets)."""
    return _elementwise(eqn, ops, out_shapes, structural) if structural else [None]


def _mul(eqn, ops, out_shapes, structural):
    """As :func:`.sparsity._rule_mul`: a known factor with a zero would drop rows."""
    if any(ops.zero(k) for k in range(len(ops.maps))):
        raise _NotBlocks("a known factor with zeros")
    return _elementwise(eqn, ops, out_shapes, structural)


def _select_n(eqn, ops, out_shapes, structural):
    if ops.maps[0] is None and ops.known(0):
        raise _NotBlocks("a known predicate picks cases per element")
    shape = out_shapes[0]
    return [_union([_at(ops, k, shape) for k in range(1, len(ops.maps))], len(shape))]


def _identity_multi(eqn, ops, out_shapes, structural):
    return list(ops.maps[:len(out_shapes)])


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


def _reshape(eqn, ops, out_shapes, structural, in_shape):
    """A row-major reshape: axes are grouped where the sizes' running products meet; in
    each group the operand's axes merge into one and split into the output's."""
    shape, pairs, out_shape = ops.shapes[0], ops.maps[0], tuple(out_shapes[0])
    if eqn.params.get("dimensions") is not None:
        raise _NotBlocks("reshape with a transpose")
    src = [d for d, n in enumerate(shape) if n != 1]
    dst = [d for d, n in enumerate(out_shape) if n != 1]
    pair = [None] * len(out_shape)
    i = j = 0
    while i < len(src) or j < len(dst):
        gi, gj, pi, pj = [src[i]], [dst[j]], shape[src[i]], out_shape[dst[j]]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                gi.append(src[i]); pi *= shape[src[i]]; i += 1   # noqa: E702
            else:
                gj.append(dst[j]); pj *= out_shape[dst[j]]; j += 1  # noqa: E702
        merged = _merge([pairs[d] for d in gi], in_shape)
        for d, p in zip(gj, _split(merged, [out_shape[d] for d in gj], in_shape)):
            pair[d] = p
    return [tuple(pair)]


def _split_one(eqn, ops, out_shapes, structural):
    """``split`` into one piece (how a single array is unraveled): the operand itself."""
    if len(out_shapes) != 1:
        raise _NotBlocks("split into pieces")
    return [ops.maps[0]]


def _broadcast_in_dim(eqn, ops, out_shapes, structural):
    shape, pairs, out_shape = ops.shapes[0], ops.maps[0], out_shapes[0]
    pair = [None] * len(out_shape)
    for i, d in enumerate(eqn.params["broadcast_dimensions"]):
        if shape[i] == out_shape[d]:
            pair[d] = pairs[i]           # a length-1 axis stretched becomes free
    return [tuple(pair)]


def _transpose(eqn, ops, out_shapes, structural):
    pairs = ops.maps[0]
    return [tuple(pairs[p] for p in eqn.params["permutation"])]


def _dot_general(eqn, ops, out_shapes, structural):
    """``out`` axes: batch, lhs free, rhs free. Through the operand that depends on the
    input, its contracted axes become full and the other operand's free axes free; the
    other operand must be traced or known without zeros (its zeros would thin the
    pattern)."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    (lm, rm), (ls, rs) = ops.maps, ops.shapes
    if lm is not None and rm is not None:
        raise _NotBlocks("a product of two operands that both depend on the input")
    if ops.zero(0) or ops.zero(1):
        raise _NotBlocks("a known operand with zeros")
    lf = [d for d in range(len(ls)) if d not in lc and d not in lb]
    rf = [d for d in range(len(rs)) if d not in rc and d not in rb]
    if lm is not None:
        return [tuple([lm[d] for d in lb] + [lm[d] for d in lf] + [None] * len(rf))]
    return [tuple([rm[d] for d in rb] + [None] * len(lf) + [rm[d] for d in rf])]


def _reduction(eqn, ops, out_shapes, structural):
    axes = set(eqn.params["axes"])
    return [tuple(b for d, b in enumerate(ops.maps[0]) if d not in axes)]


def _table() -> dict:
    table: dict = {}
    families = [
        (_ZERO_DERIVATIVE | _VALUE_ONLY, _value_only), ({"mul"}, _mul),
        ({"select_n"}, _select_n), (_ELEMENTWISE, _elementwise),
        (_IDENTITY_MULTI, _identity_multi), ({"split"}, _split_one),
        ({"broadcast_in_dim"}, _broadcast_in_dim), ({"transpose"}, _transpose),
        ({"dot_general"}, _dot_general), (_REDUCTIONS, _reduction),
    ]
    for names, fn in families:
        for name in names:
            table.setdefault(name, fn)
    return table


_RULES = _table()
_RESHAPES = frozenset({"reshape", "squeeze", "expand_dims"})
# Index ops: a known operand moved by one keeps whether it holds a zero (not computed).
_MOVES = frozenset({"transpose", "broadcast_in_dim"}) | _RESHAPES
_SUB_KEYS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _float(dtype) -> bool:
    """:func:`.sparsity._inexact` (differentiable), its common answers first."""
    kind = getattr(dtype, "kind", None)
    return True if kind in ("f", "c") else False if kind in ("i", "u", "b") else _inexact(dtype)


class _Known:
    """What the index sets know of the values that depend on no input: constants and
    literals, and what constant folding computes from them. Whether one may hold a zero
    is computed on first question (a moved value asks its source)."""

    def __init__(self, prog: Program, in_facts: dict):
        self.values = dict(prog.consts)     # id -> a known value (None: traced, unknown)
        self.alias: dict = {}               # id -> the id it was moved from
        self.facts = dict(in_facts)         # id -> may hold a zero (computed)

    def known(self, r) -> bool:
        if type(r) is Lit:
            return True
        if r in self.facts or r in self.alias:
            return True
        v = self.values.get(r, None)
        return v is not None and not isinstance(v, jax.core.Tracer)

    def zero(self, r) -> bool:
        """Known, and may hold a zero."""
        if type(r) is Lit:
            return not np.asarray(r.val).all()
        while r in self.alias:
            r = self.alias[r]
        if r not in self.facts:
            if not self.known(r):
                return False
            try:
                self.facts[r] = not np.asarray(self.values[r]).all()
            except Exception:  # noqa: BLE001 - opaque (keys): the index sets cannot fold it
                self.facts[r] = False
        return self.facts[r]


def _run(prog: Program, in_maps: list, in_facts: dict, structural: int, in_shape: tuple) -> list:
    """The maps of ``prog``'s outputs given its inputs' maps (``in_facts``: what is known of
    inputs that depend on no input)."""
    maps: list = [None] * len(prog.shapes)
    for i, m in zip(prog.inputs, in_maps):
        maps[i] = m
    know = _Known(prog, in_facts)
    shapes, dtypes = prog.shapes, prog.dtypes
    for node in prog.nodes:
        eqn, ins, outs = node.eqn, node.ins, node.outs
        in_maps_ = [None if type(r) is Lit else maps[r] for r in ins]
        name = eqn.primitive.name
        if in_maps_.count(None) == len(in_maps_):      # a value of constants (or of nothing)
            if not eqn.effects and all(know.known(r) for r in ins):
                if name in _MOVES and len(ins) == 1:
                    if type(ins[0]) is Lit:
                        know.facts[outs[0]] = know.zero(ins[0])
                    else:
                        know.alias[outs[0]] = ins[0]
                else:              # folded by the index sets: say it may hold a zero
                    know.facts.update((o, True) for o in outs if o >= 0)
            continue
        keep = [o >= 0 and (structural > 0 or _float(dtypes[o])) for o in outs]
        if not any(keep):
            continue
        ops = _Ops(in_maps_, [np.shape(r.val) if type(r) is Lit else shapes[r] for r in ins],
                   ins, know)
        out_shapes = [shapes[o] if o >= 0 else () for o in outs]
        if name in _RESHAPES:
            out = _reshape(eqn, ops, out_shapes, structural, in_shape)
        elif name in _CALLS:
            out = _call(eqn, ins, in_maps_, know, structural, in_shape)
        else:
            fn = _RULES.get(name)
            if fn is None:
                raise _NotBlocks(name)
            out = fn(eqn, ops, out_shapes, structural)
        for o, m, k in zip(outs, out, keep):
            if k:
                maps[o] = m
    return [None if type(r) is Lit else maps[r] for r in prog.outputs]


def _call(eqn, ins, in_maps, know: _Known, structural: int, in_shape: tuple) -> list:
    """A call's sub-program, read the same way (inside a custom rule, value dependencies
    through zero-derivative ops count, as in the index sets)."""
    subs = [eqn.params[k] for k in _SUB_KEYS if k in eqn.params]
    if not subs:
        raise _NotBlocks(eqn.primitive.name)
    sub = subs[0]
    closed = sub if isinstance(sub, ClosedJaxpr) else ClosedJaxpr(sub, [])
    prog = flatten(closed)
    facts = {i: know.zero(r) for i, r, m in zip(prog.inputs, ins, in_maps)
             if m is None and know.known(r)}
    custom = eqn.primitive.name.startswith("custom")
    return _run(prog, in_maps, facts, structural + custom, in_shape)


def block_pattern(closed: ClosedJaxpr, in_shape: tuple | None = None,
                  prog: Program | None = None) -> Blocks | None:
    """The pattern of the first output of ``closed`` (one array in) w.r.t. its input as
    :class:`Blocks`, or ``None`` where it is not an axis map (or is empty). ``in_shape``:
    the input's shape when the program reads it flattened (its size the same); ``prog``:
    ``closed`` flattened already (:func:`.cuts.flatten`, the planner's)."""
    (var,) = closed.jaxpr.invars
    var_shape, out_shape = tuple(var.aval.shape), tuple(closed.out_avals[0].shape)
    in_shape = var_shape if in_shape is None else tuple(in_shape)
    if (not _float(var.aval.dtype) or 0 in in_shape or 0 in out_shape
            or math.prod(in_shape) != math.prod(var_shape)):
        return None
    if in_shape == var_shape:
        start = tuple((b,) for b in range(len(in_shape)))
    elif len(var_shape) == 1:       # the flat input: its one axis merges all the input's axes
        start = (tuple(range(len(in_shape))),) if in_shape else (None,)
    else:
        return None
    try:
        first = _run(prog if prog is not None else flatten(closed), [start], {}, 0, in_shape)[0]
    except _NotBlocks:
        return None
    if first is None:
        return None
    return Blocks(out_shape, in_shape, first)
