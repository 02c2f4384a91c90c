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

from . import _args, _chunking, _mesh
from ._mode import forward_mode

__all__ = ["grad", "grad_and_value", "value_and_grad", "vjp", "jvp", "linearize", "vmap"]


def _named(wrapper: Callable, func: Callable, transform: str, doc: str) -> Callable:
    return _args.named(wrapper, func, f"{transform}({_args.func_name(func)})", doc, torch_name=True)


def _value_and_grad(func: Callable, argnums: Any, has_aux: bool, transform: str,
                    holomorphic: bool = False) -> Callable:
    """Shared body of grad / grad_and_value / value_and_grad: returns
    ``f(*args, **kwargs) -> (value, grads, aux)``.

    Complex inputs of a real-valued ``f`` get torch.func's gradient, the conjugate of
    JAX's: ``∂f/∂x + i ∂f/∂y`` for ``z = x + iy``, the steepest-ascent direction (so
    ``z -= lr * g`` descends). ``holomorphic=True`` is JAX's: ``f'(z)`` of a complex
    ``f``. Dicts in the gradients keep the inputs' key order; aux keeps its own."""
    _args.check_callable(func, transform)
    _, as_tuple = _args.check_argnums(argnums, transform)
    _args.check_bool(has_aux, transform, "has_aux")
    _args.check_bool(holomorphic, transform, "holomorphic")
    name = _args.func_name(func)
    check = functools.partial(_args.check_scalar, holomorphic=holomorphic)

    def run(*args, **kwargs):
        where = f"{transform}({name})(*args)"
        positions = _args.differentiable_positions(args, argnums, where)
        diff = tuple(args[p] for p in positions)
        for p in positions:
            _args.check_complex_inputs(args[p], where, f"args[{p}]", holomorphic=holomorphic,
                                       transform=transform, allow_complex=True)

        inner = _args.keep_order(func, args)
        scalar_func = _args.checked_output(lambda *a: inner(*a, **kwargs), has_aux, where,
                                           check=check)
        (value, aux), grads = jax.value_and_grad(scalar_func, positions, has_aux=True,
                                                 holomorphic=holomorphic)(*args)
        if not holomorphic:
            grads = _args.conj_complex(grads)
        grads = _args.reorder(_args.order_of(diff), grads)
        if has_aux:
            aux = _args.reorder(scalar_func.orders["aux"], aux)
        return value, (grads if as_tuple else grads[0]), aux

    return run


def grad(func: Callable, argnums: _args.Argnums = 0, has_aux: bool = False, *,
         holomorphic: bool = False) -> Callable:
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
    run = _value_and_grad(func, argnums, has_aux, "grad", holomorphic)

    def grad_f(*args, **kwargs):
        _, grads, aux = run(*args, **kwargs)
        return (grads, aux) if has_aux else grads

    return _named(grad_f, func, "grad", f"Gradient of {_args.func_name(func)} w.r.t. argnums={argnums}.")


def grad_and_value(func: Callable, argnums: _args.Argnums = 0, has_aux: bool = False, *,
                   holomorphic: bool = False) -> Callable:
    """Gradient and value, torch order: ``(grads, value)``, or ``(grads, (value, aux))``.

    >>> import jax.numpy as jnp
    >>> g, v = grad_and_value(lambda x: (x * x).sum())(jnp.array([1.0, 3.0]))
    >>> g, v
    (Array([2., 6.], dtype=float32), Array(10., dtype=float32))
    """
    run = _value_and_grad(func, argnums, has_aux, "grad_and_value", holomorphic)

    def grad_and_value_f(*args, **kwargs):
        value, grads, aux = run(*args, **kwargs)
        return (grads, (value, aux)) if has_aux else (grads, value)

    return _named(grad_and_value_f, func, "grad_and_value",
                  f"(gradient, value) of {_args.func_name(func)} w.r.t. argnums={argnums}.")


def value_and_grad(func: Callable, argnums: _args.Argnums = 0, has_aux: bool = False, *,
                   holomorphic: bool = False) -> Callable:
    """Value and gradient, JAX order: ``(value, grads)``, or ``((value, aux), grads)``.

    >>> import jax.numpy as jnp
    >>> value_and_grad(lambda x: (x * x).sum())(jnp.array([1.0, 3.0]))
    (Array(10., dtype=float32), Array([2., 6.], dtype=float32))
    """
    run = _value_and_grad(func, argnums, has_aux, "value_and_grad", holomorphic)

    def value_and_grad_f(*args, **kwargs):
        value, grads, aux = run(*args, **kwargs)
        return ((value, aux), grads) if has_aux else (value, grads)

    return _named(value_and_grad_f, func, "value_and_grad",
                  f"(value, gradient) of {_args.func_name(func)} w.r.t. argnums={argnums}.")


