"""Argument plumbing shared by every transform: argnums, has_aux, pytrees, checks.

Each ``check_*`` helper runs at the boundary, before JAX sees the input, and raises a
``TypeError``/``ValueError`` whose message starts with the transform's call, names the
argument, says what came and says what to do. A user mistake never surfaces as a JAX
internal traceback.

>>> normalize_argnums((0, -1), nargs=3, where="grad(f)(*args)")
(0, 2)
>>> normalize_argnums(3, nargs=2, where="grad(f)(*args)")
Traceback (most recent call last):
    ...
ValueError: grad(f)(*args): argnums=3 is out of range for a function called with 2 positional argument(s); use an index in [-2, 1].
"""

from __future__ import annotations

import collections
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Argnums = int | Sequence[int]

ARRAY_TYPES = (jax.Array, np.ndarray, np.generic)


def func_name(func: Callable) -> str:
    """A short name for ``func`` to use in messages and ``__name__``."""
    return (getattr(func, "__fl_name__", None) or getattr(func, "__name__", None)
            or type(func).__name__)


def named(wrapper: Callable, func: Callable, name: str, doc: str, *,
          torch_name: bool = False) -> Callable:
    """Name a transform's result: ``name`` (e.g. ``"hessian(f)"``) as ``__name__`` and
    ``__qualname__`` and in the messages of transforms applied on top, ``doc`` as its
    docstring, ``func`` as ``__wrapped__``. ``torch_name=True`` keeps ``func``'s
    ``__name__`` instead (as torch.func does, through ``functools.wraps``).

    >>> f = named(lambda x: x, len, "grad(len)", "Gradient of len.", torch_name=True)
    >>> f.__name__, f.__qualname__, func_name(f), f.__wrapped__ is len
    ('len', 'grad(len)', 'grad(len)', True)
    """
    wrapper.__name__ = (getattr(func, "__name__", None) or name) if torch_name else name
    wrapper.__qualname__ = name
    wrapper.__fl_name__ = name
    wrapper.__doc__ = doc
    wrapper.__wrapped__ = func
    return wrapper


def check_callable(func: Any, transform: str, argname: str = "func") -> None:
    if not callable(func):
        raise TypeError(
            f"{transform}: expected {argname} to be a callable, got {type(func).__name__}; "
            f"pass the function itself, e.g. {transform}(f), not f(x)."
        )


def check_bool(value: Any, transform: str, argname: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{transform}: expected {argname} to be True or False, got {value!r}.")


def check_argnums(argnums: Any, transform: str) -> tuple[tuple[int, ...], bool]:
    """Validate the type of ``argnums`` when the transform is built.

    Returns the indices as a tuple and whether the user passed a tuple (which decides
    whether results are returned as a tuple).
    """
    def bad(why: str) -> TypeError | ValueError:
        return (TypeError if "integer" in why else ValueError)(
            f"{transform}: argnums={argnums!r} {why}; pass an int or a non-empty tuple of "
            "distinct ints naming positional arguments, e.g. argnums=0 or argnums=(0, 1)."
        )

    if isinstance(argnums, (bool, np.bool_)):
        raise bad("is not an integer")
    if isinstance(argnums, numbers.Integral):
        return (int(argnums),), False
    if isinstance(argnums, list):
        raise TypeError(
            f"{transform}: argnums must be int or Tuple[int, ...], got a list "
            f"{argnums!r}; pass argnums={tuple(argnums)!r}."
        )
    if isinstance(argnums, tuple):
        if len(argnums) == 0:
            raise bad("is empty")
        for a in argnums:
            if isinstance(a, (bool, np.bool_)) or not isinstance(a, numbers.Integral):
                raise bad(f"contains {a!r}, which is not an integer")
        return tuple(int(a) for a in argnums), True
    raise bad("is not an integer")


def normalize_argnums(argnums: Argnums, nargs: int, where: str) -> tuple[int, ...]:
    """Resolve negative indices against ``nargs`` and reject range errors and repeats."""
    if type(argnums) is int and -nargs <= argnums < nargs:   # the common case
        return (argnums % nargs,)
    raw, _ = check_argnums(argnums, where)
    if nargs == 0:
        raise ValueError(
            f"{where}: the function was called with no positional arguments, so there is "
            f"nothing to differentiate (argnums={argnums!r}); pass the inputs "
            "positionally, e.g. f(x) rather than f() or f(x=x)."
        )
    out = []
    for a in raw:
        if not -nargs <= a < nargs:
            raise ValueError(
                f"{where}: argnums={a} is out of range for a function called with {nargs} "
                f"positional argument(s); use an index in [{-nargs}, {nargs - 1}]."
            )
        out.append(a % nargs)
    if len(set(out)) != len(out):
        raise ValueError(
            f"{where}: argnums={argnums!r} names the same argument twice; list each "
            "argument once."
        )
    return tuple(out)


def differentiable_positions(args: tuple, argnums: Argnums, where: str) -> tuple[int, ...]:
    """Resolve ``argnums`` against ``args`` and check that each named argument can be
    differentiated (float leaves only); returns the non-negative positions."""
    positions = normalize_argnums(argnums, len(args), where)
    for p in positions:
        check_differentiable(args[p], where, f"args[{p}]")
    return positions


def is_key_dtype(dtype: Any) -> bool:
    """True for the dtype of a typed PRNG key array (``jax.random.key``)."""
    return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def leaf_dtype(leaf: Any) -> Any:
    """The dtype of an array or Python number (``None`` for anything else). A typed PRNG
    key (``jax.random.key``) has its extended key dtype, which is not inexact: keys pass
    through every transform as non-differentiable leaves."""
    if isinstance(leaf, ARRAY_TYPES) or isinstance(leaf, jax.ShapeDtypeStruct):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.extended):
            return leaf.dtype
        return np.dtype(leaf.dtype)
    if isinstance(leaf, bool):
        return np.dtype(bool)
    if isinstance(leaf, numbers.Integral):
        return np.dtype(int)
    if isinstance(leaf, numbers.Real):
        return np.dtype(float)
    if isinstance(leaf, numbers.Complex):
        return np.dtype(complex)
    return None


