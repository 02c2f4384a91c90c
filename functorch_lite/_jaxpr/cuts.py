"""Vertex cuts of a program, for the planner's mixed mode.

A program staged by ``jax.make_jaxpr`` is a list of equations in an order where every
value is defined before it is used. Between equation ``p - 1`` and equation ``p`` the
values *live across position p* are those defined before ``p`` and used at or after it
(the program's outputs count as used at the end). Every path from an input to an output
passes through one of them, so they form a **vertex cut**; its *width* is their total
size, counting only *active* values (floating-point, depending on a differentiated input,
and reaching an output). The Jacobian factors through every cut:
``J = J_{p..end} · J_{0..p}``, a product of a ``m x w`` and a ``w x n`` matrix, so a
narrow cut (``w`` much smaller than ``n`` and ``m``) is where mixed mode pays.

This module reads the program; the planner (:mod:`functorch_lite._planner`) decides.

- :func:`flatten` turns a closed jaxpr into a :class:`Program`: one flat list of
  :class:`Node` s, with the equations of ``jax.jit`` sub-calls inlined (a jitted
  function otherwise hides its whole body in one equation). Control flow (``scan``,
  ``while``, ``cond``), custom rules and ``checkpoint`` stay whole: a cut is never taken
  inside them.
- :func:`analyse` computes activity, the width of every position, and for each node
  its primal FLOPs and the FLOPs of pushing one tangent (or pulling one cotangent)
  through it.
- :meth:`Program.evaluate` runs the program (``Primitive.bind``, as ``eval_jaxpr``);
  :func:`stage_function` is the map from the active values at one cut to those at a
  later cut, a function of a flat vector, ready for ``jax.jvp``/``jax.vjp``.

>>> import jax, jax.numpy as jnp
>>> W1, W2 = jnp.ones((2, 6)), jnp.ones((6, 2))
>>> prog = flatten(jax.make_jaxpr(lambda x: W2 @ jnp.tanh(W1 @ x))(jnp.ones(6)))
>>> info = analyse(prog)
>>> info.widths          # 6 inputs, a 2-wide middle, 6 outputs
[6, 2, 2, 6]
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import ClosedJaxpr, Literal, is_literal, primitive_name, sub_jaxprs
from . import jcore

DropVar = jcore.DropVar

__all__ = ["Lit", "Node", "Program", "Analysis", "flatten", "analyse", "stage_function",
           "CONTROL_FLOW", "NO_FORWARD", "NO_REVERSE"]

# Sub-calls whose bodies are inlined (they only name a sub-program).
_INLINE = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr"}
# Kept whole: the cut finder never looks inside these.
CONTROL_FLOW = frozenset({"scan", "while", "cond"})
# Primitives that make a mode doubtful: the planner probes that mode by tracing.
NO_FORWARD = frozenset({"custom_vjp_call", "custom_vjp_call_jaxpr", "pure_callback", "io_callback"})
NO_REVERSE = frozenset({"while", "pure_callback", "io_callback"})
# Data movement: no arithmetic, one element moved per output element.
_MOVES = frozenset({
    "reshape", "broadcast_in_dim", "transpose", "squeeze", "expand_dims", "slice",
    "dynamic_slice", "dynamic_update_slice", "concatenate", "pad", "gather", "select_n",
    "convert_element_type", "copy", "copy_p", "rev", "iota", "scatter", "scatter-add",
    "scatter_add", "split", "stop_gradient", "sharding_constraint", "device_put",
})
# Operations that are linear in each argument: the tangent costs what the primal does.
_LINEAR = frozenset({"add", "sub", "neg", "reduce_sum", "cumsum", "add_any", "dot_general",
                     "conv_general_dilated", "mul", "real", "imag", "conj", "complex"})
_REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax",
                         "argmin", "reduce_and", "reduce_or", "cumsum", "cumprod", "cummax",
                         "cumlogsumexp", "cummin"})


# Primitives that never hold a sub-program (skips a scan of their parameters).
_PLAIN = _MOVES | _LINEAR | _REDUCTIONS | frozenset({
    "tanh", "exp", "log", "sin", "cos", "tan", "logistic", "sqrt", "rsqrt", "pow",
    "integer_pow", "div", "max", "min", "abs", "sign", "exp2", "log1p", "expm1", "erf",
    "erf_inv", "square", "atan2", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh",
    "atanh", "gt", "lt", "ge", "le", "eq", "ne", "and", "or", "not", "xor", "floor", "ceil",
    "round", "is_finite", "nextafter", "rem", "clamp", "cbrt", "select_and_scatter_add",
    "reduce_precision", "argsort", "sort", "top_k", "random_bits", "random_seed",
    "random_wrap", "random_unwrap", "threefry2x32", "shift_left", "shift_right_logical",
    "shift_right_arithmetic", "population_count", "dot_general", "conv_general_dilated",
})


def _subs(eqn: Any) -> list:
    return [] if primitive_name(eqn) in _PLAIN else sub_jaxprs(eqn)


class Lit:
    """A literal operand (an inline constant) of a node."""

    __slots__ = ("val",)

    def __init__(self, val: Any):
        self.val = val


class Node(NamedTuple):
    """One equation of the flat program: ``outs = eqn.primitive(*ins)``. ``ins`` are value
    ids (``int``) or :class:`Lit`; ``outs`` value ids (``-1`` for a dropped output)."""

    eqn: Any
    ins: tuple
    outs: tuple


@dataclasses.dataclass
class Program:
    """A flat program: ``inputs`` (value ids), ``outputs`` (ids or :class:`Lit`), the
    constants' values by id, the nodes in order, and ``shape``/``dtype`` of every value."""

    inputs: list[int]
    outputs: list
    consts: dict[int, Any]
    nodes: list[Node]
    shapes: list[tuple]
    dtypes: list[np.dtype]
    sizes: list[int]          # math.prod of each shape, recorded once by flatten

    def size(self, i: int) -> int:
        return self.sizes[i]

    def evaluate(self, inputs: Sequence[Any], env: dict | None = None,
                 start: int = 0, stop: int | None = None) -> dict:
        """Run nodes ``start..stop-1`` with ``env`` (value id -> value) extended by
        ``inputs`` (for :attr:`inputs`) and the constants; returns the environment."""
        env = dict(self.consts) if env is None else env
        if inputs is not None:
            for i, v in zip(self.inputs, inputs):
                env[i] = v
        for node in self.nodes[start:stop]:
            eqn = node.eqn
            params = eqn.primitive.get_bind_params(eqn.params)
            subfuns: Sequence[Any] = ()
            if isinstance(params, tuple):  # older JAX: (subfuns, params)
                subfuns, params = params
            vals = [a.val if isinstance(a, Lit) else env[a] for a in node.ins]
            with eqn.ctx.manager:
                out = eqn.primitive.bind(*subfuns, *vals, **params)
            if not eqn.primitive.multiple_results:
                out = (out,)
            for i, v in zip(node.outs, out):
                if i >= 0:
                    env[i] = v
        return env

    def read(self, env: dict, refs: Sequence) -> list:
        return [r.val if isinstance(r, Lit) else env[r] for r in refs]


