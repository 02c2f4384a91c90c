"""Jacobian sparsity read from a jaxpr: index sets propagated at trace time.

Every variable of the program gets a *dependency matrix*: a boolean
``scipy.sparse.csr_matrix`` of shape ``(var.size, n_inputs)`` whose row ``e`` holds the
input elements that flattened element ``e`` of the variable may depend on
*differentiably*. The Jacobian pattern of the program is the dependency matrix of its
output. Each rule is a superset of the truth (a structural over-approximation), so the
pattern always contains every nonzero the Jacobian can take at any point:

- elementwise ops: the union of the operands' rows (``mul`` by a known constant drops
  the rows where the constant is zero; ``sign``/``floor``/comparisons and every
  non-float output depend on nothing);
- index ops (reshape, broadcast, transpose, slice, pad, concatenate, dynamic slices with
  known starts, gather/scatter with known indices): an *index map* (which operand element
  each output element copies) computed with NumPy, or by running the op on an array of
  element ids (``gather``; scatter through the equivalent gather), then a row selection;
- contractions (``dot_general``, reductions, cumulative ops, ``conv_general_dilated``,
  ``reduce_window``): a sparse structural matrix ``M`` (output elements x operand
  elements) and a sparse product ``M @ dep``. A constant operand known at trace time
  contributes its own zero pattern (``A @ x`` with a banded ``A`` is banded);
- ``jit``/custom-derivative calls: the primal sub-jaxpr, recursively (inside a custom
  rule, value dependencies through zero-derivative ops such as ``round`` count, since the
  rule may differentiate through them: straight-through estimators); ``cond``: the
  union over branches (the taken one if its index is known); ``scan``: unrolled when
  short, else a fixpoint over the carry; ``while``: a fixpoint over the carry;
- any other primitive: its outputs depend on all of its inputs, and a warning names it.

Values of variables that depend on no input and come from constants known at trace
time are computed too (constant folding), so gather indices built from ``jnp.arange``
and masks built inside the function stay exact.

>>> import jax.numpy as jnp
>>> from functorch_lite._jaxpr import stage
>>> closed = stage(lambda x: x[1:] - x[:-1], jnp.ones(4))
>>> jacobian_pattern(closed).toarray().astype(int)
array([[1, 1, 0, 0],
       [0, 1, 1, 0],
       [0, 0, 1, 1]])
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from . import ClosedJaxpr, is_literal, primitive_name

__all__ = ["jacobian_pattern", "SparsityWarning"]


class SparsityWarning(UserWarning):
    """Sparsity detection met a primitive it has no rule for: its outputs are taken to
    depend on all of its inputs (dense), so the pattern stays a superset, never wrong.

    >>> issubclass(SparsityWarning, UserWarning)
    True
    """


_FOLD_LIMIT = 1 << 22          # largest constant (elements) folded at trace time
_UNROLL_LIMIT = 256            # scans at most this long are unrolled exactly
_FIXPOINT_LIMIT = 64           # iterations of a loop fixpoint before giving up (dense)


class _Entry:
    """What is known about one variable: its dependency matrix (``None``: depends on no
    input) and, for variables computable at trace time, its value."""

    __slots__ = ("dep", "val", "shape", "dtype")

    def __init__(self, dep, val, shape, dtype):
        self.dep, self.val, self.shape = dep, val, tuple(shape)
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:      # extended dtypes (PRNG keys): no NumPy equivalent
            self.dtype = dtype

    @property
    def size(self) -> int:
        return math.prod(self.shape)


# ----------------------------------------------------------------------------- helpers


def _bin(m):
    """A boolean-valued CSR matrix (data all 1), or ``None`` when it has no entry."""
    if m is None:
        return None
    m = sp.csr_matrix(m)
    m.sum_duplicates()
    if m.nnz == 0:
        return None
    m.data = np.ones(m.nnz, np.float32)
    return m


def _union(deps, size, n):
    """Elementwise union of operand rows (operands of size 1 broadcast)."""
    acc = None
    for d in deps:
        if d is None:
            continue
        if d.shape[0] != size:      # a scalar; anything else unexpected: safe superset
            d = d[np.zeros(size, np.int64)] if d.shape[0] == 1 else _dense([d], size, n)
        acc = d if acc is None else acc + d
    return _bin(acc)


def _bcast(dep, shape, out_shape):
    """``dep`` of an operand of ``shape`` broadcast (NumPy rules) to ``out_shape``."""
    if dep is None or tuple(shape) == tuple(out_shape):
        return dep
    shape = (1,) * (len(out_shape) - len(shape)) + tuple(shape)
    return _rows(dep, np.broadcast_to(_iota(shape), out_shape))


def _rows(dep, idx):
    """Row ``idx[k]`` of ``dep`` for each ``k`` (``-1``: an empty row)."""
    if dep is None:
        return None
    idx = np.asarray(idx, np.int64).ravel()
    if len(idx) == dep.shape[0] and (idx[1:] - idx[:-1] == 1).all() and (not len(idx) or idx[0] == 0):
        return dep      # every row in place (a transpose or slice that moves nothing)
    valid = idx >= 0
    out = dep[np.where(valid, idx, 0)]
    if not valid.all():
        out = sp.diags(valid.astype(np.float32)) @ out
    return _bin(out)


def _apply(m, dep):
    """``m @ dep`` for a structural matrix ``m`` (out elements x operand elements)."""
    if dep is None or m is None:
        return None
    m = sp.csr_matrix(m)
    counts = np.diff(dep.indptr)
    if counts.max(initial=0) > 1:
        return _bin(m @ dep)
    # each operand element depends on at most one input (an input itself, or a copy of
    # one): the product renames m's columns, no sparse product needed
    input_of = np.full(dep.shape[0], -1, np.int64)
    input_of[counts == 1] = dep.indices
    cols = input_of[m.indices]
    keep = cols >= 0
    if keep.all():
        indptr = m.indptr
    else:
        rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
        indptr = np.zeros(m.shape[0] + 1, np.int64)
        np.cumsum(np.bincount(rows[keep], minlength=m.shape[0]), out=indptr[1:])
        cols = cols[keep]
    return _bin(sp.csr_matrix((np.ones(len(cols), np.float32), cols, indptr), shape=(m.shape[0], dep.shape[1])))


def _dense(deps, size, n):
    """Every output element depends on every input any operand depends on."""
    acc = None
    for d in deps:
        if d is None:
            continue
        row = sp.csr_matrix(d.sum(axis=0) > 0, dtype=np.float32)
        acc = row if acc is None else acc + row
    if acc is None:
        return None
    return _rows(_bin(acc), np.zeros(size, np.int64))


def _iota(shape):
    return np.arange(math.prod(shape), dtype=np.int64).reshape(shape)


def _selection(rows, cols, shape):
    rows, cols = np.asarray(rows).ravel(), np.asarray(cols).ravel()
    keep = (rows >= 0) & (cols >= 0)
    return sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (rows[keep], cols[keep])), shape=shape)


def _separable(in_shape, inverse_maps):
    """Flat operand index of each output element for an op acting per dimension:
    ``inverse_maps[d][p]`` is the operand index along ``d`` of output position ``p``
    (``-1``: none, e.g. padding)."""
    strides = [math.prod(in_shape[d + 1:]) for d in range(len(in_shape))]
    flat = np.zeros(tuple(len(m) for m in inverse_maps), np.int64)
    valid = np.ones(flat.shape, bool)
    for d, m in enumerate(inverse_maps):
        view = [1] * len(inverse_maps)
        view[d] = len(m)
        m = np.asarray(m, np.int64).reshape(view)
        flat = flat + m * strides[d]
        valid = valid & (m >= 0)
    return np.where(valid, flat, -1)


def _known(entry) -> bool:
    return entry.dep is None and entry.val is not None


def _window_matrix(out_n, in_n, window, stride, pad_lo, base_dil, win_dil):
    """Structural (out_n x in_n) matrix of a 1-D windowed op (conv/reduce_window): output
    position ``o`` touches input ``i`` when ``o*stride + k*win_dil - pad_lo == i*base_dil``
    for some window offset ``k``."""
    o = np.arange(out_n)[:, None]
    k = np.arange(window)[None, :]
    p = o * stride + k * win_dil - pad_lo
    ok = (p >= 0) & (p <= (in_n - 1) * base_dil) & (p % base_dil == 0)
    rows = np.broadcast_to(o, p.shape)[ok]
    return _selection(rows, (p // base_dil)[ok], (out_n, in_n))


def _structure(e, perm, shape3):
    """The zero pattern of a known operand, in canonical order (``None``: traced, so
    every entry may be nonzero)."""
    if _known(e):
        return np.transpose(e.val != 0, perm).reshape(shape3)
    return None


def _contract(dep, other, B, M, K, N):
    """Dependencies of ``out[b, m, n] = sum_k x[b, m, k] y[b, k, n]`` through ``x``
    (``dep``: rows in ``(b, m, k)`` order), given ``y``'s zero pattern ``other`` (``None``:
    dense); rows of the result in ``(b, m, n)`` order."""
    if other is None:
        red = _selection(np.repeat(np.arange(B * M), K), np.arange(B * M * K), (B * M, B * M * K))
        return _rows(_apply(red, dep), np.repeat(np.arange(B * M), N))
    # the selection matrix (rows (b, m, n), columns (b, m, k) where other[b, k, n]) built
    # in CSR form directly: row (b, m, n) holds the k of column n of other[b], ascending
    onk = np.transpose(other, (0, 2, 1))                # (b, n, k)
    b_e, _, k_e = np.nonzero(onk)                       # in (b, n, k) order
    per_bn = onk.sum(axis=2)                            # nonzeros of each (b, n)
    indptr = np.zeros(B * M * N + 1, np.int64)
    np.cumsum(np.broadcast_to(per_bn[:, None, :], (B, M, N)), out=indptr[1:])
    m = np.arange(M)[:, None]
    if B == 1:
        indices = (m * K + k_e).ravel()
    else:   # entry e of block b goes to row block (b, m) at offset M * start[b] + m * L_b
        per_b = per_bn.sum(axis=1)
        start = np.cumsum(per_b) - per_b
        local = np.arange(len(k_e)) - start[b_e]
        pos = M * start[b_e] + m * per_b[b_e] + local
        indices = np.empty(M * len(k_e), np.int64)
        indices[pos.ravel()] = ((b_e * M + m) * K + k_e).ravel()
    sel = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr),
                        shape=(B * M * N, B * M * K))
    return _apply(sel, dep)


def _kron_all(mats):
    out = sp.csr_matrix(np.ones((1, 1), np.float32))
    for m in mats:
        out = sp.kron(out, m, format="csr")
    return out


# ----------------------------------------------------------------------------- rules

# Float -> float ops whose output element k depends on operand elements k only.
_ELEMENTWISE = frozenset("""
add sub mul div neg max min pow integer_pow exp exp2 log log1p expm1 sin cos tan asin
acos atan atan2 sinh cosh tanh asinh acosh atanh sqrt rsqrt cbrt logistic erf erfc
erf_inv lgamma digamma igamma igammac igamma_grad_a random_gamma_grad polygamma zeta
bessel_i0e bessel_i1e abs square rem conj real imag complex add_any reduce_precision
copy copy_p convert_element_type clamp regularized_incomplete_beta
""".split())
# Float outputs with a zero derivative everywhere.
_ZERO_DERIVATIVE = frozenset("sign floor ceil round stop_gradient nextafter is_finite".split())
# Value-level elementwise ops with no derivative: inside a custom-derivative call they
# still carry a dependency (a straight-through rule differentiates through `round`).
_VALUE_ONLY = frozenset("""lt le gt ge eq ne and or not xor population_count shift_left
shift_right_logical shift_right_arithmetic""".split())
_IDENTITY_MULTI = frozenset("optimization_barrier device_put".split())
_CALLS = frozenset("""jit pjit closed_call core_call remat remat2 checkpoint custom_jvp_call
custom_vjp_call custom_vjp_call_jaxpr custom_lin""".split())
_REDUCTIONS = frozenset("reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or "
                        "reduce_xor argmax argmin".split())
_CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())
_REDUCE_WINDOW = frozenset("reduce_window_sum reduce_window_max reduce_window_min reduce_window".split())


class _Propagator:
    def __init__(self, n: int):
        self.n = n
        self.unknown: set[str] = set()
        # > 0 inside custom_jvp/custom_vjp calls: their rules may differentiate through
        # ops whose own derivative is zero, so value dependencies count there
        self.structural = 0

    # -- running jaxprs ---------------------------------------------------------------

    def run(self, jaxpr, consts: list, ins: list) -> list:
        env: dict = {}
        for v, e in zip(jaxpr.constvars, consts):
            env[v] = e
        for v, e in zip(jaxpr.invars, ins):
            env[v] = e

        def read(atom):
            if is_literal(atom):
                val = np.asarray(atom.val)
                return _Entry(None, val, np.shape(val), atom.aval.dtype)
            return env[atom]

        for eqn in jaxpr.eqns:
            ins_e = [read(a) for a in eqn.invars]
            outs = self.eqn(eqn, ins_e)
            for v, e in zip(eqn.outvars, outs):
                env[v] = e
        return [read(a) for a in jaxpr.outvars]

    def run_closed(self, closed, ins):
        consts = [_const_entry(c, v.aval) for c, v in zip(closed.consts, closed.jaxpr.constvars)]
        return self.run(closed.jaxpr, consts, ins)

    # -- one equation -----------------------------------------------------------------

    def eqn(self, eqn, ins: list) -> list:
        avals = [v.aval for v in eqn.outvars]
        shapes = [tuple(getattr(a, "shape", ())) for a in avals]
        dtypes = [getattr(a, "dtype", np.dtype("float32")) for a in avals]
        vals = self._fold(eqn, ins, avals)
        if vals is not None:
            return [_Entry(None, v, s, d) for v, s, d in zip(vals, shapes, dtypes)]
        differentiable = [_inexact(d) or self.structural > 0 for d in dtypes]
        if not any(differentiable) or all(e.dep is None for e in ins):
            return [_Entry(None, None, s, d) for s, d in zip(shapes, dtypes)]
        deps = self.rule(eqn, ins, shapes)
        return [_Entry(dep if ok else None, None, s, d)
                for dep, ok, s, d in zip(deps, differentiable, shapes, dtypes)]

    def _fold(self, eqn, ins, avals):
        """Values of the outputs when every input is a known constant (else ``None``)."""
        if not all(_known(e) for e in ins) or eqn.effects:
            return None
        if any(math.prod(getattr(a, "shape", ())) > _FOLD_LIMIT for a in avals):
            return None
        if any(not hasattr(a, "shape") or getattr(a.dtype, "kind", "V") not in "biufc"
               for a in avals):
            return None
        quick = _numpy_fold(eqn, ins, avals)
        if quick is not None:
            return quick
        try:
            with jax.ensure_compile_time_eval():
                out = eqn.primitive.bind(*[jnp.asarray(e.val, e.dtype) for e in ins], **eqn.params)
            out = out if eqn.primitive.multiple_results else [out]
            return [np.asarray(o) for o in out]
        except Exception:  # noqa: BLE001 - cannot fold: treat as unknown value
            return None

    def rule(self, eqn, ins, shapes) -> list:
        """Dependency matrices of the outputs of one equation: its rule in :data:`_RULES`
        (``scatter*``: :meth:`_scatter`), else dense with the primitive named."""
        name = primitive_name(eqn)
        fn = _RULES.get(name) or (_rule_scatter if name.startswith("scatter") else None)
        if fn is None:
            self.unknown.add(name)
            return [_dense([e.dep for e in ins], math.prod(s), self.n) for s in shapes]
        return fn(self, eqn, ins, shapes)

    # -- index maps -------------------------------------------------------------------

    def _gather_ids(self, operand_shape, indices, p):
        """1-based operand element id of each gather output element (0: filled)."""
        quick = _numpy_gather_ids(operand_shape, np.asarray(indices), p)
        if quick is not None:
            return quick
        try:
            ids = np.arange(1, math.prod(operand_shape) + 1, dtype=np.int32).reshape(operand_shape)
            with jax.ensure_compile_time_eval():
                out = jax.lax.gather(jnp.asarray(ids), jnp.asarray(indices), p["dimension_numbers"],
                                     p["slice_sizes"], unique_indices=p["unique_indices"],
                                     indices_are_sorted=p["indices_are_sorted"], mode=p["mode"],
                                     fill_value=0)
            return np.asarray(out).astype(np.int64)
        except Exception:  # noqa: BLE001
            return None

    def _scatter(self, name, ins, p, size):
        operand, indices, updates = ins[0], ins[1], ins[2]
        n = self.n
        if not _known(indices):
            return _union([operand.dep, _dense([updates.dep], size, n)], size, n)
        dn = p["dimension_numbers"]
        gdn = jax.lax.GatherDimensionNumbers(
            offset_dims=tuple(dn.update_window_dims),
            collapsed_slice_dims=tuple(dn.inserted_window_dims),
            start_index_map=tuple(dn.scatter_dims_to_operand_dims),
            operand_batching_dims=tuple(dn.operand_batching_dims),
            start_indices_batching_dims=tuple(dn.scatter_indices_batching_dims))
        slice_sizes, pos = [], 0
        for i in range(len(operand.shape)):
            if i in dn.inserted_window_dims or i in dn.operand_batching_dims:
                slice_sizes.append(1)
            else:
                slice_sizes.append(updates.shape[dn.update_window_dims[pos]])
                pos += 1
        target = self._gather_ids(operand.shape, indices.val,
                                  dict(dimension_numbers=gdn, slice_sizes=tuple(slice_sizes),
                                       unique_indices=p["unique_indices"],
                                       indices_are_sorted=p["indices_are_sorted"], mode=p["mode"]))
        if target is None or target.shape != tuple(updates.shape):
            return _union([operand.dep, _dense([updates.dep], size, n)], size, n)
        target = target.ravel() - 1
        keep = _iota(operand.shape).ravel()
        if name == "scatter":          # overwrite: the operand's value is gone there
            cleared = target
            if "CLIP" not in str(p["mode"]).upper():
                # XLA skips out-of-bounds windows: clear only where an update surely lands
                exact = self._gather_ids(operand.shape, indices.val, dict(
                    dimension_numbers=gdn, slice_sizes=tuple(slice_sizes), unique_indices=p["unique_indices"],
                    indices_are_sorted=p["indices_are_sorted"], mode=jax.lax.GatherScatterMode.FILL_OR_DROP))
                cleared = exact.ravel() - 1 if exact is not None else np.full(1, -1)
            keep[cleared[cleared >= 0]] = -1
        m = _selection(target, np.arange(target.size), (size, target.size))
        return _union([_rows(operand.dep, keep), _apply(m, updates.dep)], size, n)

    # -- contractions -----------------------------------------------------------------

    def _dot_general(self, ins, p, out_shape):
        """``out[b, m, n] = sum_k lhs[b, m, k] rhs[b, k, n]`` (canonical order): the lhs
        part directly, the rhs part as the lhs part of ``out^T = rhs^T lhs^T``."""
        (lc, rc), (lb, rb) = p["dimension_numbers"]
        lhs, rhs = ins
        lf = [d for d in range(len(lhs.shape)) if d not in lc and d not in lb]
        rf = [d for d in range(len(rhs.shape)) if d not in rc and d not in rb]
        B = math.prod(lhs.shape[d] for d in lb)
        M = math.prod(lhs.shape[d] for d in lf)
        K = math.prod(lhs.shape[d] for d in lc)
        N = math.prod(rhs.shape[d] for d in rf)
        out = []
        if lhs.dep is not None:
            dl = _rows(lhs.dep, _iota(lhs.shape).transpose(list(lb) + lf + list(lc)))   # (b, m, k)
            out.append(_contract(dl, _structure(rhs, list(rb) + list(rc) + rf, (B, K, N)), B, M, K, N))
        if rhs.dep is not None:
            dr = _rows(rhs.dep, _iota(rhs.shape).transpose(list(rb) + rf + list(rc)))   # (b, n, k)
            part = _contract(dr, _structure(lhs, list(lb) + list(lc) + lf, (B, K, M)), B, N, K, M)
            out.append(_rows(part, _iota((B, N, M)).transpose(0, 2, 1)))             # to (b, m, n)
        return _union(out, B * M * N, self.n)

    def _conv(self, ins, p, out_shape):
        lhs, rhs = ins
        n = self.n
        size = math.prod(out_shape)
        if p["batch_group_count"] != 1:
            return _dense([lhs.dep, rhs.dep], size, n)
        dn = p["dimension_numbers"]
        lspec, rspec, ospec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
        nsp = len(lspec) - 2
        lsh = [lhs.shape[d] for d in lspec]            # canonical (N, C, spatial...)
        rsh = [rhs.shape[d] for d in rspec]            # canonical (O, I, spatial...)
        osh = [out_shape[d] for d in ospec]            # canonical (N, O, spatial...)
        batch, channels, outf = lsh[0], lsh[1], rsh[0]
        groups = p["feature_group_count"]
        s_out = math.prod(osh[2:])
        # canonical output order (b, o, s) -> positions of the real output
        out_canon = _iota(out_shape).transpose(ospec).ravel()
        back = np.empty(size, np.int64)
        back[out_canon] = np.arange(size)
        parts = []
        if lhs.dep is not None:
            spatial = _kron_all([
                _window_matrix(osh[2 + d], lsh[2 + d], rsh[2 + d], p["window_strides"][d],
                               p["padding"][d][0], p["lhs_dilation"][d], p["rhs_dilation"][d])
                for d in range(nsp)])
            o_group = np.arange(outf) // (outf // groups)
            c_group = np.arange(channels) // (channels // groups)
            g = sp.csr_matrix((o_group[:, None] == c_group[None, :]).astype(np.float32))
            m = _kron_all([sp.identity(batch, np.float32, "csr"), g, spatial])
            dl = _rows(lhs.dep, _iota(lhs.shape).transpose(lspec))
            parts.append(_rows(_apply(m, dl), back))
        if rhs.dep is not None:
            k_in = math.prod(rsh[1:])
            m = _kron_all([sp.csr_matrix(np.ones((batch, 1), np.float32)),
                           sp.identity(outf, np.float32, "csr"),
                           sp.csr_matrix(np.ones((s_out, k_in), np.float32))])
            dr = _rows(rhs.dep, _iota(rhs.shape).transpose(rspec))
            parts.append(_rows(_apply(m, dr), back))
        return _union(parts, size, n)

    def _reduce_window(self, name, eqn, ins, shapes):
        p = eqn.params
        n_ops = len(ins) // 2 if name == "reduce_window" else 1
        x = ins[0]
        needed = ("window_dimensions", "window_strides", "padding", "base_dilation", "window_dilation")
        if not all(k in p for k in needed):
            self.unknown.add(name)
            return [_dense([e.dep for e in ins], math.prod(s), self.n) for s in shapes]
        m = _kron_all([
            _window_matrix(shapes[0][d], x.shape[d], p["window_dimensions"][d], p["window_strides"][d],
                           p["padding"][d][0], p["base_dilation"][d], p["window_dilation"][d])
            for d in range(len(x.shape))])
        return [_apply(m, e.dep) for e in ins[:n_ops]]

    # -- sub-programs -----------------------------------------------------------------

    def _call(self, eqn, ins):
        subs = [s for k, s in eqn.params.items() if k in ("jaxpr", "call_jaxpr", "fun_jaxpr")]
        if not subs:
            self.unknown.add(primitive_name(eqn))
            return [_dense([e.dep for e in ins], math.prod(v.aval.shape), self.n) for v in eqn.outvars]
        sub = subs[0]
        custom = primitive_name(eqn).startswith("custom")
        self.structural += custom
        try:
            if isinstance(sub, ClosedJaxpr):
                outs = self.run_closed(sub, ins)
            else:
                outs = self.run(sub, [], ins)
        finally:
            self.structural -= custom
        return [e.dep for e in outs]

    def _cond(self, eqn, ins, shapes):
        index, ops = ins[0], ins[1:]
        branches = eqn.params["branches"]
        if _known(index):
            taken = int(np.clip(int(index.val), 0, len(branches) - 1))
            branches = [branches[taken]]
        results = [self.run_closed(b, ops) for b in branches]
        return [_union([r[k].dep for r in results], math.prod(s), self.n) for k, s in enumerate(shapes)]

    def _scan(self, eqn, ins, shapes):
        p = eqn.params
        body, nc, ncarry, length = p["jaxpr"], p["num_consts"], p["num_carry"], p["length"]
        consts, carry, xs = ins[:nc], ins[nc:nc + ncarry], ins[nc + ncarry:]
        n = self.n

        def x_slice(e, i):
            inner = e.shape[1:]
            k = math.prod(inner)
            dep = _rows(e.dep, np.arange(i * k, (i + 1) * k)) if e.dep is not None else None
            val = e.val[i] if e.val is not None else None
            return _Entry(dep, val, inner, e.dtype)

        if length <= _UNROLL_LIMIT:
            ys = []
            order = range(length - 1, -1, -1) if p["reverse"] else range(length)
            for i in order:
                outs = self.run_closed(body, list(consts) + list(carry) + [x_slice(e, i) for e in xs])
                carry, y = outs[:ncarry], outs[ncarry:]
                ys.append((i, y))
            ys.sort(key=lambda t: t[0])
            out = [c.dep for c in carry]
            for k in range(len(shapes) - ncarry):
                stacked = [t[1][k].dep if t[1][k].dep is not None
                           else sp.csr_matrix((t[1][k].size, n), dtype=np.float32) for t in ys]
                out.append(_bin(sp.vstack(stacked, format="csr")) if stacked else None)
            return out
        # long scans: every step sees the union of all slices, and the carry's fixpoint
        x_all = []
        for e in xs:
            inner = e.shape[1:]
            k = math.prod(inner)
            m = _selection(np.tile(np.arange(k), length), np.arange(length * k), (k, length * k))
            x_all.append(_Entry(_apply(m, e.dep), None, inner, e.dtype))
        carry = [_Entry(c.dep, None, c.shape, c.dtype) for c in carry]
        outs = None
        for _ in range(_FIXPOINT_LIMIT):
            outs = self.run_closed(body, list(consts) + carry + x_all)
            new = [_Entry(_union([c.dep, o.dep], c.size, n), None, c.shape, c.dtype)
                   for c, o in zip(carry, outs[:ncarry])]
            if all(_same(a.dep, b.dep) for a, b in zip(new, carry)):
                break
            carry = new
        else:
            return [_dense([e.dep for e in ins], math.prod(s), n) for s in shapes]
        result = [c.dep for c in carry]
        for y in outs[ncarry:]:
            result.append(_rows(y.dep, np.tile(np.arange(y.size), length)))
        return result

    def _while(self, eqn, ins, shapes):
        p = eqn.params
        body, bn, cn = p["body_jaxpr"], p["body_nconsts"], p["cond_nconsts"]
        consts, carry = ins[cn:cn + bn], ins[cn + bn:]
        n = self.n
        carry = [_Entry(c.dep, None, c.shape, c.dtype) for c in carry]
        for _ in range(_FIXPOINT_LIMIT):
            outs = self.run_closed(body, list(consts) + carry)
            new = [_Entry(_union([c.dep, o.dep], c.size, n), None, c.shape, c.dtype)
                   for c, o in zip(carry, outs)]
            if all(_same(a.dep, b.dep) for a, b in zip(new, carry)):
                return [c.dep for c in carry]
            carry = new
        return [_dense([e.dep for e in ins], math.prod(s), n) for s in shapes]


# ----------------------------------------------------------------------------- the rules
#
# One function per primitive (or family): ``rule(prop, eqn, ins, shapes) -> list`` of the
# outputs' dependency matrices (``None``: no dependency), ``ins`` the operands' entries.


def _size(shapes):
    return math.prod(shapes[0])


def _elementwise(prop, eqn, ins, shapes):
    return [_union([_bcast(e.dep, e.shape, shapes[0]) for e in ins], _size(shapes), prop.n)]


def _value_only(prop, eqn, ins, shapes):
    """Zero derivative: no dependency, except inside a custom rule (``prop.structural``)."""
    return _elementwise(prop, eqn, ins, shapes) if prop.structural else [None]


def _rule_mul(prop, eqn, ins, shapes):
    """Elementwise, and a known constant factor drops the rows where it is zero."""
    rows = []
    for k, e in enumerate(ins):
        other = ins[1 - k]
        d = _bcast(e.dep, e.shape, shapes[0])
        if d is not None and _known(other):
            mask = np.broadcast_to(other.val != 0, shapes[0]).ravel()
            d = _bin(sp.diags(mask.astype(np.float32)) @ d)
        rows.append(d)
    return [_union(rows, _size(shapes), prop.n)]


def _rule_select_n(prop, eqn, ins, shapes):
    """The case each element takes when the predicate is known, else their union."""
    pred, cases = ins[0], ins[1:]
    if not _known(pred):
        return [_union([_bcast(e.dep, e.shape, shapes[0]) for e in cases], _size(shapes), prop.n)]
    which = np.broadcast_to(pred.val.astype(np.int64), shapes[0]).ravel()
    out = None
    for c, e in enumerate(cases):
        d = _bcast(e.dep, e.shape, shapes[0])
        if d is None:
            continue
        part = _bin(sp.diags((which == c).astype(np.float32)) @ d)
        out = part if out is None else (out if part is None else out + part)
    return [_bin(out)]


def _identity_multi(prop, eqn, ins, shapes):
    return [e.dep for e in ins][:len(shapes)]


def _rule_reshape(prop, eqn, ins, shapes):
    x, dims = ins[0], eqn.params.get("dimensions")
    if primitive_name(eqn) == "reshape" and dims is not None:
        return [_rows(x.dep, _iota(x.shape).transpose(dims).ravel())]
    return [x.dep]


def _rule_broadcast_in_dim(prop, eqn, ins, shapes):
    x = ins[0]
    view = [1] * len(shapes[0])
    for i, d in enumerate(eqn.params["broadcast_dimensions"]):
        view[d] = x.shape[i]
    return [_rows(x.dep, np.broadcast_to(_iota(x.shape).reshape(view), shapes[0]))]


def _rule_transpose(prop, eqn, ins, shapes):
    return [_rows(ins[0].dep, _iota(ins[0].shape).transpose(eqn.params["permutation"]))]


def _rule_rev(prop, eqn, ins, shapes):
    return [_rows(ins[0].dep, np.flip(_iota(ins[0].shape), eqn.params["dimensions"]))]


def _rule_slice(prop, eqn, ins, shapes):
    x, p = ins[0], eqn.params
    strides = p["strides"] or (1,) * len(x.shape)
    sl = tuple(slice(a, b, s) for a, b, s in zip(p["start_indices"], p["limit_indices"], strides))
    return [_rows(x.dep, _iota(x.shape)[sl])]


def _rule_concatenate(prop, eqn, ins, shapes):
    offset, pieces, stacked = 0, [], []
    for e in ins:
        pieces.append(_iota(e.shape) + offset)
        stacked.append(e.dep if e.dep is not None else sp.csr_matrix((e.size, prop.n), dtype=np.float32))
        offset += e.size
    return [_rows(_bin(sp.vstack(stacked, format="csr")), np.concatenate(pieces, eqn.params["dimension"]))]


def _rule_tile(prop, eqn, ins, shapes):
    x, reps = ins[0], tuple(eqn.params["reps"])
    ids = _iota(x.shape)
    return [_rows(x.dep, np.tile(ids.reshape((1,) * (len(reps) - ids.ndim) + ids.shape), reps))]


def _rule_split(prop, eqn, ins, shapes):
    x, axis, start, outs = ins[0], eqn.params["axis"], 0, []
    for s in eqn.params["sizes"]:
        sl = [slice(None)] * len(x.shape)
        sl[axis] = slice(start, start + int(s))
        outs.append(_rows(x.dep, _iota(x.shape)[tuple(sl)]))
        start += int(s)
    return outs


def _rule_pad(prop, eqn, ins, shapes):
    x, maps = ins[0], []
    for (lo, hi, interior), length, out_len in zip(eqn.params["padding_config"], x.shape, shapes[0]):
        pos = np.arange(out_len) - lo
        src = np.where((pos >= 0) & (pos % (interior + 1) == 0), pos // (interior + 1), -1)
        maps.append(np.where(src < length, src, -1))
    idx = _separable(x.shape, maps)
    out = _rows(x.dep, idx)
    if ins[1].dep is not None:                 # a traced padding value fills the rest
        out = _union([out, _rows(ins[1].dep, np.where(idx.ravel() < 0, 0, -1))], _size(shapes), prop.n)
    return [out]


def _rule_dynamic_slice(prop, eqn, ins, shapes):
    x, starts = ins[0], ins[1:]
    if not all(_known(s) for s in starts):
        return [_dense([x.dep], _size(shapes), prop.n)]
    maps = []
    for s, length, k in zip(starts, x.shape, eqn.params["slice_sizes"]):
        st = int(np.clip(int(s.val), 0, length - k))
        maps.append(np.arange(st, st + k))
    return [_rows(x.dep, _separable(x.shape, maps))]


def _rule_dynamic_update_slice(prop, eqn, ins, shapes):
    x, upd, starts = ins[0], ins[1], ins[2:]
    size = _size(shapes)
    if not all(_known(s) for s in starts):
        return [_union([x.dep, _dense([upd.dep], size, prop.n)], size, prop.n)]
    region = []
    for s, length, k in zip(starts, x.shape, upd.shape):
        st = int(np.clip(int(s.val), 0, length - k))
        region.append(slice(st, st + k))
    keep = _iota(x.shape)
    keep[tuple(region)] = -1
    place = np.full(x.shape, -1, np.int64)
    place[tuple(region)] = _iota(upd.shape)
    return [_union([_rows(x.dep, keep), _rows(upd.dep, place)], size, prop.n)]


def _rule_gather(prop, eqn, ins, shapes):
    x, idx_e = ins[0], ins[1]
    if _known(idx_e):
        ids = prop._gather_ids(x.shape, idx_e.val, eqn.params)
        if ids is not None:
            return [_rows(x.dep, ids - 1)]
    return [_dense([x.dep], _size(shapes), prop.n)]


def _rule_scatter(prop, eqn, ins, shapes):
    return [prop._scatter(primitive_name(eqn), ins, eqn.params, _size(shapes))]


def _rule_dot_general(prop, eqn, ins, shapes):
    return [prop._dot_general(ins, eqn.params, shapes[0])]


def _rule_conv(prop, eqn, ins, shapes):
    return [prop._conv(ins, eqn.params, shapes[0])]


def _rule_reduction(prop, eqn, ins, shapes):
    x = ins[0]
    out_shape = tuple(1 if i in eqn.params["axes"] else s for i, s in enumerate(x.shape))
    out_ids = np.broadcast_to(_iota(out_shape), x.shape)
    return [_apply(_selection(out_ids, _iota(x.shape), (_size(shapes), x.size)), x.dep)]


def _along_axis(shape, axis, block):
    """Structural matrix of an op mixing elements along ``axis`` by ``block`` (length x
    length) and acting alone on every other index."""
    return _kron_all([sp.identity(math.prod(shape[:axis]), np.float32, "csr"), sp.csr_matrix(block),
                      sp.identity(math.prod(shape[axis + 1:]), np.float32, "csr")])


def _rule_cumulative(prop, eqn, ins, shapes):
    x, axis = ins[0], eqn.params["axis"]
    tri = np.tril(np.ones((x.shape[axis], x.shape[axis]), np.float32))
    return [_apply(_along_axis(x.shape, axis, tri.T if eqn.params.get("reverse") else tri), x.dep)]


def _rule_sort(prop, eqn, ins, shapes):
    shape, axis = ins[0].shape, eqn.params["dimension"]
    m = _along_axis(shape, axis, np.ones((shape[axis], shape[axis]), np.float32))
    return [_apply(m, e.dep) for e in ins]


def _rule_top_k(prop, eqn, ins, shapes):
    x, k = ins[0], shapes[0][-1]
    m = _along_axis(x.shape[:-1] + (k,), len(x.shape) - 1, np.ones((k, x.shape[-1]), np.float32))
    return [_apply(m, x.dep), None]


def _method(name):
    return lambda prop, eqn, ins, shapes: getattr(prop, name)(eqn, ins, shapes)


def _rule_reduce_window(prop, eqn, ins, shapes):
    return prop._reduce_window(primitive_name(eqn), eqn, ins, shapes)


def _rule_select_and_scatter_add(prop, eqn, ins, shapes):
    """The transpose of a max/min pooling (its gradient): operand element ``i`` sums the
    sources of the windows holding it; the selection itself has a zero derivative (it
    counts only inside a custom rule, ``prop.structural``)."""
    source, operand, p = ins[0], ins[1], eqn.params
    m = _kron_all([
        _window_matrix(source.shape[d], operand.shape[d], p["window_dimensions"][d], p["window_strides"][d],
                       p["padding"][d][0], 1, 1)
        for d in range(len(operand.shape))])
    parts = [_apply(m.T, source.dep)]
    if prop.structural:
        parts.append(_apply(m.T @ m, operand.dep))
    return [_union(parts, _size(shapes), prop.n)]


def _rule_call(prop, eqn, ins, shapes):
    return prop._call(eqn, ins)


def _table() -> dict:
    """Primitive name -> rule; the first family that names a primitive wins."""
    table: dict = {}
    families = [
        (_ZERO_DERIVATIVE | _VALUE_ONLY, _value_only),
        ({"mul"}, _rule_mul), ({"select_n"}, _rule_select_n), (_ELEMENTWISE, _elementwise),
        (_IDENTITY_MULTI, _identity_multi), (_CALLS, _rule_call),
        ({"cond"}, _method("_cond")), ({"scan"}, _method("_scan")), ({"while"}, _method("_while")),
        ({"reshape", "squeeze", "expand_dims"}, _rule_reshape),
        ({"broadcast_in_dim"}, _rule_broadcast_in_dim), ({"transpose"}, _rule_transpose),
        ({"rev"}, _rule_rev), ({"slice"}, _rule_slice), ({"concatenate"}, _rule_concatenate),
        ({"split"}, _rule_split), ({"tile"}, _rule_tile), ({"pad"}, _rule_pad), ({"dynamic_slice"}, _rule_dynamic_slice),
        ({"dynamic_update_slice"}, _rule_dynamic_update_slice), ({"gather"}, _rule_gather),
        ({"dot_general"}, _rule_dot_general), (_REDUCTIONS, _rule_reduction),
        (_CUMULATIVE, _rule_cumulative), ({"sort"}, _rule_sort), ({"top_k"}, _rule_top_k),
        (_REDUCE_WINDOW, _rule_reduce_window), ({"select_and_scatter_add"}, _rule_select_and_scatter_add), ({"conv_general_dilated"}, _rule_conv),
    ]
    for names, fn in families:
        for name in names:
            table.setdefault(name, fn)
    return table


_RULES = _table()


def _numpy_gather_ids(operand_shape, indices, p):
    """XLA gather semantics on element ids, in NumPy (``None``: batching dims, not covered).

    Batch position ``b`` starts its window at ``start[b]`` (``indices[b]`` scattered to
    the dims of ``start_index_map``, clamped so the window fits, or marked filled in
    ``"fill"`` mode); window offsets run over the dims not collapsed; output dims at
    ``offset_dims`` are the window's, the rest the batch's.
    """
    dn = p["dimension_numbers"]
    if dn.operand_batching_dims or dn.start_indices_batching_dims:
        return None
    rank = len(operand_shape)
    shape = np.asarray(operand_shape, np.int64)
    sizes = np.asarray(p["slice_sizes"], np.int64)
    batch_shape = indices.shape[:-1]
    start = np.zeros(batch_shape + (rank,), np.int64)
    for k, d in enumerate(dn.start_index_map):
        start[..., d] = indices[..., k]
    limit = shape - sizes
    fill = "FILL" in str(p.get("mode", "")).upper()
    valid = np.all((start >= 0) & (start <= limit), axis=-1) if fill else np.ones(batch_shape, bool)
    start = np.clip(start, 0, limit)
    wdims = [d for d in range(rank) if d not in dn.collapsed_slice_dims]
    wshape = tuple(int(sizes[d]) for d in wdims)
    strides = np.asarray([math.prod(operand_shape[d + 1:]) for d in range(rank)], np.int64)
    base = (start * strides).sum(-1)                                   # batch_shape
    offs = np.zeros(wshape, np.int64)
    for axis, d in enumerate(wdims):
        view = [1] * len(wdims)
        view[axis] = wshape[axis]
        offs = offs + np.arange(wshape[axis]).reshape(view) * strides[d]
    nb = len(batch_shape)
    flat = base.reshape(batch_shape + (1,) * len(wdims)) + offs.reshape((1,) * nb + wshape) + 1
    flat = np.where(valid.reshape(batch_shape + (1,) * len(wdims)), flat, 0)
    flat = np.moveaxis(flat, list(range(nb, nb + len(wdims))), list(dn.offset_dims))
    return flat


def _int_div(a, b):
    q = np.abs(a) // np.abs(b)
    return np.sign(a) * np.sign(b) * q


_NUMPY_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "max": np.maximum, "min": np.minimum,
    "lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
    "eq": np.equal, "ne": np.not_equal, "and": np.bitwise_and, "or": np.bitwise_or,
    "xor": np.bitwise_xor, "rem": np.fmod, "pow": np.power, "atan2": np.arctan2,
}
_NUMPY_UNARY = {
    "neg": np.negative, "abs": np.abs, "sign": np.sign, "floor": np.floor, "ceil": np.ceil,
    "not": np.invert, "exp": np.exp, "log": np.log, "sin": np.sin, "cos": np.cos,
    "sqrt": np.sqrt, "tanh": np.tanh, "stop_gradient": lambda a: a, "copy": lambda a: a,
    "copy_p": lambda a: a,
}


def _numpy_fold(eqn, ins, avals):
    """Constant folding in NumPy for the integer/index arithmetic that builds gather
    indices and masks (no XLA compile per shape); ``None`` when not covered."""
    name = primitive_name(eqn)
    p = eqn.params
    vals = [np.asarray(e.val) for e in ins]
    out_aval = avals[0]
    dtype = np.dtype(out_aval.dtype)
    shape = tuple(out_aval.shape)
    try:
        with np.errstate(all="ignore"):
            if name in _NUMPY_BINARY and len(vals) == 2:
                r = _NUMPY_BINARY[name](vals[0], vals[1])
            elif name == "div":
                a, b = vals
                r = _int_div(a, b) if np.issubdtype(dtype, np.integer) else a / b
            elif name in _NUMPY_UNARY and len(vals) == 1:
                r = _NUMPY_UNARY[name](vals[0])
            elif name == "integer_pow":
                r = vals[0] ** p["y"]
            elif name == "convert_element_type":
                r = vals[0]
            elif name == "iota":
                r = np.broadcast_to(
                    np.arange(shape[p["dimension"]]).reshape(
                        [-1 if d == p["dimension"] else 1 for d in range(len(shape))]), shape)
            elif name == "broadcast_in_dim":
                view = [1] * len(shape)
                for i, d in enumerate(p["broadcast_dimensions"]):
                    view[d] = vals[0].shape[i]
                r = np.broadcast_to(vals[0].reshape(view), shape)
            elif name in ("reshape", "squeeze", "expand_dims"):
                if name == "reshape" and p.get("dimensions") is not None:
                    return None
                r = vals[0].reshape(shape)
            elif name == "transpose":
                r = np.transpose(vals[0], p["permutation"])
            elif name == "concatenate":
                r = np.concatenate(vals, p["dimension"])
            elif name == "slice":
                strides = p["strides"] or (1,) * vals[0].ndim
                r = vals[0][tuple(slice(a, b, c) for a, b, c in
                                  zip(p["start_indices"], p["limit_indices"], strides))]
            elif name == "rev":
                r = np.flip(vals[0], p["dimensions"])
            elif name == "select_n":
                which = vals[0].astype(np.int64)
                r = np.choose(np.broadcast_to(which, shape), [np.broadcast_to(v, shape) for v in vals[1:]])
            elif name == "clamp":
                r = np.clip(vals[1], vals[0], vals[2])
            else:
                return None
        r = np.asarray(r).astype(dtype)
        if r.shape != shape:
            r = np.broadcast_to(r, shape).copy()
        return [r]
    except Exception:  # noqa: BLE001 - leave it to XLA
        return None


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.nnz == b.nnz


def _inexact(dtype) -> bool:
    try:
        return jnp.issubdtype(dtype, jnp.inexact)
    except TypeError:
        return False


def _const_entry(value, aval):
    if isinstance(value, jax.core.Tracer):
        return _Entry(None, None, aval.shape, aval.dtype)
    try:
        return _Entry(None, np.asarray(value), aval.shape, aval.dtype)
    except Exception:  # noqa: BLE001 - e.g. PRNG keys
        return _Entry(None, None, getattr(aval, "shape", ()), np.dtype("float32"))


def jacobian_pattern(closed: ClosedJaxpr, name: str = "f") -> sp.csr_matrix:
    """Structural Jacobian pattern of a closed jaxpr: a boolean CSR matrix of shape
    ``(total output elements, total input elements)`` (inputs and outputs flattened and
    concatenated in order). Always a superset of the nonzeros at any point.

    A primitive with no rule makes its outputs depend on all its inputs, with a
    :class:`SparsityWarning` naming it.
    """
    invars = closed.jaxpr.invars
    sizes = [math.prod(v.aval.shape) for v in invars]
    n = sum(sizes)
    prop = _Propagator(n)
    ins, offset = [], 0
    for v, s in zip(invars, sizes):
        dep = sp.csr_matrix((np.ones(s, np.float32), (np.arange(s), np.arange(offset, offset + s))),
                            shape=(s, n)) if _inexact(v.aval.dtype) and s else None
        ins.append(_Entry(dep, None, v.aval.shape, v.aval.dtype))
        offset += s
    outs = prop.run_closed(closed, ins)
    if prop.unknown:
        warnings.warn(
            f"sparsity({name}): no sparsity rule for primitive(s) {sorted(prop.unknown)}; their "
            "outputs are taken to depend on all their inputs (correct, but denser than needed).",
            SparsityWarning, stacklevel=3)
    blocks = [o.dep if o.dep is not None else sp.csr_matrix((o.size, n), dtype=np.float32) for o in outs]
    if not blocks:
        out = sp.csr_matrix((0, n), dtype=np.float32)
    else:
        out = blocks[0] if len(blocks) == 1 else sp.vstack(blocks, format="csr")
    out = sp.csr_matrix(out, dtype=bool)
    out.sum_duplicates()
    out.sort_indices()
    return out
