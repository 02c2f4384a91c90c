"""``check_grad``: forward mode, reverse mode and finite differences must agree.

The check works in float64 along random directions, as JAX's ``check_grads`` does, so it
costs a few passes whatever the input size:

- forward: the JVP ``J u`` against the central difference
  ``D(h) = (f(x + h u) - f(x - h u)) / 2h`` with one Richardson step
  ``(4 D(h/2) - D(h)) / 3`` (error ``O(h^4)``);
- reverse: ``<J^T v, u>`` against ``<v, D>``; the two AD modes also against each other
  through ``<J u, v> = <u, J^T v>``.

``order=2`` repeats the check on the first derivatives themselves (``x -> J u`` and
``x -> J^T v``), covering forward-over-forward, reverse-over-forward, forward-over-reverse
and reverse-over-reverse. A rule that is off by 0.1% fails; see tests/test_check.py.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from . import _args
from ._transforms import jvp, vjp

__all__ = ["check_grad", "GradCheckError", "GradCheckReport"]

MODES = ("fwd", "rev")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One comparison: ``got`` (from ``method``) against ``expected`` (from ``reference``)."""

    derivative: str   # e.g. "d1", "d2 via rev"
    method: str       # "fwd", "rev"
    reference: str    # "finite differences", "fwd"
    got: float
    expected: float
    tolerance: float
    note: str = ""    # set when the comparison was skipped (a kink), saying why

    @property
    def error(self) -> float:
        return abs(self.got - self.expected)

    @property
    def skipped(self) -> bool:
        return bool(self.note)

    @property
    def passed(self) -> bool:
        return self.skipped or bool(self.error <= self.tolerance)


