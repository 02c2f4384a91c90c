"""Higher-order derivatives: ``hessian`` (all four nestings), ``hvp``, ``vhp``,
``hessian_diag``. Taylor-mode ``derivative``/``taylor`` live in :mod:`.taylor`.

The Hessian of a scalar ``f`` is the Jacobian of its gradient, ``H = J(∇f)``, so it is
one Jacobian transform nested in another. Which one goes outside decides the cost:

- ``fwd-over-rev`` (torch's and JAX's default): ``jacfwd(jacrev(f))``, one reverse
  pass for the gradient, then n forward passes through it (n Hessian-vector products).
- ``rev-over-rev``: ``jacrev(jacrev(f))``, the nesting that needs reverse rules only:
  it works when a piece of ``f`` is a ``jax.custom_vjp`` whose backward pass itself
  cannot run forward mode. (Forward-over-reverse handles a plain ``custom_vjp``: the
  outer JVP runs through the rule's forward and backward functions.)
- ``rev-over-fwd``: ``jacrev(jacfwd(f))``; ``fwd-over-fwd``: ``jacfwd(jacfwd(f))``.

``chunk_size`` bounds the outer Jacobian's passes, as in :func:`jacrev`.

A Hessian-vector product ``H v`` never needs ``H``: it is the JVP of the gradient,
``H v = d/dt ∇f(x + t v)|_{t=0}`` (forward-over-reverse, about 4-5 evaluations of ``f``
whatever n). ``v^T H`` is the VJP of the gradient (reverse-over-reverse).
``hessian_diag`` gets ``diag(H)`` from n HVPs with basis vectors, ``chunk_size`` at a
time, or estimates it as ``E[z ⊙ H z]`` over Rademacher ``z`` (Hutchinson).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from . import _args, _mesh
from ._mode import forward_mode
from ._jacobians import pure_mode

__all__ = ["hessian", "hvp", "vhp", "hessian_diag", "resolve_hessian_mode", "NestingFallbackWarning"]

HESSIAN_MODES = ("auto", "fwd-over-rev", "rev-over-rev", "rev-over-fwd", "fwd-over-fwd")


def _nesting(func: Callable, mode: str, argnums: Any, chunk_size: int | None,
             holomorphic: bool = False) -> Callable:
    """The nesting ``mode`` (e.g. ``"fwd-over-rev"``) of two Jacobian transforms; their
    messages name ``hessian``."""
    outer_name, _, inner_name = mode.split("-")
    inner = pure_mode(inner_name, func, argnums, transform="hessian", holomorphic=holomorphic)
    return pure_mode(outer_name, inner, argnums, transform="hessian", chunk_size=chunk_size,
                     holomorphic=holomorphic)


def resolve_hessian_mode(func: Callable, mode: str = "auto", args: tuple | None = None,
                         kwargs: dict | None = None, argnums: _args.Argnums = 0) -> str:
    """The nesting ``hessian(func, mode=mode)`` runs on ``args``.

    An explicit mode is returned as is. ``"auto"`` asks the planner
    (:func:`functorch_lite._planner.api.plan_hessian`): it traces the inner derivative
    (``jacrev`` and ``jacfwd`` of ``func``; one that does not trace rules out its two
    nestings), prices the outer Jacobian over each inner program by the static model
    (forward-over-forward and reverse-over-forward carry ``n`` tangents inside, so they
    only win for tiny ``n``), probes by tracing an outer mode the inner program makes
    doubtful (a ``custom_vjp`` for forward, a ``while_loop`` for reverse), and takes the
    cheapest nesting that runs. No clock is read. The plan is cached per function and
    signature, Python-scalar arguments by value (``loop=True`` and ``loop=False`` are
    planned apart). Without ``args``, ``"auto"`` means forward-over-reverse.

    >>> import jax.numpy as jnp
    >>> resolve_hessian_mode(jnp.sum, "auto", (jnp.ones(3, jnp.float32),))
    'fwd-over-rev'
    """
    if mode != "auto":
        return mode
    if args is None:
        return "fwd-over-rev"
    from ._planner import api

    return api.plan_hessian(func, tuple(args), kwargs or {}, argnums).mode


def hessian(func: Callable, argnums: _args.Argnums = 0, *, mode: str = "auto",
            chunk_size: int | None = None, holomorphic: bool = False, sparse: bool = False,
            sparsity: Any = None, output: str = "bcoo", check: bool = False, mesh: Any = None,
            mesh_axis: str | None = None, gather: bool = False) -> Callable:
    """Hessian of a scalar function, as ``torch.func.hessian``: ``H[i, j] = d²f/dx_i dx_j``.

    With tuple ``argnums`` the result is nested tuples, ``H[a][b] = d²f/dx_a dx_b``.
    ``mode`` picks the nesting (see the module docstring); ``"auto"`` takes the cheapest
    that ``func`` supports (:func:`resolve_hessian_mode`). ``chunk_size`` runs the outer
    Jacobian's passes ``chunk_size`` at a time, which bounds memory (torch.func's
    ``hessian`` has no such argument). ``holomorphic=True`` is JAX's: the complex
    Hessian ``f''(z)`` of a holomorphic ``f`` (both nested Jacobians get it).
    ``sparse=True`` (or ``sparsity=``): a star-colored sparse Hessian, one HVP per color,
    as a BCOO (``output="dense"``: dense); see docs/sparse.md. ``mesh=`` splits the outer Jacobian's passes over
    a device mesh, as :func:`functorch_lite.jacrev`.

    >>> import jax.numpy as jnp
    >>> hessian(lambda x: (x ** 3).sum())(jnp.array([1.0, 2.0], jnp.float32))     # diag(6x)
    Array([[ 6.,  0.],
           [ 0., 12.]], dtype=float32)
    """
    if sparse or sparsity is not None or output != "bcoo" or check:
        from . import _sparse
        return _sparse.hessian(func, argnums, mode=mode, chunk_size=chunk_size, sparsity=sparsity,
                               output=output, check=check, sparse=sparse or sparsity is not None,
                               mesh=mesh, mesh_axis=mesh_axis, gather=gather)
    _args.check_callable(func, "hessian")
    _args.check_argnums(argnums, "hessian")
    _args.check_choice(mode, HESSIAN_MODES, "hessian", "mode")
    chunk_size = _args.check_chunk_size(chunk_size, "hessian")
    _args.check_bool(holomorphic, "hessian", "holomorphic")
    mesh_axis = _mesh.check(mesh, mesh_axis, gather, "hessian")
    name = _args.func_name(func)

    def hess_f(*args, **kwargs):
        if mesh is not None:
            return _mesh.hessian(func, args, kwargs, argnums=argnums, mode=mode, chunk_size=chunk_size,
                                 mesh=mesh, mesh_axis=mesh_axis, gather=gather)
        where = f"hessian({name})(*args)"
        _args.differentiable_positions(args, argnums, where)
        if holomorphic:
            # The auto probe runs real-valued nestings; a holomorphic Hessian takes the
            # default nesting unless a mode is given.
            chosen = "fwd-over-rev" if mode == "auto" else mode
        else:
            chosen = resolve_hessian_mode(func, mode, args, kwargs, argnums)
        return _nesting(func, chosen, argnums, chunk_size, holomorphic)(*args, **kwargs)

    return _args.named(hess_f, func, f"hessian({name})",
                       f"Hessian of {name} w.r.t. argnums={argnums} ({mode}).")


# ----------------------------------------------------------------------------- hvp / vhp


def _scalar_grad(func: Callable, nargs: int, where: str) -> Callable:
    """``(*primals) -> gradient``: shaped like the one primal, or a tuple with one entry
    per primal when there are several (``grad`` with argnums ``0`` or ``(0, 1, ...)``);
    checks the scalar output."""
    def scalar_func(*a):
        out = func(*a)
        _args.check_scalar(out, where, "jvp/vjp of jacrev")
        return out

    return jax.grad(scalar_func, argnums=_args.all_argnums(nargs))


class NestingFallbackWarning(UserWarning):
    """``hvp``/``hessian_diag`` ran reverse-over-reverse because forward-over-reverse
    cannot trace the function (a ``custom_vjp`` whose backward rule has no forward
    rule); the warning says why. Silence it with ``warnings.simplefilter("ignore",
    NestingFallbackWarning)`` once the fallback is expected.

    >>> issubclass(NestingFallbackWarning, UserWarning)
    True
    """


def _forward_unsupported(err: BaseException) -> bool:
    """True for JAX's refusal to run forward mode through a ``custom_vjp``."""
    return isinstance(err, (TypeError, NotImplementedError)) and (
        "forward-mode" in str(err) or "custom_vjp" in str(err))