def _path(prefix: str, keypath: tuple) -> str:
    return prefix + jax.tree_util.keystr(keypath)


def check_differentiable(tree: Any, where: str, argname: str) -> None:
    """Every leaf of ``tree`` must be a floating-point (or complex) array or number."""
    for keypath, leaf in jax.tree_util.tree_leaves_with_path(tree):
        dtype = leaf_dtype(leaf)
        name = _path(argname, keypath)
        if dtype is None:
            raise TypeError(
                f"{where}: {name} is a {type(leaf).__name__}, not an array; only arrays "
                "and Python numbers can be differentiated. Pass it through a keyword "
                "argument or leave it out of argnums."
            )
        if is_key_dtype(dtype):
            raise TypeError(
                f"{where}: {name} is a PRNG key ({dtype.name}); keys cannot be "
                "differentiated. Close over it, pass it as a keyword argument, or leave "
                "it out of argnums."
            )
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"{where}: {name} has dtype {dtype.name}; derivatives are taken with "
                "respect to floating-point inputs only. Convert it, e.g. "
                "x.astype(jnp.float32), or leave it out of argnums."
            )


def check_arraylike(tree: Any, where: str, argname: str) -> None:
    """Every leaf of ``tree`` must be an array or a Python number."""
    for keypath, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if leaf_dtype(leaf) is None:
            raise TypeError(
                f"{where}: {_path(argname, keypath)} is a {type(leaf).__name__}, not an "
                "array; pass arrays (or Python numbers), or close over other values."
            )


def _plain_real_arrays(tree: Any) -> bool:
    """Whether ``tree`` has leaves and every one is an array of a numpy floating dtype
    (``kind == "f"``; bfloat16 and friends take the general path)."""
    leaves = jax.tree_util.tree_leaves(tree)
    return bool(leaves) and all(isinstance(x, ARRAY_TYPES) and getattr(x.dtype, "kind", "") == "f"
                                for x in leaves)


