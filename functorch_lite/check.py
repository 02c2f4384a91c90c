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
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from . import _args
from .transforms import jvp, vjp

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

    @property
    def error(self) -> float:
        return abs(self.got - self.expected)

    @property
    def passed(self) -> bool:
        return bool(self.error <= self.tolerance)


@dataclasses.dataclass(frozen=True)
class GradCheckReport:
    """All comparisons made by :func:`check_grad`; ``str()`` is a table."""

    comparisons: tuple[Comparison, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.comparisons)

    @property
    def max_error(self) -> float:
        return max((c.error for c in self.comparisons), default=0.0)

    @property
    def worst(self) -> Comparison | None:
        return max(self.comparisons, key=lambda c: c.error / c.tolerance, default=None)

    def __str__(self) -> str:
        lines = [f"{'derivative':<16} {'method':<8} {'against':<20} {'error':>10} {'tolerance':>10}  ok"]
        for c in self.comparisons:
            lines.append(f"{c.derivative:<16} {c.method:<8} {c.reference:<20} {c.error:>10.2e} "
                         f"{c.tolerance:>10.2e}  {'yes' if c.passed else 'NO'}")
        return "\n".join(lines)


class GradCheckError(AssertionError):
    """Raised by :func:`check_grad` when a derivative disagrees; ``.report`` has all."""

    def __init__(self, message: str, report: GradCheckReport):
        super().__init__(message)
        self.report = report


def _richardson(h_fn: Callable, x: jax.Array, u: jax.Array, eps: float) -> jax.Array:
    def central(step):
        return (h_fn(x + step * u) - h_fn(x - step * u)) / (2 * step)

    return (4 * central(eps / 2) - central(eps)) / 3


def _first_order(h_fn, x, key, modes, eps, rtol, atol, label) -> tuple[list[Comparison], jax.Array, jax.Array]:
    out = h_fn(x)
    ku, kv = jax.random.split(key)
    u = jax.random.normal(ku, x.shape, x.dtype)
    v = jax.random.normal(kv, out.shape, out.dtype)
    fd = _richardson(h_fn, x, u, eps)
    fd_dot = float(jnp.vdot(v, fd))
    results, jvp_dot = [], None

    def tol(expected, got):
        return atol + rtol * max(abs(expected), abs(got), float(jnp.linalg.norm(v) * jnp.linalg.norm(fd)))

    if "fwd" in modes:
        _, ju = jvp(h_fn, (x,), (u,))
        jvp_dot = float(jnp.vdot(v, ju))
        results.append(Comparison(label, "fwd", "finite differences", jvp_dot, fd_dot, tol(fd_dot, jvp_dot)))
    if "rev" in modes:
        _, pullback = vjp(h_fn, x)
        (jtv,) = pullback(v)
        vjp_dot = float(jnp.vdot(jtv, u))
        results.append(Comparison(label, "rev", "finite differences", vjp_dot, fd_dot, tol(fd_dot, vjp_dot)))
        if jvp_dot is not None:
            results.append(Comparison(label, "rev", "fwd", vjp_dot, jvp_dot,
                                      1e-3 * tol(jvp_dot, vjp_dot)))
    return results, u, v


def check_grad(func: Callable, *args: Any, argnums: _args.Argnums | None = None, order: int = 1,
               modes: Sequence[str] = MODES, eps: float = 1e-3, rtol: float = 1e-6,
               atol: float = 1e-8, seed: int = 0, raise_on_error: bool = True) -> GradCheckReport:
    """Compare forward mode, reverse mode and finite differences of ``func`` at ``args``.

    Args:
      func: any function of arrays/pytrees returning arrays/pytrees of floats.
      args: where to check; cast to float64 (complex128) for the check.
      argnums: which positional arguments to perturb (default: all).
      order: 1 checks first derivatives; 2 also checks the derivatives of those.
      modes: which AD modes to check (``("rev",)`` for a reverse-only function).
      eps: finite-difference step along a unit-variance random direction.
      rtol, atol: tolerance ``atol + rtol * scale`` per comparison.
      seed: seeds the random directions.
      raise_on_error: raise :class:`GradCheckError` on a mismatch (else only report).

    Returns:
      A :class:`GradCheckReport`; ``str(report)`` is a table of every comparison.

    >>> import jax.numpy as jnp
    >>> report = check_grad(lambda x: jnp.sin(x) * x, jnp.array([0.5, 1.5]), order=2)
    >>> report.passed, len(report.comparisons)
    (True, 9)
    """
    _args.check_callable(func, "check_grad")
    where = f"check_grad({_args.func_name(func)}, *args)"
    if isinstance(order, bool) or order not in (1, 2):
        raise ValueError(f"{where}: order must be 1 or 2, got {order!r}.")
    modes = tuple(modes)
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"{where}: modes must be a non-empty subset of {MODES}, got {modes!r}.")
    if not args:
        raise ValueError(f"{where}: give the point to check at, e.g. check_grad(f, x).")
    positions = _args.differentiable_positions(
        args, tuple(range(len(args))) if argnums is None else argnums, where)

    with jax.enable_x64(True):
        def to64(a):
            a = jnp.asarray(a)
            return a.astype(jnp.complex128 if jnp.iscomplexobj(a) else jnp.float64)

        def inexact_to64(a):
            # every float argument, perturbed or not, so dtypes still match inside func
            dtype = _args.leaf_dtype(a)
            return to64(a) if dtype is not None and jnp.issubdtype(dtype, jnp.inexact) else a

        args = jax.tree_util.tree_map(inexact_to64, tuple(args))
        diff = tuple(args[p] for p in positions)
        x, unravel = ravel_pytree(diff)

        def flat_func(x_flat):
            out = func(*_args.replace_args(args, positions, unravel(x_flat)))
            _args.check_inexact_output(out, where)
            return ravel_pytree(jax.tree_util.tree_map(to64, out))[0]

        key = jax.random.key(seed)
        k1, k2 = jax.random.split(key)
        comparisons, u, v = _first_order(flat_func, x, k1, modes, eps, rtol, atol, "d1")
        if order == 2:
            if "fwd" in modes:
                d_fwd = lambda y: jvp(flat_func, (y,), (u,))[1]
                comparisons += _first_order(d_fwd, x, k2, modes, eps, rtol, atol, "d2 of fwd")[0]
            if "rev" in modes:
                d_rev = lambda y: vjp(flat_func, y)[1](v)[0]
                comparisons += _first_order(d_rev, x, k2, modes, eps, rtol, atol, "d2 of rev")[0]

    report = GradCheckReport(tuple(comparisons))
    if raise_on_error and not report.passed:
        w = report.worst
        raise GradCheckError(
            f"{where}: derivatives disagree: {w.derivative} by {w.method} = {w.got:.10g} but "
            f"{w.reference} give {w.expected:.10g} (error {w.error:.3g} > tolerance "
            f"{w.tolerance:.3g}).\n{report}", report)
    return report