def flatten(closed: ClosedJaxpr) -> Program:
    """The flat :class:`Program` of a closed jaxpr (``jax.jit`` sub-calls inlined)."""
    avals: list = []          # one per value id; shapes, sizes and dtypes are read at the end
    consts: dict[int, Any] = {}
    nodes: list[Node] = []

    def inline(jaxpr: Any, const_values: Sequence[Any], in_refs: Sequence) -> list:
        env: dict = {}
        for v, c in zip(jaxpr.constvars, const_values):
            consts[len(avals)] = c
            env[v] = len(avals)
            avals.append(v.aval)
        for v, r in zip(jaxpr.invars, in_refs):
            env[v] = r
        for eqn in jaxpr.eqns:
            ins = tuple([Lit(a.val) if isinstance(a, Literal) else env[a] for a in eqn.invars])
            key = _INLINE.get(eqn.primitive.name)
            if key is not None and key in eqn.params:
                sub = eqn.params[key]
                outs = inline(getattr(sub, "jaxpr", sub), getattr(sub, "consts", ()), ins)
                for v, o in zip(eqn.outvars, outs):
                    if not isinstance(v, DropVar):
                        env[v] = o
                continue
            outs = []
            for v in eqn.outvars:
                i = len(avals)
                avals.append(v.aval)
                if isinstance(v, DropVar):
                    i = -1
                else:
                    env[v] = i
                outs.append(i)
            nodes.append(Node(eqn, ins, tuple(outs)))
        return [Lit(a.val) if isinstance(a, Literal) else env[a] for a in jaxpr.outvars]

    inputs = list(range(len(closed.jaxpr.invars)))
    avals.extend(v.aval for v in closed.jaxpr.invars)
    outs = inline(closed.jaxpr, closed.consts, inputs)
    shapes = [tuple(getattr(a, "shape", ())) for a in avals]
    dtypes = [_numpy_dtype(getattr(a, "dtype", None)) for a in avals]
    return Program(inputs, outs, consts, nodes, shapes, dtypes, [math.prod(s) for s in shapes])