def _fall_back(transform: str, err: BaseException) -> None:
    warnings.warn(
        f"{transform}: forward-over-reverse cannot run this function "
        f"({_args.first_line(err)}); falling back to reverse-over-reverse (the VJP of the "
        "gradient, v^T H = H v for a symmetric Hessian).",
        NestingFallbackWarning, stacklevel=3,
    )


def _neither(transform: str, first: BaseException, second: BaseException) -> ValueError:
    return ValueError(
        f"{transform}: neither forward-over-reverse ({_args.first_line(first)}) nor "
        f"reverse-over-reverse ({_args.first_line(second)}) can differentiate this "
        "function twice. If only one rule is missing, call vhp directly or use "
        "hessian(f, mode=\"rev-over-rev\"); otherwise give the custom rule a forward "
        "(custom_jvp) form."
    )


def hvp(func: Callable, primals: Any, tangents: Any) -> tuple[Any, Any]:
    """Gradient and Hessian-vector product, by forward-over-reverse: ``(∇f(x), H v)``.

    .. math:: H v = \\frac{d}{dt} \\nabla f(x + t v) \\Big|_{t=0}

    is one JVP of the gradient, so ``H`` (n x n) is never formed; it costs a small
    constant times one evaluation of ``f``. As ``jvp``, ``primals`` and ``tangents`` are
    tuples with one entry per positional argument of ``func`` (which must return a
    scalar); all arguments are differentiated. This is ``jvp(grad(func), primals,
    tangents)``, torch.func's recipe, so both results are shaped like the gradient: like
    ``x`` for one primal, a tuple with one entry per primal for several (the full
    product: ``Hv[a] = Σ_b H[a][b] v[b]``). torch.autograd.functional.hvp returns
    ``(f(x), H v)``; here the gradient, which Newton-type methods need anyway, comes
    for free. Works under ``jit``, and ``vmap`` over a batch of tangents. When forward
    mode cannot run ``func`` (a ``custom_vjp`` whose backward rule has only a reverse
    rule, e.g. a fixed point), it computes ``v^T H`` by reverse-over-reverse instead,
    with a :class:`NestingFallbackWarning`. Dicts keep the primals' key order.

    >>> import jax.numpy as jnp
    >>> f = lambda x: (x ** 3).sum()                 # H = diag(6x)
    >>> x, v = jnp.array([1.0, 2.0], jnp.float32), jnp.ones(2, jnp.float32)
    >>> g, hv = hvp(f, (x,), (v,))
    >>> g, hv
    (Array([ 3., 12.], dtype=float32), Array([ 6., 12.], dtype=float32))
    """
    _args.check_callable(func, "hvp")
    where = f"hvp({_args.func_name(func)}, primals, tangents)"
    primals, tangents = _args.check_primals_tangents(primals, tangents, where)
    grad_f = _scalar_grad(_args.keep_order(func, primals), len(primals), where)
    try:
        with forward_mode():
            grads, hv = jax.jvp(grad_f, primals, tangents)
    except (TypeError, NotImplementedError) as err:
        if not _forward_unsupported(err):
            raise
        # A custom_vjp whose backward pass has no forward rule: reverse-over-reverse
        # needs reverse rules only (the Hessian is symmetric, so v^T H = H v).
        try:
            grads, hv = _vhp(grad_f, primals, tangents)
        except (TypeError, ValueError, NotImplementedError) as err2:
            raise _neither("hvp", err, err2) from None
        _fall_back("hvp", err)
    order = _args.order_of(primals if len(primals) > 1 else primals[0])
    return _args.reorder(order, grads), _args.reorder(order, hv)