@dataclasses.dataclass(frozen=True)
class GradCheckReport:
    """All comparisons made by :func:`check_grad`; ``str()`` is a table.

    >>> import jax.numpy as jnp
    >>> report = check_grad(lambda x: (x ** 2).sum(), jnp.array([1.0, 2.0]))
    >>> report.passed, len(report.comparisons) > 0
    (True, True)
    """

    comparisons: tuple[Comparison, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.comparisons)

    @property
    def max_error(self) -> float:
        return max((c.error for c in self.comparisons), default=0.0)

    @property
    def worst(self) -> Comparison | None:
        """The comparison to report: a failed one with a non-finite value first, then the
        failed one furthest past its tolerance (None if nothing failed)."""
        failed = [c for c in self.comparisons if not c.passed]
        if not failed:
            return None
        non_finite = [c for c in failed if not (math.isfinite(c.got) and math.isfinite(c.expected))]
        return non_finite[0] if non_finite else max(failed, key=lambda c: c.error / c.tolerance)

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.note for c in self.comparisons if c.note))

    def __str__(self) -> str:
        lines = [f"{'derivative':<16} {'method':<8} {'against':<20} {'error':>10} {'tolerance':>10}  ok"]
        for c in self.comparisons:
            ok = "skip" if c.skipped else ("yes" if c.passed else "NO")
            lines.append(f"{c.derivative:<16} {c.method:<8} {c.reference:<20} {c.error:>10.2e} "
                         f"{c.tolerance:>10.2e}  {ok}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


class GradCheckError(AssertionError):
    """Raised by :func:`check_grad` when a derivative disagrees; ``.report`` has all.

    A reverse rule 1% off, ``d sin(x) = 1.01 cos(x)``, is caught:

    >>> import jax, jax.numpy as jnp
    >>> @jax.custom_vjp
    ... def f(x):
    ...     return jnp.sin(x).sum()
    >>> f.defvjp(lambda x: (f(x), x), lambda x, g: (g * jnp.cos(x) * 1.01,))
    >>> try:
    ...     check_grad(f, jnp.array([0.3, 0.5]), modes=("rev",))
    ... except GradCheckError as e:
    ...     print("disagrees:", not e.report.passed)
    disagrees: True
    """

    def __init__(self, message: str, report: GradCheckReport):
        super().__init__(message)
        self.report = report


def _richardson(h_fn: Callable, x: jax.Array, u: jax.Array, eps: float) -> jax.Array:
    def central(step):
        return (h_fn(x + step * u) - h_fn(x - step * u)) / (2 * step)

    return (4 * central(eps / 2) - central(eps)) / 3


def _one_sided(h_fn: Callable, x: jax.Array, u: jax.Array, eps: float, sign: int) -> jax.Array:
    """``(f(x + s h u) - f(x)) / (s h)`` with one Richardson step (error ``O(h^2)``)."""
    f0 = h_fn(x)

    def d(step):
        return (h_fn(x + sign * step * u) - f0) / (sign * step)

    return 2 * d(eps / 2) - d(eps)


def _first_order(h_fn, x, key, modes, eps, rtol, atol, label, where="check_grad") -> tuple[list[Comparison], jax.Array, jax.Array]:
    out = h_fn(x)
    ku, kv = jax.random.split(key)
    u = jax.random.normal(ku, x.shape, x.dtype)
    v = jax.random.normal(kv, out.shape, out.dtype)
    fd = _richardson(h_fn, x, u, eps)
    fd_dot = float(jnp.vdot(v, fd))
    results, jvp_dot = [], None

    def tol(expected, got):
        return atol + rtol * max(abs(expected), abs(got), float(jnp.linalg.norm(v) * jnp.linalg.norm(fd)))

    # A kink (relu, abs at 0) along u: the one-sided differences disagree by far more
    # than their O(h^2) error, and no single number is "the" derivative there; AD's value
    # is then one subgradient, which differences cannot check: skip, saying so.
    right = float(jnp.vdot(v, _one_sided(h_fn, x, u, eps, +1)))
    left = float(jnp.vdot(v, _one_sided(h_fn, x, u, eps, -1)))
    scale = max(abs(right), abs(left), float(jnp.linalg.norm(v) * jnp.linalg.norm(fd)), 1.0)
    note = ""
    if math.isfinite(right) and math.isfinite(left) and abs(right - left) > max(1e-4 * scale, 100 * tol(right, left)):
        note = (f"{label}: x is at a kink (not differentiable there along the check's direction: the "
                f"one-sided differences give {right:.6g} and {left:.6g}), so AD's value there is one "
                "subgradient that finite differences cannot check; it was skipped. Check at a "
                "point off the kink (e.g. x + 0.01).")

    def compare(method, reference, got, expected, t):
        return Comparison(label, method, reference, got, expected, t,
                          note if reference == "finite differences" else "")

    if "fwd" in modes:
        try:
            _, ju = jvp(h_fn, (x,), (u,))
        except (TypeError, NotImplementedError) as e:
            if "custom_vjp" not in str(e) and "custom_lin" not in str(e):
                raise
            raise TypeError(
                f"{where}: forward mode cannot differentiate this function: it uses a "
                "jax.custom_vjp, which has a reverse-mode rule only. Check reverse mode alone "
                "with check_grad(f, ..., modes=(\"rev\",)).") from None
        jvp_dot = float(jnp.vdot(v, ju))
        results.append(compare("fwd", "finite differences", jvp_dot, fd_dot, tol(fd_dot, jvp_dot)))
    if "rev" in modes:
        _, pullback = vjp(h_fn, x)
        (jtv,) = pullback(v)
        vjp_dot = float(jnp.vdot(jtv, u))
        results.append(compare("rev", "finite differences", vjp_dot, fd_dot, tol(fd_dot, vjp_dot)))
        if jvp_dot is not None:
            results.append(Comparison(label, "rev", "fwd", vjp_dot, jvp_dot,
                                      1e-3 * tol(jvp_dot, vjp_dot)))
    return results, u, v


def check_grad(func: Callable, *args: Any, argnums: _args.Argnums | None = None, order: int = 1,
               modes: Sequence[str] = MODES, eps: float = 1e-3, rtol: float = 1e-6,
               atol: float = 1e-8, seed: int = 0, raise_on_error: bool = True,
               **kwargs: Any) -> GradCheckReport:
    """Compare forward mode, reverse mode and finite differences of ``func`` at ``args``.

    Args:
      func: any function of arrays/pytrees returning arrays/pytrees of floats.
      args: where to check; cast to float64 (complex128) for the check. Complex
        arguments and outputs are checked as pairs of reals (real and imaginary parts).
        ``args=(x, y)`` is accepted as well (``jax.test_util.check_grads``' form).
      argnums: which positional arguments to perturb (default: all).
      order: 1 checks first derivatives; 2 also checks the derivatives of those.
      modes: which AD modes to check (``("rev",)`` for a reverse-only function).
      eps: finite-difference step along a unit-variance random direction.
      rtol, atol: tolerance ``atol + rtol * scale`` per comparison.
      seed: seeds the random directions.
      raise_on_error: raise :class:`GradCheckError` on a mismatch (else only report).

    At a kink (``relu`` or ``abs`` at 0) the one-sided differences disagree and AD's
    value is one subgradient among many: those comparisons are skipped, and the report
    (``report.notes``, and its table) says so.

    Returns:
      A :class:`GradCheckReport`; ``str(report)`` is a table of every comparison.

    >>> import jax.numpy as jnp
    >>> report = check_grad(lambda x: jnp.sin(x) * x, jnp.array([0.5, 1.5]), order=2)
    >>> report.passed, len(report.comparisons)
    (True, 9)
    """
    _args.check_callable(func, "check_grad")
    where = f"check_grad({_args.func_name(func)}, *args)"
    args, modes = _check_inputs(func, args, kwargs, order, modes, eps, rtol, atol, where)
    positions = _args.differentiable_positions(
        args, tuple(range(len(args))) if argnums is None else argnums, where)
    with jax.enable_x64(True):
        flat_func, x = _flat_problem(func, args, positions, where)
        k1, k2 = jax.random.split(jax.random.key(seed))
        comparisons, u, v = _first_order(flat_func, x, k1, modes, eps, rtol, atol, "d1", where)
        if order == 2:
            if "fwd" in modes:
                d_fwd = lambda y: jvp(flat_func, (y,), (u,))[1]
                comparisons += _first_order(d_fwd, x, k2, modes, eps, rtol, atol, "d2 of fwd", where)[0]
            if "rev" in modes:
                d_rev = lambda y: vjp(flat_func, y)[1](v)[0]
                comparisons += _first_order(d_rev, x, k2, modes, eps, rtol, atol, "d2 of rev", where)[0]
    report = GradCheckReport(tuple(comparisons))
    if raise_on_error and not report.passed:
        _raise_mismatch(report, where)
    return report


def _check_inputs(func: Callable, args: tuple, kwargs: dict, order: Any, modes: Any, eps: Any, rtol: Any,
                  atol: Any, where: str) -> tuple[tuple, tuple]:
    """``check_grad``'s checks of its arguments: the point ``args`` and the ``modes``."""
    if "args" in kwargs:
        if args:
            raise TypeError(f"{where}: pass the point either positionally, check_grad(f, x, y), or as "
                            "args=(x, y), not both.")
        args = tuple(kwargs.pop("args"))
    if kwargs:
        raise TypeError(f"{where}: unexpected keyword argument(s) {sorted(kwargs)}.")
    _check_settings(eps, rtol, atol, where)
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(args)):
        raise TypeError(f"{where}: check_grad compares numbers on the host, so it cannot run under "
                        "jax.jit, vmap or grad (its arguments here are tracers); call it outside "
                        "any transformation, on concrete arrays.")
    _check_call_form(func, args, where)
    if isinstance(order, bool) or order not in (1, 2):
        raise ValueError(f"{where}: order must be 1 or 2, got {order!r}.")
    modes = tuple(modes)
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"{where}: modes must be a non-empty subset of {MODES}, got {modes!r}.")
    if not args:
        raise ValueError(f"{where}: give the point to check at, e.g. check_grad(f, x).")
    return args, modes