def _numpy_dtype(dtype: Any) -> np.dtype:
    """The value's numpy dtype; ``void`` for tokens and PRNG keys (never differentiated)."""
    if isinstance(dtype, np.dtype):
        return dtype
    if dtype is None:   # np.dtype(None) would be float64
        return np.dtype(np.void)
    try:
        return np.dtype(dtype)
    except TypeError:
        return np.dtype(np.void)


# ----------------------------------------------------------------------------- analysis


def _inexact(dtype: np.dtype) -> bool:
    kind = dtype.kind   # "V": bfloat16, float8 (ml_dtypes) or void (keys, tokens)
    return kind in "fc" or (kind == "V" and bool(jnp.issubdtype(dtype, jnp.inexact)))


def _aval_size(a: Any) -> int:
    return math.prod(getattr(a, "shape", ()))


def _jaxpr_flops(jaxpr: Any) -> float:
    """Primal FLOPs of a (sub-)jaxpr, every equation counted once."""
    return sum(_eqn_flops(e) for e in jaxpr.eqns)


def _contraction(eqn: Any) -> int:
    """The contracted size of a ``dot_general`` (the product of its contracting dims)."""
    (lc, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return math.prod([lhs[d] for d in lc])


def _eqn_flops(eqn: Any, name: str | None = None, out: int | None = None,
               subs: list | None = None) -> float:
    """Primal FLOPs of one equation (a static count from shapes); ``name`` (its
    primitive's), ``out`` (its output elements) and ``subs`` (its sub-jaxprs) where the
    caller knows them already."""
    name = name or primitive_name(eqn)
    if out is None:
        out = sum(_aval_size(v.aval) for v in eqn.outvars)
    if name == "dot_general":
        return 2.0 * out * _contraction(eqn)
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        spec = eqn.params["dimension_numbers"]
        out_feat = rhs[spec.rhs_spec[0]] if spec is not None else rhs[0]
        return 2.0 * out * math.prod(rhs) / max(out_feat, 1)
    subs = _subs(eqn) if subs is None else subs
    if subs:
        inner = [_jaxpr_flops(getattr(s, "jaxpr", s)) for s in subs]
        if name == "scan":
            return float(eqn.params.get("length", 1)) * sum(inner)
        if name == "cond":
            return max(inner)
        return sum(inner)
    if name in _MOVES:
        return 0.0
    if name in _REDUCTIONS:
        return float(sum(_aval_size(v.aval) for v in eqn.invars if not is_literal(v)))
    return float(out)


def _tangent_flops(name: str, primal: float, active_ins: int, out_size: int,
                   has_subs: bool) -> float:
    """Work of pushing one tangent through one equation (primitive ``name``; = pulling
    one cotangent back): linear operations cost their primal per active operand; data
    movement one unit per element; a nonlinear elementwise operation one multiply by its
    (stored) derivative; a sub-program its primal plus its outputs."""
    if name in ("dot_general", "conv_general_dilated"):
        return primal * active_ins
    if name in _MOVES:
        return float(out_size)
    if has_subs:
        return primal + out_size
    if name in _REDUCTIONS:
        return primal
    return float(out_size) * max(active_ins, 1)


@dataclasses.dataclass
class Analysis:
    """What :func:`analyse` finds.

    Attributes:
      widths: active width at every position ``0..N`` (``N`` nodes); position 0 counts
        all differentiated inputs, position ``N`` all outputs.
      live: the active values live across each position (value ids), computed on
        first use of a position (``live[p]``).
      flops: primal FLOPs of each node; ``tangent``: FLOPs of one tangent through it
        (0 for inactive nodes).
      names: each node's primitive name.
      no_forward / no_reverse: nodes (index, primitive) that make that mode doubtful.
      control_flow: active nodes (index, primitive) that are control flow.
      active_out: how many output elements depend on the inputs.
      stored: elements of the active intermediate values (what reverse mode stores).
      deps: a static upper bound on the number of inputs one output element depends on
        (``in_size`` when unknown); small means the Jacobian may be sparse. Computed on
        first use (one more pass over the program): only a sparsity check reads it.
      primal, per_pass: the totals of ``flops`` and ``tangent`` (``P`` and ``T``).
      active_matmul: whether tangents pass through a matrix product (``dot_general``).
    """

    widths: list[int]
    live: Any
    flops: list[float]
    tangent: list[float]
    names: list[str]
    no_forward: list[tuple[int, str]]
    no_reverse: list[tuple[int, str]]
    control_flow: list[tuple[int, str]]
    in_size: int
    out_size: int
    active_out: int
    stored: int = 0
    primal: float = 0.0
    per_pass: float = 0.0
    active_matmul: bool = False
    _deps: Any = dataclasses.field(default=0, repr=False, compare=False)  # int, or how to count it

    @property
    def deps(self) -> int:
        if callable(self._deps):
            self._deps = self._deps()
        return self._deps


class _Live:
    """``live[p]``: the sorted ids of the values live across position ``p`` (a value
    is live over ``[lo, hi]``), computed when asked for."""

    def __init__(self, spans: dict[int, tuple[int, int]], n: int):
        self._spans, self._n, self._memo = spans, n, {}

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, p: int) -> tuple:
        if p not in self._memo:
            self._memo[p] = tuple(sorted(i for i, (lo, hi) in self._spans.items() if lo <= p <= hi))
        return self._memo[p]