def vhp(func: Callable, primals: Any, tangents: Any) -> tuple[Any, Any]:
    """Gradient and vector-Hessian product, by reverse-over-reverse: ``(∇f(x), v^T H)``.

    ``v^T H`` is one VJP of the gradient with cotangent ``v``; it equals ``H v`` for a
    symmetric (twice continuously differentiable) ``f``, and needs reverse rules only,
    so it works where ``hvp`` cannot (a ``custom_vjp`` without a forward rule in its
    backward pass). Arguments and results as :func:`hvp`.

    >>> import jax.numpy as jnp
    >>> x, v = jnp.array([1.0, 2.0], jnp.float32), jnp.ones(2, jnp.float32)
    >>> g, vh = vhp(lambda x: (x ** 3).sum(), (x,), (v,))
    >>> vh
    Array([ 6., 12.], dtype=float32)
    """
    _args.check_callable(func, "vhp")
    where = f"vhp({_args.func_name(func)}, primals, tangents)"
    primals, tangents = _args.check_primals_tangents(primals, tangents, where)
    grad_f = _scalar_grad(_args.keep_order(func, primals), len(primals), where)
    grads, vh = _vhp(grad_f, primals, tangents)
    order = _args.order_of(primals if len(primals) > 1 else primals[0])
    return _args.reorder(order, grads), _args.reorder(order, vh)