def check_inexact_output(tree: Any, where: str, what: str = "the output", *,
                         complex_output: str = "allow", transform: str = "") -> None:
    """The output of a differentiated function: at least one array, every leaf a
    floating-point (or complex) *array* (a Python number is a constant the transform
    cannot see; torch.func rejects it too). ``complex_output``: ``"allow"`` (vjp, jvp),
    ``"reject"`` (jacrev/jacfwd without ``holomorphic``), ``"require"`` (with it)."""
    if complex_output != "require" and _plain_real_arrays(tree):
        return   # the common case (real float arrays), without the per-leaf checks below
    items = jax.tree_util.tree_leaves_with_path(tree)
    if not items:
        raise ValueError(
            f"{where}: expected f to return at least one array, got {'None' if tree is None else describe(tree)}; "
            "return the value(s) to differentiate."
        )
    for keypath, leaf in items:
        dtype = leaf_dtype(leaf)
        if isinstance(leaf, numbers.Number) and not isinstance(leaf, ARRAY_TYPES):
            raise TypeError(
                f"{where}: {_path(what, keypath)} is a Python {type(leaf).__name__}, not an "
                "array, so it cannot depend on the inputs; return arrays computed from "
                "them (wrap a constant with jnp.asarray if you mean it)."
            )
        if dtype is None or is_key_dtype(dtype) or not jnp.issubdtype(dtype, jnp.inexact):
            got = dtype.name if dtype is not None else type(leaf).__name__
            raise TypeError(
                f"{where}: {_path(what, keypath)} is {got}; only floating-point outputs "
                "can be differentiated. Return float arrays, or move integer results "
                "into aux (has_aux=True)."
            )
        is_complex = jnp.issubdtype(dtype, jnp.complexfloating)
        if complex_output == "reject" and is_complex:
            raise TypeError(
                f"{where}: {_path(what, keypath)} is {dtype.name}; {transform} differentiates "
                "real outputs. For a holomorphic function pass holomorphic=True "
                "(J = f'(z)); otherwise return the real and imaginary parts "
                "(jnp.real/jnp.imag) as separate real outputs, or use vjp/jvp."
            )
        if complex_output == "require" and not is_complex:
            raise TypeError(
                f"{where}: {_path(what, keypath)} is {dtype.name}, but holomorphic=True "
                "needs complex outputs; drop holomorphic=True for a real-valued function, "
                "or return a complex value."
            )


def check_complex_inputs(tree: Any, where: str, argname: str, *, holomorphic: bool,
                         transform: str, allow_complex: bool = False) -> None:
    """``holomorphic=True``: every differentiated leaf is complex (JAX's rule). Without
    it, complex leaves are rejected unless ``allow_complex`` (the grad family, whose
    output is real)."""
    for keypath, leaf in jax.tree_util.tree_leaves_with_path(tree):
        dtype = leaf_dtype(leaf)
        is_complex = dtype is not None and jnp.issubdtype(dtype, jnp.complexfloating)
        name = _path(argname, keypath)
        if holomorphic and not is_complex:
            raise TypeError(
                f"{where}: holomorphic=True needs complex inputs, but {name} has dtype "
                f"{dtype.name}; cast it, e.g. x.astype(jnp.complex64), or drop "
                "holomorphic=True."
            )
        if not holomorphic and is_complex and not allow_complex:
            raise TypeError(
                f"{where}: {name} is {dtype.name}; {transform} differentiates real inputs "
                "(as torch.func). For a holomorphic function pass holomorphic=True "
                "(J = f'(z)); otherwise pass the real and imaginary parts as separate "
                "real inputs, or use vjp/jvp."
            )


def split_aux(out: Any, where: str) -> tuple[Any, Any]:
    """``has_aux=True``: the function must return a tuple ``(output, aux)`` (a list is
    rejected, as torch.func does), and aux's leaves must be arrays."""
    if not isinstance(out, tuple) or len(out) != 2:
        got = describe(out)
        raise ValueError(
            f"{where}: has_aux=True expects the function to return a tuple (output, aux), "
            f"got {got}. Return `out, aux`, or use has_aux=False."
        )
    check_aux(out[1], where)
    return out[0], out[1]


def check_aux(aux: Any, where: str) -> None:
    """aux leaves are arrays (a PRNG key is one); a Python number or string is not."""
    for keypath, leaf in jax.tree_util.tree_leaves_with_path(aux):
        if not isinstance(leaf, ARRAY_TYPES):
            raise TypeError(
                f"{where}: has_aux=True: {_path('aux', keypath)} is a {type(leaf).__name__}, "
                "not an array; aux may hold arrays only (as torch.func). Wrap numbers with "
                "jnp.asarray, and return other values outside the transform."
            )


def describe(value: Any) -> str:
    """``'an array of shape (3,)'``, ``'a tuple of length 3'``, ``'a str'``: for messages."""
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of length {len(value)}"
    if isinstance(value, ARRAY_TYPES):
        return f"an array of shape {tuple(np.shape(value))}"
    return f"a {type(value).__name__}"


