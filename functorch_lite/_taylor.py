"""Taylor-mode higher derivatives: :func:`derivative` and :func:`taylor`.

The k-th derivative of ``f`` at ``x`` along ``v`` is the k-th derivative of the scalar
curve ``h(t) = f(x + t v)`` at ``t = 0``:

.. math::

    d^k f(x)[v, \\dots, v] = h^{(k)}(0) = k! \\, c_k, \\qquad
    h(t) = \\sum_j c_j t^j .

Taylor mode (``jax.experimental.jet``) pushes the truncated series ``x + t v`` through
each primitive, turning input coefficients ``(c_0, ..., c_k)`` into output coefficients
by the Cauchy product and its relatives (``exp``, ``log``, ``div``, ``sin``... each have
an O(k²) recurrence). Cost grows about quadratically in ``k``. Nesting ``grad`` (or
``jvp``) ``k`` times instead differentiates the derivative program of the level below,
which roughly doubles it each time: exponential in ``k``.

Where ``jet`` has no rule for a primitive that the input reaches (``tan``, ``cond``,
``while`` ...), or where the function carries a custom derivative rule that ``jet``
would silently ignore (``custom_jvp``/``custom_vjp``, e.g. ``jnp.sinc``), these
transforms fall back to nested differentiation, with a :class:`TaylorFallbackWarning`
naming the primitive. The answer is then slower, never wrong. Layers of
:mod:`functorch_lite.nn` need no fallback: Taylor mode traces inside
``functorch_lite._mode.taylor_mode()``, where they expand their plain primal.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import jet as _jet

from . import _args
from ._jaxpr.jet import blockers as _blockers, missing_rule as _missing_rule, reverse_only
from ._jaxpr.taylor import stage_with_tree
from ._mode import taylor_mode

__all__ = ["derivative", "taylor", "TaylorFallbackWarning"]


class TaylorFallbackWarning(UserWarning):
    """Taylor mode could not be used; the result comes from nested differentiation.

    Issued by :func:`derivative` and :func:`taylor` when a primitive of
    ``f`` has no Taylor rule; the k-th derivative is then ``d^k f`` by k nested JVPs.

    >>> issubclass(TaylorFallbackWarning, UserWarning)
    True
    """


def check_order(order: Any, transform: str) -> int:
    """``order`` must be a non-negative Python (or NumPy) integer."""
    if isinstance(order, (bool, np.bool_)) or not isinstance(order, numbers.Integral):
        raise TypeError(
            f"{transform}: order must be a non-negative int, got {order!r} "
            f"({type(order).__name__}); pass e.g. order=3."
        )
    if order < 0:
        raise ValueError(
            f"{transform}: order must be a non-negative int, got {order}; order=0 is the "
            "function itself, order=1 the first derivative."
        )
    return int(order)


# ----------------------------------------------------------------------------- engines


def _jet_coefficients(h: Callable, leaves: list, dirs: list, order: int) -> list:
    """Taylor coefficients ``c_0..c_order`` of ``t -> h(*(leaves + t dirs))`` by jet:
    ``coeffs[j]`` is the list of output leaves of ``c_j``."""
    flat_h = lambda *xs: jax.tree_util.tree_leaves(h(*xs))  # noqa: E731
    series = [[d] + [jnp.zeros_like(d)] * (order - 1) for d in dirs]
    primal_out, terms = _jet.jet(flat_h, tuple(leaves), tuple(series), factorial_scaled=False)
    return [list(primal_out)] + [[t[j] for t in terms] for j in range(order)]


def _nested_coefficients(h: Callable, leaves: list, dirs: list, order: int,
                         reverse: bool, scale: float = 1.0) -> list:
    """The same coefficients by nesting a first-derivative transform ``order`` times.

    ``D_j(t) = (h(t), h'(t), ..., h^(j)(t))`` of the curve ``t -> h(x + t v)``;
    ``D_{j+1}`` differentiates ``D_j`` once more (jvp, or jacrev when the function has
    a reverse-only rule) and keeps its primal. The coefficients are those of the
    direction ``scale * v``: ``c_j = h^(j)(0) scale^j / j!`` (the factor computed in
    log space, so no factorial is ever formed).
    """
    t0 = jnp.zeros((), jnp.result_type(*leaves))

    def curve(t):
        out = h(*[x + (t * d).astype(jnp.result_type(x)) for x, d in zip(leaves, dirs)])
        return (jax.tree_util.tree_leaves(out),)

    fn = curve
    for _ in range(order):
        fn = _one_more(fn, reverse, t0)
    derivs = fn(t0)
    return [[leaf * _power_over_factorial(scale, j) for leaf in level] for j, level in enumerate(derivs)]


def _power_over_factorial(s: float, j: int) -> float:
    """``s^j / j!`` as a Python float (0.0 where it underflows, never an OverflowError
    for the ``s`` this module uses)."""
    log = j * math.log(s) - math.lgamma(j + 1)
    return math.exp(min(log, 700.0))


def _one_more(fn: Callable, reverse: bool, t0: jax.Array) -> Callable:
    one = jnp.ones_like(t0)

    def next_fn(t):
        if reverse:
            jac, primal = jax.jacrev(lambda s: (lambda y: (y, y))(fn(s)), has_aux=True)(t)
        else:
            primal, jac = jax.jvp(fn, (t,), (one,))
        return (primal[0],) + tuple(jac)

    return next_fn


def coefficients(func: Callable, x: Any, direction: Any, order: int, args: tuple,
                 kwargs: dict, where: str, scale: float = 1.0) -> tuple[list, Any]:
    """Taylor coefficients of ``t -> func(x + t scale direction, *args, **kwargs)`` at 0.

    Jet when every primitive the input reaches has a rule; nested differentiation (with
    a :class:`TaylorFallbackWarning`) otherwise. ``order == 1`` is one ``jvp`` (so a
    derivative that is infinite, like that of ``sqrt`` at 0, comes out ``inf`` as with
    ``jax.grad``; jet's series arithmetic makes it ``nan``).
    """
    leaves, in_tree = jax.tree_util.tree_flatten(x)
    dirs = jax.tree_util.tree_leaves(direction)

    def h(*xs):
        out = func(jax.tree_util.tree_unflatten(in_tree, list(xs)), *args, **kwargs)
        _args.check_inexact_output(out, where)
        return out

    if order == 0:
        out = h(*leaves)
        out_leaves, out_tree = jax.tree_util.tree_flatten(out)
        return [out_leaves], out_tree
    # Taylor mode traces inside taylor_mode(): functorch_lite.nn layers then run their
    # bare primal (jet cannot trace custom rules); the nested fallback traces outside
    # it, where those layers use their custom_jvp rule.
    with taylor_mode():
        closed, out_tree = stage_with_tree(h, *leaves)
        blockers = _blockers(closed)
        if order == 1:
            nesting = _working_nesting(h, leaves, dirs, order, scale, where)[0] if reverse_only(blockers) else "jvp"
            return _nested(h, leaves, dirs, order, nesting, scale), out_tree
        if not blockers:
            try:
                return _jet_coefficients(h, leaves, [d * scale for d in dirs], order), out_tree
            except (KeyError, NotImplementedError) as err:
                name = _missing_rule(err)
                if name is None:
                    raise
                blockers = [name]
    nesting, failed = _working_nesting(h, leaves, dirs, order, scale, where)
    why = f" (nested jvp cannot: {failed})" if failed else ""
    warnings.warn(
        f"{where}: Taylor mode (jax.experimental.jet) has no faithful rule for "
        f"{', '.join(blockers)}; falling back to nested {nesting}{why} "
        f"(correct, but its cost grows exponentially with order={order}).",
        TaylorFallbackWarning,
        stacklevel=3,
    )
    return _nested(h, leaves, dirs, order, nesting, scale), out_tree


def _nested(h, leaves, dirs, order, nesting, scale):
    return _nested_coefficients(h, leaves, dirs, order, reverse=nesting == "jacrev", scale=scale)


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _working_nesting(h: Callable, leaves: list, dirs: list, order: int, scale: float,
                     where: str) -> tuple[str, str | None]:
    """``("jvp", None)`` if nested jvp traces ``h``, else ``("jacrev", why jvp failed)``
    if nested jacrev does (a plain ``jax.custom_vjp`` has only a reverse rule); else a
    TypeError that names the ways out. Abstract tracing only (``jax.eval_shape``)."""
    def traces(reverse: bool) -> Exception | None:
        def run(*xs):
            return _nested_coefficients(h, list(xs), dirs, order, reverse, scale)
        # lowered, not only traced: JAX stages a custom_vjp under jvp and raises when
        # lowering it (tracing alone, as jax.eval_shape does, passes)
        abstract = [jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)) for x in leaves]
        try:
            jax.jit(run).lower(*abstract)
        # a custom_vjp under jvp raises TypeError ("can't apply forward-mode autodiff (jvp)
        # to a custom_vjp function") or, nested, NotImplementedError (no rule for
        # 'custom_lin'); a custom_vjp whose backward is not differentiable fails under
        # nested jacrev the same ways
        except (TypeError, NotImplementedError, ValueError) as err:
            return err
        return None

    fwd = traces(False)
    if fwd is None:
        return "jvp", None
    rev = traces(True)
    if rev is None:
        return "jacrev", _first_line(fwd)
    raise TypeError(
        f"{where}: neither Taylor mode, nested jvp nor nested jacrev can differentiate this "
        f"function {order} times (nested jvp: {_first_line(fwd)}; nested jacrev: "
        f"{_first_line(rev)}). A jax.custom_vjp allows reverse mode only, and its backward "
        "rule must itself be differentiable for higher orders; for second derivatives use "
        "fl.vhp or fl.hessian(f, mode=\"rev-over-rev\"), or give the function a jax.custom_jvp rule."
    ) from None


# ----------------------------------------------------------------------------- public


def _prepare_point(x: Any, direction: Any, where: str) -> tuple[Any, Any]:
    """Validate ``x`` (Python floats become arrays) and resolve ``direction``."""
    _args.check_differentiable(x, where, "x")
    x = jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, _args.tangent_dtype(_args.leaf_dtype(a))), x)
    if direction is None:
        leaves = jax.tree_util.tree_leaves(x)
        if len(leaves) != 1 or np.shape(leaves[0]) != ():
            shapes = [tuple(np.shape(a)) for a in leaves]
            raise ValueError(
                f"{where}: x must be a scalar when no direction is given, got "
                f"{'shape ' + str(shapes[0]) if len(shapes) == 1 else f'a pytree with leaf shapes {shapes}'}. "
                "Pass direction=v (same shape as x) for the directional derivative "
                "d^k f(x)[v, ..., v], or differentiate each entry separately."
            )
        return x, jax.tree_util.tree_map(jnp.ones_like, x)
    return x, _args.match_tree(x, direction, where, "x", "direction")


def taylor(func: Callable, order: int, *, direction: Any = None) -> Callable:
    """Taylor coefficients of ``func`` up to ``order``, by Taylor mode.

    ``taylor(f, order=k)(x, *args, **kwargs)`` returns ``c`` with ``c[j] = f^(j)(x) / j!``
    for ``j = 0..k``, stacked along a new leading axis (shape ``(k + 1,) + out.shape``;
    pytree outputs give a pytree of such stacks), so that

    .. math:: f(x + t) \\approx \\sum_{j=0}^{k} c_j t^j .

    ``x`` is a scalar (a Python float is fine). With ``direction=v`` (same shape as
    ``x``) the coefficients are those of ``t -> f(x + t v)``: ``c_j = d^j f(x)[v, ..., v] / j!``.
    Extra positional and keyword arguments are passed to ``func`` and held constant.

    >>> import jax.numpy as jnp
    >>> taylor(jnp.exp, order=3)(jnp.float32(0.0))     # 1, 1, 1/2, 1/6
    Array([1.        , 1.        , 0.5       , 0.16666667], dtype=float32)
    """
    _args.check_callable(func, "taylor")
    order = check_order(order, "taylor")
    name = _args.func_name(func)

    def taylor_f(x, *args, **kwargs):
        where = f"taylor({name}, order={order})(x)"
        x, v = _prepare_point(x, direction, where)
        coeffs, out_tree = coefficients(func, x, v, order, args, kwargs, where)
        stacked = [jnp.stack([level[i] for level in coeffs]) for i in range(len(coeffs[0]))]
        return jax.tree_util.tree_unflatten(out_tree, stacked)

    taylor_f.__name__ = f"taylor({name}, order={order})"
    taylor_f.__doc__ = f"Taylor coefficients 0..{order} of {name} (Taylor mode)."
    return taylor_f


def _log_peak(order: int, s: float) -> float:
    """``max_j log(s^j / j!)`` over ``j = 0..order``: the size, relative to ``f``'s own
    derivatives, that the scaled Taylor coefficients reach on the way to ``order``
    (the maximum sits at ``j = floor(s)``)."""
    best = 0.0
    for j in {min(order, int(s)), min(order, int(s) + 1)}:
        best = max(best, j * math.log(s) - math.lgamma(j + 1))
    return best


def _max_order(dtype: Any) -> int:
    """The largest order :func:`derivative` computes in ``dtype`` (see ``_check_representable``)."""
    lo, hi = 1, 1 << 20
    limit = math.log(float(jnp.finfo(dtype).max)) - _MARGIN
    while lo < hi:
        mid = (lo + hi + 1) // 2
        s = math.exp(math.lgamma(mid + 1) / mid)
        lo, hi = (mid, hi) if _log_peak(mid, s) <= limit else (lo, mid - 1)
    return lo


_MARGIN = math.log(1e4)  # head room for the jet rules' own intermediate products


def _check_representable(order: int, s: float, leaves: list, where: str) -> None:
    """Raise if the scaled coefficients of ``order`` would overflow the input's dtype
    even for a function with derivatives of size one (sin, cos, exp at 0...)."""
    if order < 2 or not leaves:
        return
    dtype = jnp.result_type(*leaves)
    if not jnp.issubdtype(dtype, jnp.inexact):
        return
    fin = jnp.finfo(dtype)
    peak = _log_peak(order, s)
    if peak <= math.log(float(fin.max)) - _MARGIN:
        return
    hint = (f" (float64 reaches order {_max_order(jnp.float64)}: enable it with "
            "jax.config.update('jax_enable_x64', True) and pass a float64 x)"
            if jnp.finfo(dtype).bits < 64 else "")
    raise ValueError(
        f"{where}: order={order} is past what {np.dtype(dtype).name} can represent: on the way to "
        f"order {order} the Taylor coefficients reach about 1e{peak / math.log(10):.0f} times the "
        f"function's own derivatives, beyond {np.dtype(dtype).name}'s largest {float(fin.max):.3g}. "
        f"Use order <= {_max_order(dtype)} in {np.dtype(dtype).name}{hint}."
    )


def derivative(func: Callable, order: int, *, direction: Any = None) -> Callable:
    """The ``order``-th derivative of ``func``, by Taylor mode (not nested ``grad``).

    For scalar ``x``: ``derivative(f, order=k)(x) = f^(k)(x)``, shaped like the output
    (any shape; a Python float ``x`` is fine). For array (or pytree) ``x`` give a
    ``direction`` ``v`` shaped like ``x``; the result is the k-th directional derivative

    .. math:: d^k f(x)[v, \\dots, v] = \\frac{d^k}{dt^k} f(x + t v) \\Big|_{t=0} .

    It costs about ``O(k²)`` times one evaluation of ``f``; ``k`` nested ``grad`` calls
    cost about ``2^k`` (docs/benchmarks.md measures both). ``order=0`` returns ``f(x)``.
    Extra positional and keyword arguments are passed to ``func`` and held constant.
    Works under ``jit`` and ``vmap``.

    >>> import jax.numpy as jnp
    >>> derivative(lambda x: x ** 5, order=3)(jnp.float32(2.0))     # 60 x^2
    Array(240., dtype=float32)
    >>> v = jnp.array([1.0, 2.0], jnp.float32)              # d^3 sum(x^3)[v, v, v] = 6 sum(v^3)
    >>> derivative(lambda x: (x ** 3).sum(), order=3, direction=v)(jnp.ones(2, jnp.float32))
    Array(54., dtype=float32)
    """
    _args.check_callable(func, "derivative")
    order = check_order(order, "derivative")
    name = _args.func_name(func)
    # d^k f[v..v] = k! c_k(v) = c_k(s v) with s = (k!)^(1/k): the coefficient along the
    # scaled direction IS the derivative, so neither k! nor the tiny c_k(v) is ever formed
    # (for sin, c_34(v) ~ 1e-39 is below float32's normal range, 34! above its largest).
    s = math.exp(math.lgamma(order + 1) / order) if order else 1.0
    rest = math.exp(math.lgamma(order + 1) - order * math.log(s))  # = 1 up to round-off

    def derivative_f(x, *args, **kwargs):
        where = f"derivative({name}, order={order})(x)"
        x, v = _prepare_point(x, direction, where)
        _check_representable(order, s, jax.tree_util.tree_leaves(x), where)
        coeffs, out_tree = coefficients(func, x, v, order, args, kwargs, where, scale=s)
        return jax.tree_util.tree_unflatten(out_tree, [c * rest if rest != 1.0 else c for c in coeffs[order]])

    derivative_f.__name__ = f"derivative({name}, order={order})"
    derivative_f.__doc__ = f"Derivative of order {order} of {name} (Taylor mode)."
    return derivative_f