def _checked_pullback(where: str, out_tree, out_shapes, out_dtypes, orders, pullback,
                      cotangents, *, retain_graph: bool | None = None,
                      create_graph: bool | None = None):
    """``vjp_fn(cotangents)``: checked against the output, in torch.func's complex
    convention (``conj(J^T conj(v))``, which is JAX's ``v^T J`` for real values), dicts
    in the primals' key order. ``retain_graph``/``create_graph`` are torch's keywords:
    accepted and ignored (a functional ``vjp_fn`` can be called any number of times,
    and its result is always differentiable)."""
    del retain_graph, create_graph
    reference = jax.tree_util.tree_unflatten(
        out_tree, [jax.ShapeDtypeStruct(s, d) for s, d in zip(out_shapes, out_dtypes)]
    )
    cotangents = _args.match_tree(reference, cotangents, where, "the output", "cotangents")
    complex_ = any(jnp.issubdtype(d, jnp.complexfloating) for d in out_dtypes)
    if complex_:
        cotangents = _args.conj_complex(cotangents)
    result = pullback(cotangents)
    if complex_ or orders["complex_in"]:
        result = _args.conj_complex(result)
    return _args.reorder(orders["primals"], result)


def vjp(func: Callable, *primals: Any, has_aux: bool = False):
    """Vector-Jacobian product, as ``torch.func.vjp``.

    Returns ``(output, vjp_fn)`` (``(output, vjp_fn, aux)`` with ``has_aux``);
    ``vjp_fn(v)`` returns ``v^T J`` as a tuple with one entry per primal. PyTorch's
    ``y.backward(v)`` is this product; ``v = ones`` sums the rows of ``J``.
    ``vjp_fn`` is a pytree (its leaves are the saved residuals), so it can cross
    ``jax.jit`` boundaries. It accepts torch's ``retain_graph=``/``create_graph=``
    keywords, which change nothing here. Complex values follow torch.func: ``vjp_fn(v)
    = conj(J^T conj(v))`` (for a real-valued ``f`` of complex ``z``, ``vjp_fn(1.)`` is
    ``∂f/∂x + i ∂f/∂y``); dicts keep the caller's key order.

    >>> import jax.numpy as jnp
    >>> out, vjp_fn = vjp(lambda x: x * x, jnp.array([1.0, 2.0, 3.0]))
    >>> vjp_fn(jnp.ones(3))      # ones^T diag(2x) = 2x
    (Array([2., 4., 6.], dtype=float32),)
    """
    _args.check_callable(func, "vjp")
    _args.check_bool(has_aux, "vjp", "has_aux")
    name = _args.func_name(func)
    where = f"vjp({name}, *primals)"
    _args.check_primals(primals, where, "vjp")

    traced = _args.checked_output(_args.keep_order(func, primals), has_aux, where)

    out, pullback, aux = jax.vjp(traced, *primals, has_aux=True)
    out = _args.reorder(traced.orders["out"], out)
    if has_aux:
        aux = _args.reorder(traced.orders["aux"], aux)
    leaves, tree = jax.tree_util.tree_flatten(out)
    orders = {"primals": _args.order_of(primals),
              "complex_in": any(jnp.iscomplexobj(x) for x in jax.tree_util.tree_leaves(primals))}
    check = functools.partial(
        _checked_pullback, f"vjp({name}, *primals)[1](cotangents)", tree,
        tuple(np.shape(x) for x in leaves), tuple(np.dtype(x.dtype) for x in leaves), orders,
    )
    vjp_fn = jax.tree_util.Partial(check, pullback)
    return (out, vjp_fn, aux) if has_aux else (out, vjp_fn)