def _vhp(grad_f: Callable, primals: tuple, tangents: tuple) -> tuple[Any, Any]:
    grads, pullback = jax.vjp(grad_f, *primals)
    vh = pullback(tangents[0] if len(primals) == 1 else tangents)
    return grads, (vh[0] if len(primals) == 1 else vh)


# ----------------------------------------------------------------------------- hessian_diag

HESSIAN_DIAG_METHODS = ("exact", "hutchinson")


def hessian_diag(func: Callable, argnums: _args.Argnums = 0, *, method: str = "exact",
                 key: Any = None, num_samples: int = 100,
                 chunk_size: int | None = None, mesh: Any = None, mesh_axis: str | None = None,
                 gather: bool = False) -> Callable:
    """Diagonal of the Hessian of a scalar function, shaped like the input.

    - ``method="exact"``: ``H[i, i] = e_i^T H e_i`` from n Hessian-vector products
      (the gradient is linearized once, then ``chunk_size`` HVPs run at a time, so
      temp memory is about ``chunk_size * n``, never the n x n Hessian unless
      ``chunk_size`` is None, which runs all n at once).
    - ``method="hutchinson"``: the unbiased estimate
      ``diag(H) ≈ (1/S) Σ_s z_s ⊙ H z_s`` over ``S = num_samples`` Rademacher vectors
      drawn from ``key`` (required). Each entry's variance is
      ``Σ_{j≠i} H[i, j]² / S``: exact for a diagonal ``H``.

    With tuple ``argnums`` a tuple of diagonals (the diagonal of each block ``H[a][a]``).
    Dicts keep the inputs' key order. A function forward mode cannot run (a
    ``custom_vjp`` with only a reverse rule in its backward pass) is done
    reverse-over-reverse, with a :class:`NestingFallbackWarning`.
    ``mesh=`` splits the HVPs (basis vectors or probes) over a device mesh, as
    :func:`functorch_lite.jacrev`.

    >>> import jax, jax.numpy as jnp
    >>> f = lambda x: (x ** 3).sum() + x[0] * x[1]
    >>> x = jnp.array([1.0, 2.0], jnp.float32)
    >>> hessian_diag(f)(x)
    Array([ 6., 12.], dtype=float32)
    >>> hessian_diag(lambda x: (x ** 3).sum(), method="hutchinson", key=jax.random.key(0),
    ...              num_samples=4)(x)    # diagonal H: exact
    Array([ 6., 12.], dtype=float32)
    """
    transform = "hessian_diag"
    _args.check_callable(func, transform)
    _, as_tuple = _args.check_argnums(argnums, transform)
    chunk_size, num_samples = _hessian_diag_options(method, key, num_samples, chunk_size, transform)
    mesh_axis = _mesh.check(mesh, mesh_axis, gather, transform)
    name = _args.func_name(func)

    def diag_f(*args, **kwargs):
        if mesh is not None:
            return _mesh.hessian_diag(func, args, kwargs, argnums=argnums, method=method, key=key,
                                      num_samples=num_samples, chunk_size=chunk_size, mesh=mesh,
                                      mesh_axis=mesh_axis, gather=gather)
        return _hessian_diag_at(func, args, kwargs, argnums, as_tuple, f"{transform}({name})(*args)", method=method,
                                key=key, num_samples=num_samples, chunk_size=chunk_size)

    return _args.named(diag_f, func, f"hessian_diag({name})",
                       f"Diagonal of the Hessian of {name} w.r.t. argnums={argnums} ({method}).")