def _nested_names(eqn: Any) -> set[str]:
    found = set()
    for sub in _subs(eqn):
        for e in getattr(sub, "jaxpr", sub).eqns:
            found.add(primitive_name(e))
            found |= _nested_names(e)
    return found


_SUM_DEPS = frozenset({"select_n", "add", "sub", "mul", "div", "max", "min", "pow", "atan2",
                       "add_any", "rem", "nextafter", "complex", "clamp"})


def _dep_bound(eqn: Any, name: str, ins: list, n: int) -> int:
    """An upper bound on how many inputs one element of ``eqn``'s outputs depends on,
    from its operands' bounds ``ins`` (0 for an inactive operand); a ``dot_general``
    sums its operands' bounds over its contraction (both contract the same size)."""
    if name == "dot_general":
        return (ins[0] + ins[1]) * _contraction(eqn)
    if name in ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin"):
        axes = eqn.params.get("axes", ())
        return max(ins) * math.prod(eqn.invars[0].aval.shape[a] for a in axes)
    if name in _MOVES and name not in ("scatter", "scatter-add", "scatter_add", "select_n"):
        return max(ins)
    if name in _SUM_DEPS or (name in _PLAIN and name not in _REDUCTIONS and name not in _MOVES
                             and name != "conv_general_dilated"):
        return sum(ins)
    return n