def jvp(func: Callable, primals: Any, tangents: Any, *, strict: bool = False, has_aux: bool = False):
    """Jacobian-vector product, as ``torch.func.jvp``: ``(f(x), J u)``.

    One forward pass carries the tangent ``u`` along (forward accumulation); no
    intermediate is stored. ``primals`` and ``tangents`` are tuples (tangents of the
    same Python structure), one entry per positional argument. ``strict=True`` raises
    when an output does not depend on the inputs (torch.func's meaning; it stages the
    JVP once more to see which outputs depend on the tangents). Dicts in the outputs
    keep their key order.

    >>> import jax.numpy as jnp
    >>> jvp(jnp.sin, (jnp.float32(0.0),), (jnp.float32(2.0),))
    (Array(0., dtype=float32), Array(2., dtype=float32))
    """
    _args.check_callable(func, "jvp")
    _args.check_bool(has_aux, "jvp", "has_aux")
    _args.check_bool(strict, "jvp", "strict")
    where = f"jvp({_args.func_name(func)}, primals, tangents)"
    primals, tangents = _args.check_primals_tangents(primals, tangents, where)

    traced = _args.checked_output(_args.keep_order(func, primals), has_aux, where)

    with forward_mode():
        if strict:
            _check_strict(traced, primals, tangents, where)
        out, tangent_out, aux = jax.jvp(traced, primals, tangents, has_aux=True)
    out = _args.reorder(traced.orders["out"], out)
    tangent_out = _args.reorder(traced.orders["out"], tangent_out)
    if has_aux:
        aux = _args.reorder(traced.orders["aux"], aux)
    return (out, tangent_out, aux) if has_aux else (out, tangent_out)


def _check_strict(traced: Callable, primals: tuple, tangents: tuple, where: str) -> None:
    from ._jaxpr.dependence import independent_outputs

    def tangent_out(*t):
        return jax.tree_util.tree_leaves(jax.jvp(traced, primals, t, has_aux=True)[1])

    if any(independent_outputs(tangent_out, *tangents)):
        raise ValueError(
            f"{where}: strict=True: an output of f is independent of the inputs, so its "
            "tangent is identically zero. This is not allowed with strict=True; use "
            "strict=False to get the zeros."
        )


def _checked_linear(where: str, primals: tuple, orders: dict, lin: Callable, *tangents):
    primals_spec = jax.tree_util.tree_map(lambda p: jax.ShapeDtypeStruct(np.shape(p), _args.leaf_dtype(p)), primals)
    _, tangents = _args.check_primals_tangents(primals_spec, tangents, where)
    return _args.reorder(orders["out"], lin(*tangents))


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
    _args.check_primals(primals, where, "linearize")

    traced = _args.checked_output(_args.keep_order(func, primals), False, where)
    with forward_mode():
        out, lin, _ = jax.linearize(traced, *primals, has_aux=True)
    out = _args.reorder(traced.orders["out"], out)
    jvp_fn = functools.partial(_checked_linear, f"linearize({name}, *primals)[1](*tangents)",
                               primals, dict(traced.orders), lin)
    return out, jvp_fn


# ----------------------------------------------------------------------------- vmap


_UNSET: Any = type("_Unset", (), {"__repr__": lambda self: "<unset>"})()


def _broadcast_prefix(prefix: Any, tree: Any, where: str, argname: str,
                      what: str = "inputs") -> list:
    """Flatten ``prefix`` (ints and Nones) against ``tree``: one entry per leaf of tree."""
    prefix_def = jax.tree_util.tree_structure(prefix, is_leaf=lambda x: x is None)
    try:
        subtrees = prefix_def.flatten_up_to(tree)
    except (ValueError, TypeError) as e:
        one = "argument" if what == "inputs" else "output"
        raise ValueError(
            f"{where}: {argname}={prefix!r} does not fit the structure of the {what} "
            f"({jax.tree_util.tree_structure(tree)}); give an int, None, or a tuple with "
            f"one entry per {one}. ({e})"
        ) from None
    dims = jax.tree_util.tree_leaves(prefix, is_leaf=lambda x: x is None)
    out = []
    for d, sub in zip(dims, subtrees):
        out.extend([d] * len(jax.tree_util.tree_leaves(sub)))
    return out


def _check_dim(d: Any, where: str, argname: str) -> None:
    if d is not None and (isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer))):
        raise TypeError(f"{where}: {argname} entries must be ints or None, got {d!r}.")