def _to64(a: Any) -> jax.Array:
    a = jnp.asarray(a)
    return a.astype(jnp.complex128 if jnp.iscomplexobj(a) else jnp.float64)


def _inexact_to64(a: Any) -> Any:
    # every float argument, perturbed or not, so dtypes still match inside func
    dtype = _args.leaf_dtype(a)
    return _to64(a) if dtype is not None and jnp.issubdtype(dtype, jnp.inexact) else a


def _flat_problem(func: Callable, args: tuple, positions: tuple, where: str) -> tuple[Callable, jax.Array]:
    """``func`` of the ``positions`` arguments as a function of one flat real float64 vector
    to one flat real vector, and the point ``x`` (under ``jax.enable_x64``)."""
    args = jax.tree_util.tree_map(_inexact_to64, tuple(args))
    diff = tuple(args[p] for p in positions)
    # complex leaves are checked as (real, imaginary) pairs: a real vector in, a real
    # vector out, where <u, v> is the real inner product the check needs
    real_diff = jax.tree_util.tree_map(_split_complex, diff)
    x, unravel = ravel_pytree(real_diff)

    def flat_func(x_flat):
        point = jax.tree_util.tree_map(_join_complex, unravel(x_flat), diff)
        out = _args.closed_over(func, args, positions)(point)
        if not jax.tree_util.tree_leaves(out):
            raise ValueError(f"{where}: expected func to return at least one float array, got "
                             f"{out!r}; there is no derivative to check.")
        _args.check_inexact_output(out, where)
        out = jax.tree_util.tree_map(lambda o: _split_complex(_to64(o)), out)
        return ravel_pytree(out)[0]

    return flat_func, x