def first_line(exc: BaseException) -> str:
    """``'TypeError: <first line of its message>'``: an exception, briefly, for reports."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def check_scalar(out: Any, where: str, alternative: str = "vjp or jacrev", *,
                 holomorphic: bool = False, has_aux_hint: bool = True) -> None:
    """``grad``-like transforms need a real scalar array output (a complex one with
    ``holomorphic=True``). ``has_aux_hint``: the transform takes ``has_aux`` (the
    message suggests it for returning other values)."""
    dtype = leaf_dtype(out)
    if out is None or (isinstance(out, (tuple, list, dict)) and not jax.tree_util.tree_leaves(out)):
        raise ValueError(
            f"{where}: expected f to return at least one array, got {describe(out)}; "
            "return the scalar to differentiate."
        )
    if dtype is None:
        raise TypeError(
            f"{where}: expected the function to return a scalar array, got "
            f"{type(out).__name__}. Return one scalar"
            + (" (with has_aux=True to also return other values)" if has_aux_hint else "")
            + f", or use {alternative}."
        )
    if isinstance(out, numbers.Number) and not isinstance(out, ARRAY_TYPES):
        raise TypeError(
            f"{where}: expected the function to return a scalar array, got a Python "
            f"{type(out).__name__}, which cannot depend on the inputs; return an array "
            "computed from them."
        )
    shape = np.shape(out)
    if shape != ():
        raise ValueError(
            f"{where}: expected the function to return a scalar, got shape {tuple(shape)}. "
            f"Reduce it first (e.g. out.sum()), or use {alternative} for non-scalar outputs."
        )
    if holomorphic:
        if not jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(
                f"{where}: holomorphic=True needs a complex scalar output, got dtype "
                f"{dtype.name}; drop holomorphic=True for a real-valued function."
            )
        return
    if is_key_dtype(dtype) or not jnp.issubdtype(dtype, jnp.floating):
        hint = ("pass holomorphic=True for a holomorphic function (grad = f'(z)), or "
                "return a real value (take the real part or abs of a complex result)"
                if jnp.issubdtype(dtype, jnp.complexfloating) else "return a float")
        raise TypeError(
            f"{where}: expected a real floating-point scalar, got dtype {dtype.name}. "
            f"{hint[0].upper() + hint[1:]}, or use {alternative}."
        )


def checked_output(func: Callable, has_aux: bool, where: str,
                   check: Callable[[Any, str], None] = check_inexact_output) -> Callable:
    """``func`` returning ``(out, aux)`` (``aux=None`` without ``has_aux``), ``out`` passed
    through ``check(out, where)`` (default: floating-point leaves; ``check_scalar`` for
    ``grad``). The returned function's ``orders`` dict receives the key order of the
    output (``"out"``) and aux (``"aux"``) as traced, for :func:`reorder`."""

    def traced(*a):
        out = func(*a)
        aux = None
        if has_aux:
            out, aux = split_aux(out, where)
        check(out, where)
        traced.orders["out"] = order_of(out)
        traced.orders["aux"] = order_of(aux)
        return out, aux

    traced.orders = {}
    return traced


# ----------------------------------------------------------------------------- dict order
# JAX flattens a dict in sorted key order and rebuilds it so; torch.func (and the caller)
# keep insertion order. Every result that mirrors a caller's dict is rebuilt in that
# order: `order_of` records the key order of a tree (at every depth), `reorder` applies
# it to a tree of the same structure.

_LEAF = ("leaf", False)


def _one_level(tree: Any) -> tuple[list, Any]:
    """The immediate children of a pytree node and the node's one-level treedef."""
    return jax.tree_util.tree_flatten(tree, is_leaf=lambda y: y is not tree)


def order_of(tree: Any) -> tuple:
    """The key order of every plain dict in ``tree`` (a small nested tuple).

    >>> order_of({"b": 1.0, "a": 2.0})[2]
    ('b', 'a')
    """
    kind = type(tree)
    if kind in (dict, collections.defaultdict):
        children = [order_of(tree[k]) for k in tree]
        return ("dict", True, tuple(tree), tuple(children))
    if tree is None or isinstance(tree, ARRAY_TYPES) or isinstance(tree, (numbers.Number, str)):
        return _LEAF
    if kind in (tuple, list) and tree:   # what _one_level gives, without flattening
        kids = tuple(order_of(c) for c in tree)
        return ("node", any(k[1] for k in kids), kids)
    children, treedef = _one_level(tree)
    if jax.tree_util.treedef_is_leaf(treedef):
        return _LEAF
    kids = tuple(order_of(c) for c in children)
    return ("node", any(k[1] for k in kids), kids)