def _alias(value: Any, alias: Any, name: str, alias_name: str, default: Any) -> Any:
    """torch's ``in_dims``/``out_dims`` or JAX's ``in_axes``/``out_axes``, not both."""
    if alias is _UNSET:
        return default if value is _UNSET else value
    if value is not _UNSET:
        raise TypeError(
            f"vmap: got both {name}= and {alias_name}=; they are the same argument "
            f"(torch's and JAX's spelling), pass one of them."
        )
    return alias


def _checked_body(f: Callable, out_dims: Any, where: str, orders: dict) -> Callable:
    """``f`` as traced by ``vmap``: its outputs must be arrays, ``out_dims`` must fit
    them (one axis in range per output); their dicts' key order is recorded."""
    def body(*a):
        out = f(*a)
        orders["out"] = _args.order_of(out)
        items = jax.tree_util.tree_leaves_with_path(out)
        for keypath, leaf in items:
            if _args.leaf_dtype(leaf) is None:
                raise TypeError(
                    f"{where}: output{jax.tree_util.keystr(keypath)} is a "
                    f"{type(leaf).__name__}, not an array; a vmapped function must return "
                    "arrays (or pytrees of arrays). Return other values outside vmap."
                )
        dims = _broadcast_prefix(out_dims, out, where, "out_dims", what="outputs")
        for (keypath, leaf), d in zip(items, dims):
            nd = np.ndim(leaf) + 1
            if d is not None and not -nd <= d < nd:
                raise ValueError(
                    f"{where}: out_dims={d} is out of range for output"
                    f"{jax.tree_util.keystr(keypath)}, which has {nd} dimension(s) with the "
                    f"batch axis (shape {tuple(np.shape(leaf))} per element); use an axis "
                    f"in [{-nd}, {nd - 1}] or None."
                )
        return out

    return body


def _vmap_call(body: Callable, in_axes: Any, out_axes: Any, args: tuple, where: str,
               *, abstract: bool = False):
    """``jax.vmap(body)(*args)`` (or its ``eval_shape``), with JAX's out_axes=None
    complaint told in this library's terms."""
    run = jax.vmap(body, in_axes=in_axes, out_axes=out_axes)
    try:
        return jax.eval_shape(run, *args) if abstract else run(*args)
    except ValueError as e:
        if "axis spec None but output was batched" not in str(e):
            raise
        raise ValueError(
            f"{where}: out_dims=None for an output that depends on the mapped inputs, "
            "so it differs across the batch and has no single value to return; give it "
            "a batch axis (e.g. out_dims=0), or return only unbatched values under None."
        ) from None