def _forward_sweep(prog: Program) -> tuple:
    """One pass in program order: activity, dependency bounds, the defining node of
    each value, and per node its name, output size, primal FLOPs, active operand count
    and whether it holds sub-programs; the doubtful and control-flow nodes."""
    nval, N, dtypes, sizes = len(prog.shapes), len(prog.nodes), prog.dtypes, prog.sizes
    active = [False] * nval
    defined = [-1] * nval
    n_in = sum(sizes[i] for i in prog.inputs)
    for i in prog.inputs:
        active[i] = _inexact(dtypes[i])
    flops, names, act_ins, out_sizes = [0.0] * N, [""] * N, [0] * N, [0] * N
    has_subs = [False] * N
    no_fwd, no_rev, control = [], [], []
    for k, node in enumerate(prog.nodes):
        eqn, outs = node.eqn, node.outs
        name = names[k] = eqn.primitive.name
        out = 0
        for i in outs:
            if i >= 0:
                defined[i] = k
                out += sizes[i]
        out_sizes[k] = out      # the kept outputs (what a tangent writes)
        subs = _subs(eqn)
        has_subs[k] = bool(subs)
        flops[k] = _eqn_flops(eqn, name, out if -1 not in outs else None, subs)
        a = 0
        for r in node.ins:
            if type(r) is int and active[r]:
                a += 1
        if not a:
            continue
        act_ins[k] = a
        for i in outs:
            if i >= 0 and (dtypes[i].kind in "fc" or _inexact(dtypes[i])):
                active[i] = True
        if name in _PLAIN:  # no sub-program, neither doubtful nor control flow
            continue
        inner = _nested_names(eqn) | {name}
        if inner & NO_FORWARD:
            no_fwd.append((k, sorted(inner & NO_FORWARD)[0]))
        if inner & NO_REVERSE:
            no_rev.append((k, sorted(inner & NO_REVERSE)[0]))
        if name in CONTROL_FLOW:
            control.append((k, name))
    return (active, defined, flops, names, act_ins, out_sizes, has_subs, no_fwd, no_rev,
            control, n_in)


def _dependency_bound(prog: Program, active: list[bool], outs: list, n_in: int) -> int:
    """The largest static bound (:func:`_dep_bound`) over the active outputs ``outs`` on
    the ``n_in`` inputs one output element depends on, propagated in program order."""
    deps = [0] * len(prog.sizes)
    for i in prog.inputs:
        deps[i] = 1 if active[i] else 0
    for node in prog.nodes:
        ins, any_active = [], False
        for r in node.ins:
            if type(r) is int and active[r]:
                ins.append(deps[r])
                any_active = True
            else:
                ins.append(0)
        if not any_active:
            continue
        bound = min(n_in, _dep_bound(node.eqn, node.eqn.primitive.name, ins, n_in))
        for i in node.outs:
            if i >= 0 and active[i]:
                deps[i] = bound
    return max((deps[r] for r in outs if type(r) is int and active[r]), default=0)