def has_dict(order: tuple) -> bool:
    return order[1]


def reorder(order: tuple, tree: Any, at_leaf: Callable[[Any], Any] | None = None) -> Any:
    """``tree`` with every plain dict rebuilt in the key order recorded by
    :func:`order_of` (on a tree of the same structure, e.g. the caller's input).
    ``at_leaf`` maps the subtrees found where ``order`` has leaves (a Jacobian nests the
    input's structure inside each output leaf).

    >>> reorder(order_of({"b": 0, "a": 0}), {"a": 1, "b": 2})
    {'b': 2, 'a': 1}
    """
    if order[0] == "leaf":
        return at_leaf(tree) if at_leaf is not None else tree
    if not order[1] and at_leaf is None:
        return tree
    if order[0] == "dict":
        _, _, keys, kids = order
        if not isinstance(tree, dict) or set(tree) != set(keys):
            return tree
        items = [(k, reorder(c, tree[k], at_leaf)) for k, c in zip(keys, kids)]
        if isinstance(tree, collections.defaultdict):
            return collections.defaultdict(tree.default_factory, items)
        return dict(items)
    children, treedef = _one_level(tree)
    kids = order[2]
    if len(children) != len(kids):
        return tree
    return jax.tree_util.tree_unflatten(
        treedef, [reorder(o, c, at_leaf) for o, c in zip(kids, children)])


def keep_order(func: Callable, args: tuple) -> Callable:
    """``func`` called with its positional arguments' dicts rebuilt in the key order of
    ``args`` (JAX hands a traced function dicts in sorted order): the function, and any
    transform nested inside it, sees the caller's order, as under torch.func."""
    order = order_of(tuple(args))
    if not has_dict(order):
        return func
    return lambda *a: func(*reorder(order, a))


def reorder_jacobian(out_order: tuple, in_order: tuple, jac: Any) -> Any:
    """A Jacobian nested output structure first, then input structure, in the caller's
    key order at both levels."""
    if not (has_dict(out_order) or has_dict(in_order)):
        return jac
    return reorder(out_order, jac, at_leaf=lambda sub: reorder(in_order, sub))


def conj_complex(tree: Any) -> Any:
    """Complex leaves conjugated, others untouched (torch.func's complex convention)."""
    return jax.tree_util.tree_map(
        lambda x: jnp.conj(x) if jnp.iscomplexobj(x) else x, tree)


def match_tree(reference: Any, other: Any, where: str, ref_name: str, other_name: str) -> Any:
    """``other`` (tangents, cotangents, a direction) checked against ``reference``: same
    structure, shapes and (tangent) dtypes. Python numbers in ``other`` become arrays of
    the matching dtype first; returns ``other`` so cast."""
    ref_def = jax.tree_util.tree_structure(reference)
    other_def = jax.tree_util.tree_structure(other)
    if ref_def != other_def:
        raise ValueError(
            f"{where}: {other_name} must have the same structure as {ref_name}; "
            f"expected {ref_def}, got {other_def}."
        )
    other = cast_python_scalars(other, reference)
    ref_items = jax.tree_util.tree_leaves_with_path(reference)
    for (keypath, r), o in zip(ref_items, jax.tree_util.tree_leaves(other)):
        if leaf_dtype(o) is None:
            raise TypeError(
                f"{where}: {_path(other_name, keypath)} is a {type(o).__name__}, not an array."
            )
        if np.shape(r) != np.shape(o):
            raise ValueError(
                f"{where}: {_path(other_name, keypath)} has shape {tuple(np.shape(o))} but "
                f"{_path(ref_name, keypath)} has shape {tuple(np.shape(r))}; they must match."
            )
        if isinstance(o, ARRAY_TYPES):
            rd, od = tangent_dtype(leaf_dtype(r)), np.dtype(o.dtype)
            if rd != od:
                raise TypeError(
                    f"{where}: {_path(other_name, keypath)} has dtype {od.name} but "
                    f"{_path(ref_name, keypath)} needs {rd.name}; cast it with "
                    f".astype(jnp.{rd.name})."
                )
    return other


