"""torch.func's core transforms on JAX: grad, grad_and_value, value_and_grad, vjp, jvp,
linearize and vmap.

Each is a thin, checked layer over the JAX primitive of the same job, so under
``jax.jit`` it compiles to the same program as raw JAX (docs/benchmarks.md measures it).
What this layer adds is torch.func's calling convention (``argnums`` rules, ``has_aux``,
keyword arguments passed through undifferentiated, ``vjp_fn`` returning one cotangent
per primal, ``grad_and_value``'s ``(grad, value)`` order), ``chunk_size`` for ``vmap``,
and messages that name the transform and the argument.

Reverse mode (``grad``, ``vjp``) computes ``v^T J`` in one backward pass; PyTorch's
``y.backward(v)`` is exactly this vector-Jacobian product, and a gradient is the VJP of
a scalar with ``v = 1``. Forward mode (``jvp``) computes ``J u`` alongside the forward
pass.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _args, _chunking
from ._mode import forward_mode

__all__ = ["grad", "grad_and_value", "value_and_grad", "vjp", "jvp", "linearize", "vmap"]


def _named(wrapper: Callable, func: Callable, transform: str, doc: str) -> Callable:
    wrapper.__name__ = f"{transform}({_args.func_name(func)})"
    wrapper.__qualname__ = wrapper.__name__
    wrapper.__doc__ = doc
    wrapper.__wrapped__ = func
    return wrapper


def _value_and_grad(func: Callable, argnums: Any, has_aux: bool, transform: str) -> Callable:
    """Shared body of grad / grad_and_value / value_and_grad: returns
    ``f(*args, **kwargs) -> (value, grads, aux)``."""
    _args.check_callable(func, transform)
    _, as_tuple = _args.check_argnums(argnums, transform)
    _args.check_bool(has_aux, transform, "has_aux")
    name = _args.func_name(func)

    def run(*args, **kwargs):
        where = f"{transform}({name})(*args)"
        positions = _args.differentiable_positions(args, argnums, where)

        scalar_func = _args.checked_output(lambda *a: func(*a, **kwargs), has_aux, where,
                                           check=_args.check_scalar)
        (value, aux), grads = jax.value_and_grad(scalar_func, positions, has_aux=True)(*args)
        return value, (grads if as_tuple else grads[0]), aux

    return run


def grad(func: Callable, argnums: _args.Argnums = 0, has_aux: bool = False) -> Callable:
    """Gradient of a scalar function, as ``torch.func.grad``.

    For ``f: R^n -> R`` this is ``∇f(x) = (df/dx)^T``, one reverse pass (a VJP with
    cotangent 1), shaped like the input.

    Args:
      func: returns a scalar (or ``(scalar, aux)`` with ``has_aux=True``).
      argnums: which positional argument(s) to differentiate; a tuple gives a tuple.
      has_aux: ``func`` returns ``(output, aux)``; ``aux`` is returned undifferentiated.

    Returns:
      A function returning the gradients (``(grads, aux)`` with ``has_aux``). Keyword
      arguments are passed to ``func`` and not differentiated.

    >>> import jax.numpy as jnp
    >>> grad(lambda x: 2 * x @ x)(jnp.array([1.0, 2.0]))   # y = 2 x^T x, dy/dx = 4x
    Array([4., 8.], dtype=float32)
    """
    run = _value_and_grad(func, argnums, has_aux, "grad")

    def grad_f(*args, **kwargs):
        _, grads, aux = run(*args, **kwargs)
        return (grads, aux) if has_aux else grads

    return _named(grad_f, func, "grad", f"Gradient of {_args.func_name(func)} w.r.t. argnums={argnums}.")


def grad_and_value(func: Callable, argnums: _args.Argnums = 0, has_aux: bool = False) -> Callable:
    """Gradient and value, torch order: ``(grads, value)``, or ``(grads, (value, aux))``.

    >>> import jax.numpy as jnp
    >>> g, v = grad_and_value(lambda x: (x * x).sum())(jnp.array([1.0, 3.0]))
    >>> g, v
    (Array([2., 6.], dtype=float32), Array(10., dtype=float32))
    """
    run = _value_and_grad(func, argnums, has_aux, "grad_and_value")

    def grad_and_value_f(*args, **kwargs):
        value, grads, aux = run(*args, **kwargs)
        return (grads, (value, aux)) if has_aux else (grads, value)

    return _named(grad_and_value_f, func, "grad_and_value",
                  f"(gradient, value) of {_args.func_name(func)} w.r.t. argnums={argnums}.")


def value_and_grad(func: Callable, argnums: _args.Argnums = 0, has_aux: bool = False) -> Callable:
    """Value and gradient, JAX order: ``(value, grads)``, or ``((value, aux), grads)``.

    >>> import jax.numpy as jnp
    >>> value_and_grad(lambda x: (x * x).sum())(jnp.array([1.0, 3.0]))
    (Array(10., dtype=float32), Array([2., 6.], dtype=float32))
    """
    run = _value_and_grad(func, argnums, has_aux, "value_and_grad")

    def value_and_grad_f(*args, **kwargs):
        value, grads, aux = run(*args, **kwargs)
        return ((value, aux), grads) if has_aux else (value, grads)

    return _named(value_and_grad_f, func, "value_and_grad",
                  f"(value, gradient) of {_args.func_name(func)} w.r.t. argnums={argnums}.")


def _checked_pullback(where: str, out_tree, out_shapes, out_dtypes, pullback, cotangents):
    reference = jax.tree_util.tree_unflatten(
        out_tree, [jax.ShapeDtypeStruct(s, d) for s, d in zip(out_shapes, out_dtypes)]
    )
    return pullback(_args.match_tree(reference, cotangents, where, "the output", "cotangents"))


def _check_primals(primals: tuple, where: str, transform: str) -> None:
    """``vjp`` / ``linearize``: at least one primal, each differentiable."""
    if not primals:
        raise ValueError(f"{where}: expected at least one primal; call {transform}(f, x).")
    for i, p in enumerate(primals):
        _args.check_differentiable(p, where, f"primals[{i}]")


def vjp(func: Callable, *primals: Any, has_aux: bool = False):
    """Vector-Jacobian product, as ``torch.func.vjp``.

    Returns ``(output, vjp_fn)`` (``(output, vjp_fn, aux)`` with ``has_aux``);
    ``vjp_fn(v)`` returns ``v^T J`` as a tuple with one entry per primal. PyTorch's
    ``y.backward(v)`` is this product; ``v = ones`` sums the rows of ``J``.
    ``vjp_fn`` is a pytree (its leaves are the saved residuals), so it can cross
    ``jax.jit`` boundaries.

    >>> import jax.numpy as jnp
    >>> out, vjp_fn = vjp(lambda x: x * x, jnp.array([1.0, 2.0, 3.0]))
    >>> vjp_fn(jnp.ones(3))      # ones^T diag(2x) = 2x
    (Array([2., 4., 6.], dtype=float32),)
    """
    _args.check_callable(func, "vjp")
    _args.check_bool(has_aux, "vjp", "has_aux")
    name = _args.func_name(func)
    where = f"vjp({name}, *primals)"
    _check_primals(primals, where, "vjp")

    traced = _args.checked_output(func, has_aux, where)

    out, pullback, aux = jax.vjp(traced, *primals, has_aux=True)
    leaves, tree = jax.tree_util.tree_flatten(out)
    check = functools.partial(
        _checked_pullback, f"vjp({name}, *primals)[1](cotangents)", tree,
        tuple(np.shape(x) for x in leaves), tuple(np.dtype(x.dtype) for x in leaves),
    )
    vjp_fn = jax.tree_util.Partial(check, pullback)
    return (out, vjp_fn, aux) if has_aux else (out, vjp_fn)


def _check_primals_tangents(primals: Any, tangents: Any, where: str) -> tuple[tuple, tuple]:
    for name, value in (("primals", primals), ("tangents", tangents)):
        if not isinstance(value, (tuple, list)):
            raise TypeError(
                f"{where}: expected {name} to be a tuple, got {type(value).__name__}; "
                f"wrap a single input as ({name[:-1]},) so that f(*{name}) is valid."
            )
    if len(primals) == 0:
        raise ValueError(f"{where}: expected at least one primal.")
    if len(primals) != len(tangents):
        raise ValueError(
            f"{where}: got {len(primals)} primal(s) but {len(tangents)} tangent(s); give "
            "one tangent per primal."
        )
    for i, p in enumerate(primals):
        _args.check_differentiable(p, where, f"primals[{i}]")
    tangents = _args.match_tree(tuple(primals), tuple(tangents), where, "primals", "tangents")
    return tuple(primals), tangents


def jvp(func: Callable, primals: Any, tangents: Any, *, strict: bool = False, has_aux: bool = False):
    """Jacobian-vector product, as ``torch.func.jvp``: ``(f(x), J u)``.

    One forward pass carries the tangent ``u`` along (forward accumulation); no
    intermediate is stored. ``primals`` and ``tangents`` are tuples, one entry per
    positional argument. ``strict`` is accepted for torch compatibility (no effect).

    >>> import jax.numpy as jnp
    >>> jvp(jnp.sin, (jnp.float32(0.0),), (jnp.float32(2.0),))
    (Array(0., dtype=float32), Array(2., dtype=float32))
    """
    _args.check_callable(func, "jvp")
    _args.check_bool(has_aux, "jvp", "has_aux")
    where = f"jvp({_args.func_name(func)}, primals, tangents)"
    primals, tangents = _check_primals_tangents(primals, tangents, where)

    traced = _args.checked_output(func, has_aux, where)

    with forward_mode():
        out, tangent_out, aux = jax.jvp(traced, primals, tangents, has_aux=True)
    return (out, tangent_out, aux) if has_aux else (out, tangent_out)


def _checked_linear(where: str, primals: tuple, lin: Callable, *tangents):
    primals_spec = jax.tree_util.tree_map(lambda p: jax.ShapeDtypeStruct(np.shape(p), _args.leaf_dtype(p)), primals)
    _, tangents = _check_primals_tangents(primals_spec, tangents, where)
    return lin(*tangents)


def linearize(func: Callable, *primals: Any):
    """Evaluate ``func`` and return its linearization, as ``torch.func.linearize``.

    Returns ``(output, jvp_fn)`` with ``jvp_fn(*tangents) = J u``. The forward pass runs
    once; each ``jvp_fn`` call reuses the saved linear map.

    >>> import jax.numpy as jnp
    >>> out, jvp_fn = linearize(lambda x: x ** 3, jnp.float32(2.0))
    >>> out, jvp_fn(jnp.float32(1.0))       # 3 x^2 = 12
    (Array(8., dtype=float32), Array(12., dtype=float32))
    """
    _args.check_callable(func, "linearize")
    name = _args.func_name(func)
    where = f"linearize({name}, *primals)"
    _check_primals(primals, where, "linearize")

    traced = _args.checked_output(func, False, where)
    with forward_mode():
        out, lin, _ = jax.linearize(traced, *primals, has_aux=True)
    jvp_fn = functools.partial(_checked_linear, f"linearize({name}, *primals)[1](*tangents)", primals, lin)
    return out, jvp_fn


# ----------------------------------------------------------------------------- vmap


def _broadcast_prefix(prefix: Any, tree: Any, where: str, argname: str) -> list:
    """Flatten ``prefix`` (ints and Nones) against ``tree``: one entry per leaf of tree."""
    prefix_def = jax.tree_util.tree_structure(prefix, is_leaf=lambda x: x is None)
    try:
        subtrees = prefix_def.flatten_up_to(tree)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{where}: {argname}={prefix!r} does not fit the structure of the inputs "
            f"({jax.tree_util.tree_structure(tree)}); give an int, None, or a tuple with "
            f"one entry per argument. ({e})"
        ) from None
    dims = jax.tree_util.tree_leaves(prefix, is_leaf=lambda x: x is None)
    out = []
    for d, sub in zip(dims, subtrees):
        out.extend([d] * len(jax.tree_util.tree_leaves(sub)))
    return out


def _check_dim(d: Any, where: str, argname: str) -> None:
    if d is not None and (isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer))):
        raise TypeError(f"{where}: {argname} entries must be ints or None, got {d!r}.")


def vmap(func: Callable, in_dims: Any = 0, out_dims: Any = 0, randomness: str = "error", *,
         chunk_size: int | None = None) -> Callable:
    """Vectorizing map, as ``torch.func.vmap``.

    ``in_dims`` says which axis of each positional argument is the batch axis (``None``:
    not batched); it is an int, ``None``, or a tuple with one entry per argument
    (nested to match pytrees). Keyword arguments are not batched. ``chunk_size``
    evaluates ``chunk_size`` batch elements at a time (a ``lax.map`` over chunks), which
    bounds memory. ``randomness`` exists for torch compatibility: JAX has no hidden
    random state, so pass PRNG keys (batched with ``jax.random.split``) instead;
    only ``"error"`` and ``"same"`` (both mean: no implicit randomness) are accepted.

    >>> import jax.numpy as jnp
    >>> vmap(jnp.dot, in_dims=(0, None))(jnp.ones((3, 2)), jnp.array([1.0, 2.0]))
    Array([3., 3., 3.], dtype=float32)
    """
    _args.check_callable(func, "vmap")
    chunk_size = _args.check_chunk_size(chunk_size, "vmap")
    if randomness == "different":
        raise ValueError(
            "vmap: randomness='different' has no meaning in JAX, which has no hidden random "
            "state; pass a batch of PRNG keys (jax.random.split(key, n)) as a batched argument."
        )
    _args.check_choice(randomness, ("error", "same"), "vmap", "randomness")
    for d in jax.tree_util.tree_leaves((in_dims, out_dims), is_leaf=lambda x: x is None):
        _check_dim(d, "vmap", "in_dims/out_dims")
    name = _args.func_name(func)

    def vmapped(*args, **kwargs):
        where = f"vmap({name}, in_dims={in_dims!r})(*args)"
        if not args:
            raise ValueError(f"{where}: expected at least one positional argument to map over.")
        dims_prefix = in_dims if isinstance(in_dims, (tuple, list)) else (in_dims,) * len(args)
        if isinstance(in_dims, (tuple, list)) and len(in_dims) != len(args):
            raise ValueError(
                f"{where}: in_dims has {len(in_dims)} entries but the function was called "
                f"with {len(args)} positional argument(s); give one entry per argument."
            )
        dims_prefix = tuple(dims_prefix)
        leaves = jax.tree_util.tree_leaves(args)
        dims = _broadcast_prefix(dims_prefix, args, where, "in_dims")
        size, first = None, None
        for keypath_leaf, d in zip(jax.tree_util.tree_leaves_with_path(args), dims):
            keypath, leaf = keypath_leaf
            if d is None:
                continue
            label = "args" + jax.tree_util.keystr(keypath)
            if _args.leaf_dtype(leaf) is None:
                raise TypeError(f"{where}: {label} is a {type(leaf).__name__}, not an array; "
                                "only arrays can be batched (use in_dims=None for it).")
            ndim = np.ndim(leaf)
            if not -ndim <= d < ndim:
                raise ValueError(
                    f"{where}: in_dims={d} for {label} of shape {tuple(np.shape(leaf))} is out "
                    f"of range; use an axis in [{-ndim}, {ndim - 1}] or None."
                )
            n = np.shape(leaf)[d]
            if size is None:
                size, first = n, label
            elif n != size:
                raise ValueError(
                    f"{where}: batch sizes differ: {first} has {size} along its mapped axis but "
                    f"{label} has {n}; all batched inputs must share one batch size."
                )
        if size is None:
            raise ValueError(
                f"{where}: no input is batched (every in_dims entry is None); batch at least "
                "one argument."
            )
        del leaves
        f = (lambda *a: func(*a, **kwargs)) if kwargs else func
        if chunk_size is None or chunk_size >= size:
            return jax.vmap(f, in_axes=dims_prefix, out_axes=out_dims)(*args)
        return _chunking.chunked_vmap(f, args, dims, out_dims, chunk_size, where)

    return _named(vmapped, func, "vmap", f"{name} mapped over in_dims={in_dims}.")


def _chunked_vmap(f, args, in_dims, out_dims, chunk_size, where):
    """``lax.map`` over chunks of ``chunk_size`` batch elements, each chunk vmapped."""
    flat, tree = jax.tree_util.tree_flatten(args)
    dims = _broadcast_prefix(in_dims, args, where, "in_dims")
    mapped = [jnp.moveaxis(x, d, 0) for x, d in zip(flat, dims) if d is not None]

    def one(batch_leaves):
        it = iter(batch_leaves)
        full = [next(it) if d is not None else x for x, d in zip(flat, dims)]
        return f(*jax.tree_util.tree_unflatten(tree, full))

    out = jax.lax.map(one, mapped, batch_size=chunk_size)
    out_leaves, out_tree = jax.tree_util.tree_flatten(out)
    odims = _broadcast_prefix(out_dims, out, where.replace("in_dims", "out_dims"), "out_dims")
    moved = [x[0] if d is None else jnp.moveaxis(x, 0, d) for x, d in zip(out_leaves, odims)]
    return jax.tree_util.tree_unflatten(out_tree, moved)