def _hessian_diag_options(method: Any, key: Any, num_samples: Any, chunk_size: Any,
                          transform: str) -> tuple[int | None, int]:
    """``hessian_diag``'s checks of ``method``, ``key``, ``num_samples`` and ``chunk_size``."""
    _args.check_choice(method, HESSIAN_DIAG_METHODS, transform, "method")
    chunk_size = _args.check_chunk_size(chunk_size, transform)
    num_samples = _args.check_positive_int(
        num_samples, transform, "num_samples",
        hint="; the estimate's error falls like 1/sqrt(num_samples)")
    if method == "hutchinson":
        if key is None:
            raise ValueError(
                f"{transform}: method='hutchinson' draws random probe vectors and needs a "
                "PRNG key; pass key=jax.random.key(0) (or any key)."
            )
        _args.check_key(key, transform)
    elif key is not None:
        raise ValueError(
            f"{transform}: key is only used by method='hutchinson'; method='exact' is "
            "deterministic. Drop key, or pass method='hutchinson'."
        )
    return chunk_size, num_samples


def _hessian_diag_at(func: Callable, args: tuple, kwargs: dict, argnums: Any, as_tuple: bool, where: str,
                     **options: Any) -> Any:
    """``hessian_diag(func, argnums, **options)(*args, **kwargs)`` without a mesh."""
    positions = _args.differentiable_positions(args, argnums, where)
    diff = tuple(args[p] for p in positions)
    flat, unravel = ravel_pytree(diff)
    order = _args.order_of(diff)

    call = _args.closed_over(func, args, positions, kwargs, order)  # caller's dict order

    def g(v):
        out = call(unravel(v))
        _args.check_scalar(out, where, "jacrev")
        return out

    if flat.shape[0] == 0:
        g(flat)  # nothing to differentiate: still run f once for its checks
        diag = flat
    else:
        values = _hessian_diag_values(g, flat, lambda hv, n, dtype: _hessian_diag_run(hv, n, dtype, **options),
                                      "hessian_diag")
        diag = values if options["method"] == "exact" else values.mean(axis=0)
    out = _args.reorder(order, unravel(diag))
    return out if as_tuple else out[0]


def _hessian_diag_values(g: Callable, flat: jax.Array, run: Callable, transform: str) -> jax.Array:
    """``run(hv, n, dtype)`` with ``hv(v) = H v`` of the scalar ``g`` at ``flat``: the
    gradient linearized once (forward-over-reverse), or reverse-over-reverse with a warning
    where forward mode cannot run."""
    n = flat.shape[0]
    try:
        with forward_mode():
            _, hv = jax.linearize(jax.grad(g), flat)
            return run(hv, n, flat.dtype)
    except (TypeError, NotImplementedError) as err:
        if not _forward_unsupported(err):
            raise
        try:
            _, pullback = jax.vjp(jax.grad(g), flat)
            values = run(lambda v: pullback(v)[0], n, flat.dtype)
        except (TypeError, ValueError, NotImplementedError) as err2:
            raise _neither(transform, err, err2) from None
        _fall_back(transform, err)
        return values


def _hessian_diag_run(hv: Callable, n: int, dtype: Any, *, method: str, key: Any, num_samples: int,
                      chunk_size: int | None) -> jax.Array:
    """``diag(H)`` entries (exact) or ``z ⊙ H z`` samples from ``hv(v) = H v``."""
    if method == "exact":
        def one(i):
            return hv((jnp.arange(n) == i).astype(dtype))[i]
        items = jnp.arange(n)
    else:
        def one(i):
            z = jax.random.rademacher(jax.random.fold_in(key, i), (n,), dtype=dtype)
            return z * hv(z)
        items = jnp.arange(num_samples)
    if chunk_size is None:
        return jax.vmap(one)(items)
    return jax.lax.map(one, items, batch_size=chunk_size)
