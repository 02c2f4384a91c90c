"""Collapsed Taylor mode: an interpreter of the jaxpr for differential operators.

For ``f`` and directions ``v_1 .. v_R``, the curve ``t -> f(x + t v_r)`` has Taylor
coefficients ``c_{r,0} = f(x)``, ``c_{r,1} = Df[v_r]``, ``c_{r,2} = D²f[v_r, v_r] / 2``,
..., ``c_{r,K} = D^K f[v_r]^K / K!``. Linear differential operators are weighted sums
of the top coefficients, ``Σ_r w_r c_{r,K}`` (the Laplacian: ``K = 2``, ``v_r = e_r``,
``w_r = 2``). *Collapsed* Taylor mode (Dangel et al., 2024-25; the forward Laplacian of
Li et al. is the case ``K = 2``) pushes through every primitive:

- the value ``x_0`` (once),
- the lower coefficients ``x_1 .. x_{K-1}``, one per direction (a leading axis ``R``),
- ONE top coefficient ``X_K = Σ_r w_r x_{r,K}``, already summed over the directions.

This works because the top coefficient of every primitive's output is *linear* in the
top coefficients of its inputs, plus terms made of lower coefficients only:

- linear ops ``L``: ``out_n = L x_n`` for every ``n``, so ``X_K`` maps through ``L`` once;
- elementwise ``g`` (Faà di Bruno): ``out_n = Σ_k g^(k)(x_0)/k! [t^n] (Σ_m x_m t^m)^k``,
  hence ``X_K,out = g'(x_0) X_K + Σ_r w_r Σ_{k>=2} g^(k)(x_0)/k! [t^K](δx_r)^k``;
  for ``K = 2``: ``X_2,out = g' X_2 + g''/2 Σ_r w_r x_{r,1}²``;
- bilinear ops (``mul``, ``dot_general``): ``(ab)_n = Σ_j a_j b_{n-j}``, hence
  ``X_K,out = a_0 B_K + A_K b_0 + Σ_r w_r Σ_{0<j<K} a_{r,j} b_{r,K-j}``.

The Laplacian thus costs one pass carrying ``d + 2`` vectors instead of the ``d`` Hessian
-vector products (each a forward plus a reverse pass) of the trace of the Hessian.

The interpreter runs at trace time of the caller: every rule emits ordinary JAX, so the
result works under ``jax.jit``, ``jax.vmap`` and ``jax.grad``. Calls (``jit``,
``custom_jvp_call``, ``custom_vjp_call``, ``checkpoint``) are interpreted through their
primal jaxpr (a custom derivative rule says nothing about higher coefficients). A
primitive without a rule raises :class:`UnsupportedPrimitiveError` naming it.

Weights: ``None`` (all ones, one top coefficient), a vector ``(R,)``, or a matrix
``(G, R)``, which carries ``G`` separately collapsed top coefficients (a leading axis;
the stochastic estimators use ``G = R`` to get per-sample values for a standard error).

>>> import jax.numpy as jnp
>>> from functorch_lite._jaxpr import stage
>>> closed = stage(lambda x: jnp.sum(x * x * x), jnp.ones(2))    # Δ = Σ 6 x_i
>>> (out,), = [propagate(closed, [jnp.array([1.0, 2.0])], [[jnp.eye(2)]], order=2)]
>>> 2 * out.top
Array(18., dtype=float32)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax.extend.core as jcore
from jax import lax

from . import ClosedJaxpr, Jaxpr, is_literal, primitive_name

__all__ = ["TV", "propagate", "stage_with_tree", "UnsupportedPrimitiveError", "SUPPORTED"]


def stage_with_tree(func: Callable, *args: Any) -> tuple[ClosedJaxpr, Any]:
    """``func``'s closed jaxpr at ``args`` and the pytree structure of its output (one
    trace, nothing carried out of the traced function by a closure).

    >>> closed, tree = stage_with_tree(lambda x: {"a": x, "b": (x, x)}, 1.0)
    >>> len(closed.jaxpr.outvars), tree.num_leaves
    (3, 3)
    """
    closed, shape = jax.make_jaxpr(func, return_shape=True)(*args)
    return closed, jax.tree_util.tree_structure(shape)


class UnsupportedPrimitiveError(NotImplementedError):
    """Collapsed Taylor mode has no rule for a primitive the inputs reach (control flow:
    ``cond``, ``while``, ``scan``); the message names it.

    >>> import jax, jax.numpy as jnp
    >>> import functorch_lite as fl
    >>> try:
    ...     fl.laplacian(lambda x: jax.lax.cond(x[0] > 0, jnp.sum, jnp.prod, x))(jnp.ones(3))
    ... except UnsupportedPrimitiveError as e:
    ...     print("cond" in str(e))
    True
    """


@dataclasses.dataclass
class TV:
    """A value and its Taylor coefficients: ``lo[n-1]`` is order ``n`` (shape
    ``(R, *p.shape)`` or None for zero), ``top`` the collapsed order ``K`` (shape
    ``p.shape``, ``(G, *p.shape)`` with a weight matrix, or None)."""

    p: Any
    lo: list
    top: Any = None
    eye: bool = False   # lo[0][r] is the r-th unit vector (an identity seed), nothing else set

    @property
    def const(self) -> bool:
        return self.top is None and all(c is None for c in self.lo)


@dataclasses.dataclass
class _Ctx:
    order: int              # K: the collapsed order (lower orders 1..K-1 per direction)
    with_top: bool          # False: only per-direction orders 1..K-1 (e.g. divergence)
    weights: Any            # None, (R,) or (G, R)
    where: str

    @property
    def n_lo(self) -> int:
        return self.order - 1 if self.with_top else self.order

    @property
    def top_batched(self) -> bool:
        return self.weights is not None and jnp.ndim(self.weights) == 2

    def collapse(self, x):
        """``Σ_r w_r x_r`` over the leading direction axis (None stays None)."""
        if x is None:
            return None
        if self.weights is None:
            return jnp.sum(x, axis=0)
        w = jnp.asarray(self.weights, x.dtype)
        return jnp.tensordot(w, x, axes=1)  # (R,) or (G, R) against (R, ...)


# ---------------------------------------------------------------------------- helpers

def _add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _lead(p, ndim_extra: int = 1):
    """``p`` with leading unit axes, to broadcast against a direction-batched array."""
    return jnp.reshape(p, (1,) * ndim_extra + jnp.shape(p))


def _mul_b(p, x):
    """Unbatched ``p`` (shape s) times batched ``x`` (shape (R, *s))."""
    if x is None:
        return None
    return _lead(p, x.ndim - jnp.ndim(p)) * x


def _bmap(fn: Callable, args: Sequence, batched: Sequence[bool]):
    """``fn(*args)``, vmapped over the leading axis of the batched arguments."""
    if not any(batched):
        return fn(*args)
    return jax.vmap(fn, in_axes=tuple(0 if b else None for b in batched))(*args)


def _topmap(ctx: _Ctx, fn: Callable, args: Sequence, is_top: Sequence[bool]):
    """``fn`` applied where some arguments are top coefficients (batched when G > 1)."""
    return _bmap(fn, args, [t and ctx.top_batched for t in is_top])


def _broadcast_tv(ctx: "_Ctx", tv: TV, shape: tuple) -> TV:
    """Broadcast a (scalar) operand of an elementwise primitive to the output shape."""
    if tuple(jnp.shape(tv.p)) == tuple(shape):
        return tv
    nd = len(shape) - jnp.ndim(tv.p)
    bshape = lambda lead: tuple(lead) + tuple(shape)  # noqa: E731

    def bc(x, n_lead):
        if x is None:
            return None
        lead = jnp.shape(x)[:n_lead]
        x = jnp.reshape(x, tuple(lead) + (1,) * nd + jnp.shape(x)[n_lead:])
        return jnp.broadcast_to(x, bshape(lead))

    return TV(bc(jnp.asarray(tv.p), 0), [bc(c, 1) for c in tv.lo], bc(tv.top, int(ctx.top_batched)))


def _const(p, ctx: _Ctx) -> TV:
    return TV(p, [None] * ctx.n_lo, None)


def _is_float(aval) -> bool:
    return jnp.issubdtype(aval.dtype, jnp.inexact)


# ------------------------------------------------------------------------ rule kinds

def _linear_rule(ctx: _Ctx, eqn, ins: list[TV]) -> list[TV]:
    """Primitives whose second and higher derivatives vanish (almost everywhere): every
    coefficient maps through the linearization at the value (a JVP)."""
    prim, params = eqn.primitive, eqn.params
    ps = [t.p for t in ins]
    live = [i for i, t in enumerate(ins) if not t.const]
    multiple = prim.multiple_results

    def f(*xs):
        args = list(ps)
        for i, x in zip(live, xs):
            args[i] = x
        out = prim.bind(*args, **params)
        return tuple(out) if multiple else (out,)

    primal_live = [ps[i] for i in live]
    outs_p = f(*primal_live)

    def jvp_of(coeffs: list, batched: list[bool]):
        if all(c is None for c in coeffs):
            return None
        zs = [jnp.zeros_like(p) if c is None else c for p, c in zip(primal_live, coeffs)]
        bs = [b and c is not None for c, b in zip(coeffs, batched)]
        return _bmap(lambda *ts: jax.jvp(f, tuple(primal_live), tuple(ts))[1], zs, bs)

    los = [jvp_of([ins[i].lo[n] for i in live], [True] * len(live)) for n in range(ctx.n_lo)]
    tops = jvp_of([ins[i].top for i in live], [ctx.top_batched] * len(live))
    results = []
    for k, (var, p) in enumerate(zip(eqn.outvars, outs_p)):
        if not _is_float(var.aval):
            results.append(_const(p, ctx))
            continue
        results.append(TV(p, [None if lo is None else lo[k] for lo in los], None if tops is None else tops[k]))
    return results


def _derivatives(g: Callable, x, k: int) -> list:
    """``[g'(x), ..., g^(k)(x)]`` of an elementwise ``g`` (nested JVPs with unit tangents)."""
    fns = [g]
    for _ in range(k):
        prev = fns[-1]
        fns.append(lambda y, prev=prev: jax.jvp(prev, (y,), (jnp.ones_like(y),))[1])
    return [fn(x) for fn in fns[1:]]


def _unary(ctx: _Ctx, g: Callable, x: TV, out_p) -> TV:
    """Faà di Bruno for an elementwise ``g`` of one live input."""
    K = ctx.order
    n_lo = ctx.n_lo
    kmax = K if ctx.with_top else n_lo
    ders = _derivatives(g, x.p, kmax)
    coef = [None] + [ders[k - 1] / math.factorial(k) for k in range(1, kmax + 1)]
    u = [None] + list(x.lo)  # u[n], n = 1..n_lo, per direction
    # P[k][n] = [t^n] (Σ_m u_m t^m)^k, for n = k..kmax (per direction)
    P = {1: {n: u[n] for n in range(1, n_lo + 1)}}
    for k in range(2, kmax + 1):
        P[k] = {}
        for n in range(k, kmax + 1):
            acc = None
            for j in range(k - 1, n):
                a, b = P[k - 1].get(j), u[n - j] if n - j <= n_lo else None
                if a is not None and b is not None:
                    acc = _add(acc, a * b)
            P[k][n] = acc
    lo = []
    for n in range(1, n_lo + 1):
        acc = None
        for k in range(1, n + 1):
            acc = _add(acc, _mul_b(coef[k], P[k].get(n)))
        lo.append(acc)
    top = None
    if ctx.with_top:
        # g^(k)/k! is the same for every direction: collapse [t^K](δx)^k over the
        # directions first, then scale once (a direction seed shared by a batch of
        # points, as the identity of a Laplacian, is then reduced once for all of them).
        top = None if x.top is None else _top_scale(ctx, coef[1], x.top)
        for k in range(2, K + 1):
            if P[k].get(K) is not None:
                top = _add(top, _top_scale(ctx, coef[k], ctx.collapse(P[k][K])))
    return TV(out_p, lo, top)


def _top_scale(ctx: _Ctx, p, top):
    return _lead(p, top.ndim - jnp.ndim(p)) * top


def _bilinear(ctx: _Ctx, a: TV, b: TV, op: Callable, contract: Callable, out_p) -> TV:
    """``(ab)_n = Σ_j a_j b_{n-j}``; the top collapses the cross terms with ``contract``."""
    K = ctx.order
    ac = [a.p] + list(a.lo)
    bc = [b.p] + list(b.lo)
    lo = []
    for n in range(1, ctx.n_lo + 1):
        acc = None
        for j in range(0, n + 1):
            x, y = ac[j], bc[n - j]
            if x is None or y is None:
                continue
            acc = _add(acc, _bmap(op, (x, y), (j > 0, n - j > 0)))
        lo.append(acc)
    top = None
    if ctx.with_top:
        if b.top is not None:
            top = _add(top, _topmap(ctx, op, (a.p, b.top), (False, True)))
        if a.top is not None:
            top = _add(top, _topmap(ctx, op, (a.top, b.p), (True, False)))
        for j in range(1, K):
            x, y = ac[j], bc[K - j]
            if x is not None and y is not None:
                top = _add(top, contract(x, y))
    return TV(out_p, lo, top)


def _weighted(ctx: _Ctx, x):
    """``x`` (R, ...) times the weights: (R, ...) for a vector, (G, R, ...) for a matrix."""
    if ctx.weights is None:
        return x
    w = jnp.asarray(ctx.weights, x.dtype)
    return jnp.reshape(w, w.shape + (1,) * (x.ndim - 1)) * (x if w.ndim == 1 else x[None])


def _mul_rule(ctx: _Ctx, eqn, ins: list[TV]) -> list[TV]:
    return [_mul(ctx, ins[0], ins[1], tuple(eqn.outvars[0].aval.shape))]


def _mul(ctx: _Ctx, a: TV, b: TV, shape: tuple) -> TV:
    """The product rule, operands broadcast to ``shape``."""
    a, b = _broadcast_tv(ctx, a, shape), _broadcast_tv(ctx, b, shape)
    out_p = a.p * b.p

    def contract(x, y):
        return jnp.sum(_weighted(ctx, x) * (y if not ctx.top_batched else y[None]), axis=1 if ctx.top_batched else 0)

    return _bilinear(ctx, a, b, lambda x, y: x * y, contract, out_p)


def _eye_dot(ctx: _Ctx, params: dict, ins: list[TV], out_p) -> TV | None:
    """``x . W`` (or ``W . x``) where ``x`` is 1-D and carries only the identity seed: the
    ``r``-th direction of the output is ``W`` at index ``r`` of its contracted axis, so
    the seeds need no matmul (None where the case does not apply)."""
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    live = [i for i, t in enumerate(ins) if not t.const]
    if len(live) != 1 or lb or rb:
        return None
    x, w = ins[live[0]], ins[1 - live[0]]
    if not x.eye or jnp.ndim(x.p) != 1:
        return None
    axis = (rc if live[0] == 0 else lc)[0]
    lo = jnp.moveaxis(w.p, axis, 0).astype(out_p.dtype)
    return TV(out_p, [lo] + [None] * (ctx.n_lo - 1), None)


def _dot_rule(ctx: _Ctx, eqn, ins: list[TV]) -> list[TV]:
    params = dict(eqn.params)
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    op = lambda x, y: lax.dot_general_p.bind(x, y, **params)  # noqa: E731
    out_p = op(ins[0].p, ins[1].p)
    seeded = _eye_dot(ctx, params, ins, out_p)
    if seeded is not None:
        return [seeded]

    def contract(x, y):
        # Σ_r w_r x_r . y_r: the direction axis becomes one more contracting dimension.
        sh = lambda dims: tuple(d + 1 for d in dims)  # noqa: E731
        dims = (((0,) + sh(lc), (0,) + sh(rc)), (sh(lb), sh(rb)))
        p2 = dict(params, dimension_numbers=dims)
        one = lambda xw: lax.dot_general_p.bind(xw, y, **p2)  # noqa: E731
        xw = _weighted(ctx, x)
        return jax.vmap(one)(xw) if ctx.top_batched else one(xw)

    return [_bilinear(ctx, ins[0], ins[1], op, contract, out_p)]


def _conv_rule(ctx: _Ctx, eqn, ins: list[TV]) -> list[TV]:
    """Convolution is bilinear in (input, kernel); cross terms are summed per direction."""
    op = lambda x, y: eqn.primitive.bind(x, y, **eqn.params)  # noqa: E731

    def contract(x, y):
        per = jax.vmap(op)(x, y)  # (R, ...)
        return ctx.collapse(per)

    return [_bilinear(ctx, ins[0], ins[1], op, contract, op(ins[0].p, ins[1].p))]


def _add_rule(ctx: _Ctx, eqn, ins: list[TV], sign: float = 1.0) -> list[TV]:
    shape = eqn.outvars[0].aval.shape
    a, b = (_broadcast_tv(ctx, t, shape) for t in ins)
    out_p = eqn.primitive.bind(a.p, b.p, **eqn.params)

    def comb(x, y):
        if y is None:
            return x
        y = -y if sign < 0 else y
        return y if x is None else x + y

    return [TV(out_p, [comb(x, y) for x, y in zip(a.lo, b.lo)], comb(a.top, b.top))]


def _neg_rule(ctx: _Ctx, eqn, ins: list[TV]) -> list[TV]:
    (x,) = ins
    neg = lambda c: None if c is None else -c  # noqa: E731
    return [TV(-x.p, [neg(c) for c in x.lo], neg(x.top))]


def _elementwise_rule(ctx: _Ctx, eqn, ins: list[TV]) -> list[TV]:
    """A smooth elementwise primitive with exactly one live input: Faà di Bruno."""
    prim, params = eqn.primitive, eqn.params
    live = [i for i, t in enumerate(ins) if not t.const]
    shape = eqn.outvars[0].aval.shape
    if len(live) != 1:
        return _two_live(ctx, eqn, ins)
    i = live[0]
    ins = [_broadcast_tv(ctx, t, shape) if k == i else t for k, t in enumerate(ins)]
    ps = [t.p for t in ins]

    def g(x):
        args = list(ps)
        args[i] = x
        return prim.bind(*args, **params)

    return [_unary(ctx, g, ins[i], g(ins[i].p))]


def _two_live(ctx: _Ctx, eqn, ins: list[TV]) -> list[TV]:
    """Binary elementwise primitives with both inputs live, written through others."""
    name = primitive_name(eqn)
    a, b = ins
    shape = eqn.outvars[0].aval.shape
    a, b = _broadcast_tv(ctx, a, shape), _broadcast_tv(ctx, b, shape)
    if name == "div":  # a / b = a * (1 / b)
        rb = _unary(ctx, lambda y: 1 / y, b, 1 / b.p)
        return [_mul(ctx, a, rb, tuple(shape))]
    if name == "pow":  # a ** b = exp(b log a)
        la = _unary(ctx, jnp.log, a, jnp.log(a.p))
        e = _mul(ctx, b, la, tuple(shape))
        return [_unary(ctx, jnp.exp, e, jnp.exp(e.p))]
    raise UnsupportedPrimitiveError(
        f"{ctx.where}: collapsed Taylor mode has no rule for primitive '{name}' with both "
        "inputs depending on the differentiated argument; rewrite it through supported "
        "operations."
    )


def _map_linear(ctx: _Ctx, tv: TV, fn: Callable) -> TV:
    """A linear ``fn`` (a reshape, a slice...) applied to the value and every coefficient."""
    one = lambda c, b: None if c is None else _bmap(fn, (c,), (b,))  # noqa: E731
    return TV(fn(tv.p), [one(c, True) for c in tv.lo], one(tv.top, ctx.top_batched))


def _reduce_prod_rule(ctx: _Ctx, eqn, ins: list[TV]) -> list[TV]:
    """``prod`` over ``axes`` as a balanced tree of products (``log2 n`` mul rules)."""
    (x,) = ins
    axes = tuple(eqn.params["axes"])
    nd = jnp.ndim(x.p)
    keep = [a for a in range(nd) if a not in axes]
    shape = tuple(jnp.shape(x.p)[a] for a in keep)
    x = _map_linear(ctx, x, lambda v: jnp.reshape(jnp.transpose(v, keep + list(axes)), shape + (-1,)))
    while jnp.shape(x.p)[-1] > 1:
        n = jnp.shape(x.p)[-1]
        if n % 2:
            ones = TV(jnp.ones(shape + (1,), jnp.result_type(x.p)), [None] * ctx.n_lo, None)
            x = _concat_last(ctx, x, ones)
            n += 1
        a = _map_linear(ctx, x, lambda v: v[..., : n // 2])
        b = _map_linear(ctx, x, lambda v: v[..., n // 2:])
        x = _mul(ctx, a, b, shape + (n // 2,))
    return [_map_linear(ctx, x, lambda v: v[..., 0])]


def _concat_last(ctx: _Ctx, x: TV, y: TV) -> TV:
    """Concatenate along the last axis (``y`` carries no coefficients: pad them with 0)."""
    def cat(c):
        return None if c is None else jnp.pad(c, [(0, 0)] * (c.ndim - 1) + [(0, 1)])

    return TV(jnp.concatenate([x.p, y.p], axis=-1), [cat(c) for c in x.lo], cat(x.top))


def _zero_rule(ctx: _Ctx, eqn, ins: list[TV]) -> list[TV]:
    """Piecewise-constant primitives (sign, floor, stop_gradient...): no coefficients."""
    outs = eqn.primitive.bind(*[t.p for t in ins], **eqn.params)
    outs = outs if eqn.primitive.multiple_results else [outs]
    return [_const(p, ctx) for p in outs]


# Every coefficient maps through the linearization at the value (derivatives of order
# >= 2 vanish almost everywhere).
LINEAR = frozenset("""
    add_any reshape broadcast_in_dim transpose squeeze expand_dims slice dynamic_slice
    dynamic_update_slice concatenate pad rev reduce_sum reduce_max reduce_min max min
    select_n convert_element_type copy copy_p gather scatter-add scatter_add cumsum
    cummax cummin abs clamp reduce_precision sort split real imag conj complex
    rem argsort optimization_barrier stack tile reduce_and
""".split())
SMOOTH = frozenset("""
    tanh sin cos tan exp exp2 expm1 log log1p logistic sqrt rsqrt cbrt erf erfc erf_inv
    integer_pow square sinh cosh asinh acosh atanh asin acos atan lgamma digamma div pow
    atan2 igamma polygamma
""".split())
ZERO = frozenset("sign floor ceil round stop_gradient nextafter is_finite".split())
CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
         "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
         "custom_vjp_call_jaxpr": "fun_jaxpr", "checkpoint": "jaxpr", "remat": "jaxpr",
         "custom_lin": None}
SUPPORTED = sorted(LINEAR | SMOOTH | ZERO | set(CALLS) - {"custom_lin"}
                   | {"mul", "dot_general", "add", "sub", "neg", "reduce_prod", "conv_general_dilated"})


def _rule(name: str):
    if name == "mul":
        return _mul_rule
    if name == "dot_general":
        return _dot_rule
    if name == "conv_general_dilated":
        return _conv_rule
    if name == "reduce_prod":
        return _reduce_prod_rule
    if name == "add":
        return _add_rule
    if name == "sub":
        return lambda c, e, i: _add_rule(c, e, i, sign=-1.0)
    if name == "neg":
        return _neg_rule
    if name in LINEAR:
        return _linear_rule
    if name in SMOOTH:
        return _elementwise_rule
    if name in ZERO:
        return _zero_rule
    return None


# ------------------------------------------------------------------------ interpreter

def _eval_eqn(eqn, invals: list) -> list:
    """Evaluate one equation as it stands (its inputs carry no coefficients): custom
    derivative rules stay in place for an outer ``jax.grad``."""
    invars, vals, seen = [], [], set()
    for v, x in zip(eqn.invars, invals):
        if is_literal(v) or id(v) in seen:
            continue
        seen.add(id(v))
        invars.append(v)
        vals.append(x)
    info = jcore.DebugInfo("collapsed Taylor mode", primitive_name(eqn), None, None)
    jaxpr = Jaxpr([], invars, list(eqn.outvars), [eqn], debug_info=info)
    return jax.core.eval_jaxpr(jaxpr, [], *vals)


def _run(ctx: _Ctx, jaxpr: Jaxpr, consts: Sequence, ins: Sequence[TV]) -> list[TV]:
    env: dict = {}

    def read(v) -> TV:
        if is_literal(v):
            return _const(v.val, ctx)
        return env[v]

    for v, c in zip(jaxpr.constvars, consts):
        env[v] = _const(c, ctx)
    for v, t in zip(jaxpr.invars, ins):
        env[v] = t
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = primitive_name(eqn)
        if all(t.const for t in invals) or not any(_is_float(v.aval) for v in eqn.outvars):
            outs = [_const(p, ctx) for p in _eval_eqn(eqn, [t.p for t in invals])]
        elif name in CALLS and CALLS[name] is not None:
            sub = eqn.params[CALLS[name]]
            if isinstance(sub, ClosedJaxpr):
                outs = _run(ctx, sub.jaxpr, sub.consts, invals)
            else:
                outs = _run(ctx, sub, [], invals)
        else:
            rule = _rule(name)
            if rule is None:
                raise UnsupportedPrimitiveError(
                    f"{ctx.where}: collapsed Taylor mode has no rule for primitive '{name}' "
                    f"(reached by the differentiated input). Supported: elementwise "
                    f"functions, mul/div/pow, dot_general, reductions, reshapes, select_n, "
                    f"max/min and calls (jit, custom_jvp/custom_vjp); control flow "
                    f"(cond, while, scan) is not. Rewrite the function without '{name}'."
                )
            outs = rule(ctx, eqn, invals)
        for v, t in zip(eqn.outvars, outs):
            if not _is_float(v.aval) and not t.const:
                t = _const(t.p, ctx)
            env[v] = t
    return [read(v) for v in jaxpr.outvars]


def propagate(closed: ClosedJaxpr, primals: Sequence, lower: Sequence[Sequence],
              top: Sequence | None = None, *, order: int = 2, weights: Any = None,
              with_top: bool = True, eye: Sequence[bool] | None = None,
              where: str = "collapsed Taylor mode") -> list[TV]:
    """Push Taylor coefficients through ``closed``.

    Args:
      closed: the program (``jax.make_jaxpr`` of a flat function).
      primals: its inputs ``x_0``.
      lower: per input, the per-direction coefficients of orders ``1 .. K-1`` (each
        ``(R, *shape)`` or None); shorter lists are padded with None.
      top: per input, the collapsed order-``K`` coefficient (or None, the default).
      order: ``K``.
      weights: the collapse weights (None, ``(R,)`` or ``(G, R)``).
      with_top: False computes only the per-direction coefficients of orders
        ``1 .. order`` (no collapsed one).
      eye: per input, True where its only coefficient is the identity seed
        (``lower = [eye(R).reshape(R, *shape)]``, no top): a ``dot_general`` with a
        constant then takes the constant's rows instead of multiplying by the identity.

    Returns:
      One :class:`TV` per output of ``closed``.
    """
    ctx = _Ctx(order=order, with_top=with_top, weights=weights, where=where)
    n = ctx.n_lo
    top = [None] * len(primals) if top is None else list(top)
    eye = [False] * len(primals) if eye is None else list(eye)
    ins = [TV(p, (list(lo) + [None] * n)[:n], t, e and t is None and len(lo) == 1)
           for p, lo, t, e in zip(primals, lower, top, eye)]
    return _run(ctx, closed.jaxpr, closed.consts, ins)