def analyse(prog: Program, n_outputs: int | None = None) -> Analysis:
    """Activity, widths and per-node costs of ``prog``; the first ``n_outputs`` outputs are
    differentiated (the rest, e.g. ``has_aux`` values, only computed)."""
    outs = prog.outputs if n_outputs is None else prog.outputs[:n_outputs]
    N, sizes = len(prog.nodes), prog.sizes
    (active, defined, flops, names, act_ins, out_sizes, has_subs, no_fwd, no_rev,
     control, in_size) = _forward_sweep(prog)
    # backward, in reverse program order: which values reach a differentiated output,
    # the last use of each, and the tangent work of the nodes that are active and useful
    useful, last = [False] * len(sizes), [-2] * len(sizes)
    for r in outs:
        if type(r) is int:
            useful[r], last[r] = True, N
    tangent = [0.0] * N
    nodes = prog.nodes
    active_matmul = False
    for k in range(N - 1, -1, -1):
        node = nodes[k]
        for i in node.outs:
            if i >= 0 and useful[i]:
                break
        else:   # no output of this node reaches a differentiated output
            continue
        for r in node.ins:
            if type(r) is int:
                useful[r] = True
                if last[r] < k:
                    last[r] = k
        if act_ins[k]:
            t = tangent[k] = _tangent_flops(names[k], flops[k], act_ins[k], out_sizes[k],
                                            has_subs[k])
            active_matmul = active_matmul or (t > 0 and names[k] == "dot_general")
    delta = [0] * (N + 2)
    spans = {}
    stored = 0
    for i, size in enumerate(sizes):
        if active[i] and useful[i]:
            lo, hi = defined[i] + 1, last[i]
            if hi >= lo:
                spans[i] = (lo, hi)
                delta[lo] += size
                delta[hi + 1] -= size
                if lo > 0:   # defined by a node (not an input or a constant)
                    stored += size
    out_size = active_out = 0
    for r in outs:
        if type(r) is not int:          # a literal output
            out_size += math.prod(np.shape(r.val))
        else:
            out_size += sizes[r]
            active_out += sizes[r] if active[r] else 0
    widths = list(itertools.accumulate(delta[:N + 1]))
    widths[0], widths[N] = in_size, out_size
    return Analysis(widths, _Live(spans, N + 1), flops, tangent, names, no_fwd, no_rev,
                    control, in_size, out_size, active_out, stored, sum(flops),
                    sum(tangent), active_matmul,
                    functools.partial(_dependency_bound, prog, active, outs, in_size))


# ----------------------------------------------------------------------------- stages


def _flat(values: Sequence[Any], dtype: Any) -> jax.Array:
    if not values:
        return jnp.zeros((0,), dtype)
    return jnp.concatenate([jnp.ravel(jnp.asarray(v)).astype(dtype) for v in values])


def _unflat(vec: jax.Array, shapes: Sequence[tuple], dtypes: Sequence[Any]) -> list:
    out, offset = [], 0
    for shape, dtype in zip(shapes, dtypes):
        size = math.prod(shape)
        out.append(vec[offset:offset + size].reshape(shape).astype(dtype))
        offset += size
    return out


def boundary(prog: Program, info: Analysis, position: int, n_outputs: int | None = None) -> list:
    """The value refs at a cut: the inputs at 0, the differentiated outputs at the end,
    the live active values in between."""
    if position == 0:
        return list(prog.inputs)
    if position == len(prog.nodes):
        return list(prog.outputs if n_outputs is None else prog.outputs[:n_outputs])
    return list(info.live[position])


def ref_shape(prog: Program, r: Any) -> tuple:
    return tuple(np.shape(r.val)) if isinstance(r, Lit) else prog.shapes[r]


def ref_dtype(prog: Program, r: Any) -> np.dtype:
    return np.dtype(np.result_type(r.val)) if isinstance(r, Lit) else prog.dtypes[r]


def flat_values(prog: Program, env: dict, refs: Sequence, dtype: Any) -> jax.Array:
    """The values of ``refs`` in ``env`` as one flat vector of ``dtype``."""
    return _flat(prog.read(env, refs), dtype)


def stage_function(prog: Program, env: dict, start: int, stop: int, refs_in: Sequence,
                   refs_out: Sequence, dtype: Any) -> Callable[[jax.Array], jax.Array]:
    """``v -> w``: the flat active values at cut ``start`` to those at cut ``stop``.

    Everything else the nodes ``start..stop-1`` read (constants, inactive values,
    integer indices) comes from ``env``, the primal pass: it does not depend on ``v``
    to first order.
    """
    shapes = [prog.shapes[r] for r in refs_in]
    dtypes = [prog.dtypes[r] for r in refs_in]

    def stage(v: jax.Array) -> jax.Array:
        local = dict(env)
        for r, val in zip(refs_in, _unflat(v, shapes, dtypes)):
            local[r] = val
        prog.evaluate(None, local, start, stop)
        return _flat(prog.read(local, refs_out), dtype)

    return stage