def vmap(func: Callable, in_dims: Any = _UNSET, out_dims: Any = _UNSET,
         randomness: str = "error", *, chunk_size: int | None = None,
         in_axes: Any = _UNSET, out_axes: Any = _UNSET, mesh: Any = None,
         mesh_axis: str | None = None, gather: bool = False) -> Callable:
    """Vectorizing map, as ``torch.func.vmap``.

    ``in_dims`` (default 0) says which axis of each positional argument is the batch
    axis (``None``: not batched); it is an int, ``None``, or a tuple with one entry per
    argument (nested to match pytrees). ``out_dims`` (default 0) places the batch axis
    in each output. JAX's spellings ``in_axes=``/``out_axes=`` are accepted as
    aliases (one spelling per call). Keyword arguments are not batched. ``chunk_size``
    evaluates ``chunk_size`` batch elements at a time (a ``lax.map`` over chunks), which
    bounds memory. ``randomness`` exists for torch compatibility: JAX has no hidden
    random state, so pass PRNG keys (batched with ``jax.random.split``) instead;
    only ``"error"`` and ``"same"`` (both mean: no implicit randomness) are accepted.
    Dicts in the outputs keep the key order the function returned them in.
    ``mesh=`` (a ``jax.sharding.Mesh``) splits the batch over the devices of its axis
    ``mesh_axis`` (default the first), ``chunk_size`` at a time on each; outputs come
    back sharded along their batch axis, or replicated with ``gather=True``.

    >>> import jax.numpy as jnp
    >>> vmap(jnp.dot, in_dims=(0, None))(jnp.ones((3, 2)), jnp.array([1.0, 2.0]))
    Array([3., 3., 3.], dtype=float32)
    >>> vmap(jnp.dot, in_axes=(0, None))(jnp.ones((3, 2)), jnp.array([1.0, 2.0]))
    Array([3., 3., 3.], dtype=float32)
    """
    _args.check_callable(func, "vmap")
    in_dims = _alias(in_dims, in_axes, "in_dims", "in_axes", 0)
    out_dims = _alias(out_dims, out_axes, "out_dims", "out_axes", 0)
    chunk_size = _args.check_chunk_size(chunk_size, "vmap")
    _check_randomness(randomness)
    for d in jax.tree_util.tree_leaves((in_dims, out_dims), is_leaf=lambda x: x is None):
        _check_dim(d, "vmap", "in_dims/out_dims")
    mesh_axis = _mesh.check(mesh, mesh_axis, gather, "vmap")
    name = _args.func_name(func)

    def vmapped(*args, **kwargs):
        if mesh is not None:
            return _mesh.vmap(func, args, kwargs, in_dims=in_dims, out_dims=out_dims,
                              chunk_size=chunk_size, mesh=mesh, mesh_axis=mesh_axis, gather=gather)
        where = f"vmap({name}, in_dims={in_dims!r})(*args)"
        dims_prefix, dims, size = _batch_dims(args, in_dims, where)
        f = (lambda *a: func(*a, **kwargs)) if kwargs else func
        f = _args.keep_order(f, args)
        orders: dict = {}
        body = _checked_body(f, out_dims, where, orders)
        if chunk_size is None or chunk_size >= size:
            out = _vmap_call(body, dims_prefix, out_dims, args, where)
        else:
            if any(d is None for d in jax.tree_util.tree_leaves(out_dims, is_leaf=lambda x: x is None)):
                # The chunked loop stacks every output; check out_dims=None as jax.vmap does.
                _vmap_call(body, dims_prefix, out_dims, args, where, abstract=True)
            out = _chunking.chunked_vmap(body, args, dims, out_dims, chunk_size, where)
        return _args.reorder(orders["out"], out)

    return _named(vmapped, func, "vmap", f"{name} mapped over in_dims={in_dims}.")


def _check_randomness(randomness: Any) -> None:
    if randomness == "different":
        raise ValueError(
            "vmap: randomness='different' has no meaning in JAX, which has no hidden random "
            "state; pass a batch of PRNG keys (jax.random.split(key, n)) as a batched argument."
        )
    _args.check_choice(randomness, ("error", "same"), "vmap", "randomness")


def _batch_dims(args: tuple, in_dims: Any, where: str) -> tuple[tuple, list, int]:
    """``vmap``'s checks of its arguments against ``in_dims``: the per-argument prefix of
    ``in_dims``, the batch axis of each leaf, and the common batch size."""
    if not args:
        raise ValueError(f"{where}: expected at least one positional argument to map over.")
    dims_prefix = in_dims if isinstance(in_dims, (tuple, list)) else (in_dims,) * len(args)
    if isinstance(in_dims, (tuple, list)) and len(in_dims) != len(args):
        raise ValueError(
            f"{where}: in_dims has {len(in_dims)} entries but the function was called "
            f"with {len(args)} positional argument(s); give one entry per argument."
        )
    dims_prefix = tuple(dims_prefix)
    dims = _broadcast_prefix(dims_prefix, args, where, "in_dims")
    size, first = None, None
    for (keypath, leaf), d in zip(jax.tree_util.tree_leaves_with_path(args), dims):
        if d is None:
            continue
        label = "args" + jax.tree_util.keystr(keypath)
        n = _batch_axis_size(leaf, d, label, where)
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
    return dims_prefix, dims, size


def _batch_axis_size(leaf: Any, d: int, label: str, where: str) -> int:
    """The length of ``leaf``'s batch axis ``d``, checked."""
    if _args.leaf_dtype(leaf) is None:
        raise TypeError(f"{where}: {label} is a {type(leaf).__name__}, not an array; "
                        "only arrays can be batched (use in_dims=None for it).")
    ndim = np.ndim(leaf)
    if ndim == 0:
        raise ValueError(
            f"{where}: {label} is a scalar (shape ()), which has no axis to map "
            f"over; pass an array with a batch axis, or use in_dims=None for it."
        )
    if not -ndim <= d < ndim:
        raise ValueError(
            f"{where}: in_dims={d} for {label} of shape {tuple(np.shape(leaf))} is out "
            f"of range; use an axis in [{-ndim}, {ndim - 1}] or None."
        )
    return np.shape(leaf)[d]