def _raise_mismatch(report: GradCheckReport, where: str) -> None:
    w = report.worst
    if not (math.isfinite(w.got) and math.isfinite(w.expected)):
        bad = [name for name, val in ((f"{w.method}", w.got), (w.reference, w.expected)) if not math.isfinite(val)]
        raise GradCheckError(
            f"{where}: {w.derivative} is not finite at this point: {w.method} gives {w.got:.10g}, "
            f"{w.reference} give {w.expected:.10g} (non-finite: {', '.join(bad)}). The function "
            "or its derivative is singular here (sqrt or log at 0?); check at another point."
            f"\n{report}", report)
    raise GradCheckError(
        f"{where}: derivatives disagree: {w.derivative} by {w.method} = {w.got:.10g} but "
        f"{w.reference} give {w.expected:.10g} (error {w.error:.3g} > tolerance "
        f"{w.tolerance:.3g}).\n{report}", report)


def _split_complex(a: Any) -> Any:
    """A complex array as a real one with a trailing (real, imaginary) axis."""
    a = jnp.asarray(a)
    return jnp.stack([a.real, a.imag], axis=-1) if jnp.iscomplexobj(a) else a


def _join_complex(a: Any, like: Any) -> Any:
    return jax.lax.complex(a[..., 0], a[..., 1]) if jnp.iscomplexobj(like) else a


def _check_settings(eps: Any, rtol: Any, atol: Any, where: str) -> None:
    for name, value, positive in (("eps", eps, True), ("rtol", rtol, False), ("atol", atol, False)):
        ok = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
              and (value > 0 if positive else value >= 0))
        if not ok:
            need = "a positive finite float" if positive else "a non-negative finite float"
            raise ValueError(f"{where}: {name} must be {need}, got {value!r}"
                             + ("; the finite-difference step cannot be 0, try eps=1e-3." if name == "eps" else "."))


def _check_call_form(func: Callable, args: tuple, where: str) -> None:
    """``check_grad(f, (W, b))`` (check_grads' tuple form) for ``f(W, b)``: say how to call."""
    if len(args) != 1 or not isinstance(args[0], (tuple, list)):
        return
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*args)
    except TypeError:
        try:
            sig.bind(*args[0])
        except TypeError:
            return
        raise TypeError(
            f"{where}: func takes {len(args[0])} arguments but got one {type(args[0]).__name__}; "
            "check_grad takes func's arguments one by one: check_grad(f, W, b), or as "
            "check_grad(f, args=(W, b)) (the form of jax.test_util.check_grads)."
        ) from None