def tangent_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype a tangent or cotangent of a value of ``dtype`` has."""
    if dtype == np.dtype(float):
        return np.dtype(jnp.zeros((), float).dtype)  # follows jax_enable_x64
    if dtype == np.dtype(complex):
        return np.dtype(jnp.zeros((), complex).dtype)
    return dtype


def cast_python_scalars(tree: Any, like: Any) -> Any:
    """Turn Python numbers in ``tree`` into arrays of the dtype of ``like``'s leaves."""
    return jax.tree_util.tree_map(
        lambda t, r: jnp.asarray(t, tangent_dtype(leaf_dtype(r)))
        if not isinstance(t, ARRAY_TYPES) and leaf_dtype(t) is not None
        else t,
        tree,
        like,
    )


def check_int(value: Any, where: str, argname: str, *, minimum: int = 1,
              allow_none: bool = False, expect: str | None = None, type_hint: str = "",
              hint: str = "") -> int | None:
    """``value`` must be a Python (or NumPy) int ``>= minimum`` (or None with
    ``allow_none``). ``expect`` names what is wanted in the message (default "a positive
    int", "a non-negative int" for ``minimum=0``); ``type_hint`` is appended to the
    message for a value that is not an int, ``hint`` for one below ``minimum``.

    >>> check_int(3, "vmap", "chunk_size")
    3
    >>> check_int(0, "fit(f, ...)", "steps")
    Traceback (most recent call last):
        ...
    ValueError: fit(f, ...): steps must be a positive int, got 0.
    """
    if value is None and allow_none:
        return None
    expect = expect or ("a positive int" if minimum == 1 else "a non-negative int")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}: {argname} must be {expect}, got {value!r}{type_hint}.")
    if value < minimum:
        raise ValueError(f"{where}: {argname} must be {expect}, got {value}{hint}.")
    return int(value)


def check_positive_int(value: Any, where: str, argname: str, *, allow_none: bool = False,
                       hint: str = "") -> int | None:
    """``value`` must be a positive int (or None with ``allow_none``); :func:`check_int`."""
    return check_int(value, where, argname, allow_none=allow_none, hint=hint)


def check_chunk_size(chunk_size: Any, transform: str) -> int | None:
    """``chunk_size``: a positive int or None (everything in one pass)."""
    return check_int(chunk_size, transform, "chunk_size", allow_none=True,
                     expect="a positive int or None",
                     hint="; use chunk_size=None to compute everything in one pass")


def check_order(order: Any, transform: str) -> int:
    """A Taylor/derivative ``order``: a non-negative int."""
    return check_int(order, transform, "order", minimum=0,
                     type_hint=f" ({type(order).__name__}); pass e.g. order=3",
                     hint="; order=0 is the function itself, order=1 the first derivative")


def _key_shape(key: Any) -> tuple[str, tuple] | None:
    """``("typed", shape)`` for a typed PRNG key array, ``("raw", shape)`` for a uint32
    array whose last axis is 2 (raw keys), else None."""
    if isinstance(key, jax.Array) and is_key_dtype(key.dtype):
        return "typed", tuple(key.shape)
    if isinstance(key, (jax.Array, np.ndarray)) and key.dtype == np.uint32 and key.shape[-1:] == (2,):
        return "raw", tuple(key.shape)
    return None


def check_key(key: Any, where: str, *, required: str = "", alternatives: str = "") -> None:
    """``key`` must be one PRNG key: a typed key of shape ``()`` (``jax.random.key``) or a
    raw ``uint32[2]`` key (``jax.random.PRNGKey``). ``None`` (with ``required``, what to
    pass instead), a batch of keys and anything else are refused by name; the last
    message lists ``alternatives`` (what else the caller accepts) after the keys.

    >>> check_key(jax.random.key(0), "nn.dropout")
    >>> check_key(jax.random.split(jax.random.key(0)), "nn.dropout")
    Traceback (most recent call last):
    ValueError: nn.dropout: key must be one PRNG key, got an array of 2 keys (jax.random.split returns several); pass one of them, e.g. keys[0], or vmap over them.
    """
    if key is None:
        raise TypeError(f"{where}: key is required (JAX has no hidden random state); pass "
                        f"key=jax.random.key(0){required}.")
    kind = _key_shape(key)
    if kind in (("typed", ()), ("raw", (2,))):
        return
    if kind is not None and (kind[0] == "typed" or len(kind[1]) == 2):
        shape = kind[1] if kind[0] == "typed" else kind[1][:-1]
        what = (f"{shape[0]} " if len(shape) == 1 else f"{shape} of ") + ("raw keys" if kind[0] == "raw" else "keys")
        raise ValueError(f"{where}: key must be one PRNG key, got an array of {what} "
                         "(jax.random.split returns several); pass one of them, e.g. keys[0], "
                         "or vmap over them.")
    dtype = getattr(key, "dtype", None)
    got = type(key).__name__ + (f" of dtype {dtype} and shape {tuple(np.shape(key))}" if dtype is not None else "")
    raise TypeError(f"{where}: key must be one PRNG key (jax.random.key(seed), or a raw uint32 "
                    f"key of shape (2,){alternatives}); got {got}.")


