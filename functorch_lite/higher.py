"""Higher-order derivatives: ``hessian`` (all four nestings).

The Hessian of a scalar ``f`` is the Jacobian of its gradient, ``H = J(∇f)``, so it is
one Jacobian transform nested in another. Which one goes outside decides the cost:

- ``fwd-over-rev`` (torch's and JAX's default): ``jacfwd(jacrev(f))``, one reverse
  pass for the gradient, then n forward passes through it (n Hessian-vector products).
- ``rev-over-rev``: ``jacrev(jacrev(f))``, the only nesting that works when a piece of
  ``f`` has a reverse rule only.
- ``rev-over-fwd``: ``jacrev(jacfwd(f))``; ``fwd-over-fwd``: ``jacfwd(jacfwd(f))``.

``chunk_size`` bounds the outer Jacobian's passes, as in :func:`jacrev`.
"""

from __future__ import annotations

from collections.abc import Callable

from . import _args
from .jacobians import jacfwd, jacrev

__all__ = ["hessian"]

HESSIAN_MODES = ("auto", "fwd-over-rev", "rev-over-rev", "rev-over-fwd", "fwd-over-fwd")


def resolve_hessian_mode(func: Callable, mode: str) -> str:
    """The nesting ``mode="auto"`` runs: forward-over-reverse, the cheapest for a
    scalar function (one gradient pass, then n HVPs in forward mode)."""
    return "fwd-over-rev" if mode == "auto" else mode


def hessian(func: Callable, argnums: _args.Argnums = 0, *, mode: str = "auto",
            chunk_size: int | None = None) -> Callable:
    """Hessian of a scalar function, as ``torch.func.hessian``: ``H[i, j] = d²f/dx_i dx_j``.

    With tuple ``argnums`` the result is nested tuples, ``H[a][b] = d²f/dx_a dx_b``.

    >>> import jax.numpy as jnp
    >>> hessian(lambda x: (x ** 3).sum())(jnp.array([1.0, 2.0]))     # diag(6x)
    Array([[ 6.,  0.],
           [ 0., 12.]], dtype=float32)
    """
    _args.check_callable(func, "hessian")
    _args.check_argnums(argnums, "hessian")
    _args.check_choice(mode, HESSIAN_MODES, "hessian", "mode")
    chunk_size = _args.check_chunk_size(chunk_size, "hessian")
    outer_name, _, inner_name = resolve_hessian_mode(func, mode).split("-")
    inner = {"fwd": jacfwd, "rev": jacrev}[inner_name](func, argnums)
    outer = {"fwd": jacfwd, "rev": jacrev}[outer_name](inner, argnums, chunk_size=chunk_size)
    name = _args.func_name(func)
    outer.__name__ = f"hessian({name})"
    outer.__doc__ = f"Hessian of {name} w.r.t. argnums={argnums} ({mode})."
    return outer