def as_key(key: Any, where: str) -> jax.Array:
    """One typed PRNG key from a key, a raw ``uint32[2]`` key, an int seed or None
    (seed 0); a batch of keys (what ``jax.random.split`` returns) is refused by name.

    >>> as_key(3, "fit(f, ...)").shape
    ()
    """
    if key is None:
        return jax.random.key(0)
    if isinstance(key, int) and not isinstance(key, bool):
        return jax.random.key(key)
    check_key(key, where, alternatives=", an int seed, or None")
    return key if _key_shape(key)[0] == "typed" else jax.random.wrap_key_data(np.asarray(key))


def check_choice(value: Any, choices: Sequence[str], transform: str, argname: str) -> str:
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{transform}: unknown {argname}={value!r}; choose one of {options}.")
    return value


def replace_args(args: tuple, positions: tuple[int, ...], values: Sequence[Any]) -> tuple:
    """``args`` with ``args[positions[k]] = values[k]``."""
    new = list(args)
    for p, v in zip(positions, values):
        new[p] = v
    return tuple(new)


def closed_over(func: Callable, args: tuple, positions: tuple[int, ...],
                kwargs: dict | None = None, order: tuple | None = None) -> Callable:
    """The argnums closure: ``diff -> func(*args, **kwargs)`` with ``args[positions[k]]``
    replaced by ``diff[k]`` (a sequence, one entry per position), the other arguments
    closed over; with ``order`` (:func:`order_of` of the caller's differentiated
    arguments), ``diff``'s dicts are first rebuilt in the caller's key order.

    >>> closed_over(lambda a, b, c: (a, b, c), (1, 2, 3), (0, 2))((10, 30))
    (10, 2, 30)
    """
    kwargs = kwargs or {}

    def call(diff: Sequence[Any]) -> Any:
        if order is not None:
            diff = reorder(order, tuple(diff))
        return func(*replace_args(args, positions, diff), **kwargs)

    return call


def all_argnums(nargs: int) -> int | tuple[int, ...]:
    """``argnums`` naming every one of ``nargs`` positional arguments: ``0`` for one (a
    bare result), ``(0, 1, ...)`` for several (a tuple)."""
    return 0 if nargs == 1 else tuple(range(nargs))


def check_primals(primals: tuple, where: str, transform: str) -> None:
    """``vjp`` / ``linearize``: at least one primal, each differentiable."""
    if not primals:
        raise ValueError(f"{where}: expected at least one primal; call {transform}(f, x).")
    _check_primal_leaves(primals, where)


def _check_primal_leaves(primals: Sequence[Any], where: str) -> None:
    for i, p in enumerate(primals):
        check_differentiable(p, where, f"primals[{i}]")
    if not jax.tree_util.tree_leaves(primals):
        raise ValueError(
            f"{where}: expected at least one array among the primals, got none; pass the "
            "arrays to differentiate."
        )


def check_primals_tangents(primals: Any, tangents: Any, where: str) -> tuple[tuple, tuple]:
    """``jvp``/``hvp``/``vhp``: ``primals`` and ``tangents`` are tuples (or lists) of the
    same Python type and length, the primals differentiable, each tangent matching its
    primal's structure, shape and tangent dtype. Returns both as tuples."""
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
    if type(primals) is not type(tangents):
        raise ValueError(
            f"{where}: primals is a {type(primals).__name__} but tangents is a "
            f"{type(tangents).__name__}; tangents must have the same Python structure as "
            "primals (as torch.func requires)."
        )
    _check_primal_leaves(primals, where)
    tangents = match_tree(tuple(primals), tuple(tangents), where, "primals", "tangents")
    return tuple(primals), tangents
