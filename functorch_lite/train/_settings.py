"""What determines a ``fit`` run, as JSON-able data a checkpoint records and a resume compares.

A resumed run must be the run that was interrupted: the same optimizer with the same
hyper-parameters, the same loss function, the same data, batches and key. optax keeps an
optimizer's hyper-parameters in the closures of its ``init``/``update`` functions (and,
under ``optax.inject_hyperparams``, in the optimizer state), so :func:`describe` reads
them from there: a function is described by its name, a hash of its code, and the
values it closes over (recursively, and the same-module functions and constants its
code names as globals). The result is a flat ``{"scale_by_adam.b1": "0.9", ...}`` so a
refused resume can say which setting changed.

Python numbers, strings and small arrays are recorded by value, large arrays by shape,
dtype and a SHA-256 of their bytes, other objects by their type's name. Code is hashed
from its bytecode and constants, not its line numbers (moving a function does not
change it; a new Python version does, which ``resume="force"`` gets past).
"""

from __future__ import annotations

import functools
import hashlib
import types
from typing import Any

import jax
import numpy as np

from .. import _args

__all__ = ["describe", "array_digest", "data_digest", "optimizer_settings", "loss_settings", "diff"]

_MAX_DEPTH = 8
_MAX_ITEMS = 64
_SMALL = 16


def array_digest(x: Any) -> str:
    a = np.ascontiguousarray(np.asarray(x))
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


def data_digest(arrays: tuple) -> str:
    return hashlib.sha256("".join(array_digest(x) for x in arrays).encode()).hexdigest()[:16]


def _code_digest(code: types.CodeType) -> str:
    h = hashlib.sha256()

    def feed(c: types.CodeType) -> None:
        h.update(c.co_code)
        h.update(repr(c.co_names).encode())
        h.update(repr(c.co_varnames).encode())
        for k in c.co_consts:
            if isinstance(k, types.CodeType):
                feed(k)
            else:
                h.update(repr(k).encode())

    feed(code)
    return h.hexdigest()[:16]


def _value(x: Any) -> str | None:
    """A scalar-like value's text, or None for anything else."""
    if x is None or isinstance(x, (bool, int, float, complex, str, bytes)):
        return repr(x)
    if isinstance(x, np.dtype) or (isinstance(x, type) and issubclass(x, np.generic)):
        return f"dtype {np.dtype(x)}"
    if isinstance(x, (np.ndarray, np.generic, jax.Array)) and not isinstance(x, jax.core.Tracer):
        try:
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                x = jax.random.key_data(x)
            if np.size(x) <= _SMALL:
                return repr(np.asarray(x).tolist()) + f" {np.asarray(x).dtype}"
            return f"array{tuple(np.shape(x))} {np.asarray(x).dtype} sha256:{array_digest(x)}"
        except Exception:  # a deleted (donated) or not fully addressable array
            return f"array{tuple(np.shape(x))} {x.dtype} (unreadable)"
    return None


def _short(qualname: str) -> str:
    return qualname.replace(".<locals>", "")


def describe(obj: Any, name: str) -> dict[str, str]:
    """The flat ``{setting: value}`` that identifies ``obj`` (a function, an optimizer...)."""
    walker = _Walker()
    walker.walk(obj, name, 0)
    return walker.out


class _Walker:
    """``describe``'s walk: the settings found so far, and the containers already seen."""

    def __init__(self) -> None:
        self.out: dict[str, str] = {}
        self.seen: set[int] = set()

    def put(self, key: str, text: str) -> None:
        k, i = key, 2
        while k in self.out:
            k, i = f"{key}#{i}", i + 1
        self.out[k] = text

    def walk(self, x: Any, path: str, depth: int) -> None:
        text = _value(x)
        if text is not None:
            self.put(path, text)
            return
        if depth > _MAX_DEPTH or id(x) in self.seen:
            return
        if isinstance(x, (tuple, list, dict, functools.partial)):
            self.seen.add(id(x))
            for item, where in _parts(x, path):
                self.walk(item, where, depth + 1)
            return
        if isinstance(x, types.MethodType):
            self.walk(x.__func__, path, depth + 1)
            return
        if isinstance(x, types.FunctionType):
            self.seen.add(id(x))
            self.function(x, path, depth)
            return
        wrapped = getattr(x, "__wrapped__", None)  # jax.jit and functools.wraps keep the function
        if wrapped is not None and callable(wrapped):
            self.walk(wrapped, path, depth + 1)
            return
        if callable(x) and hasattr(type(x), "__call__") and not isinstance(x, type):
            self.put(path or "callable", f"an instance of {type(x).__qualname__}")
            return
        self.put(path or "object", f"a {type(x).__qualname__}")

    def function(self, x: types.FunctionType, path: str, depth: int) -> None:
        """A function: its code's digest, the values it closes over and its defaults, and the
        same-module functions and constants its code names as globals."""
        fn = _short(x.__qualname__)
        outer = fn.split(".")[0]
        self.put(f"{path}:{fn}" if path else fn, f"code sha256:{_code_digest(x.__code__)}")
        for var, cell in zip(x.__code__.co_freevars, x.__closure__ or ()):
            try:
                self.walk(cell.cell_contents, f"{outer}.{var}", depth + 1)
            except ValueError:  # an empty cell
                pass
        for i, d in enumerate(x.__defaults__ or ()):
            self.walk(d, f"{outer}.default[{i}]", depth + 1)
        for k, d in (x.__kwdefaults__ or {}).items():
            self.walk(d, f"{outer}.{k}", depth + 1)
        glb = x.__globals__
        for g in x.__code__.co_names:
            if g not in glb:  # an attribute's name, or a builtin
                continue
            v = glb[g]
            if isinstance(v, types.FunctionType) and v.__module__ == x.__module__:
                self.walk(v, "", depth + 1)
            elif _value(v) is not None and not isinstance(v, type):
                self.walk(v, f"{x.__module__}.{g}", depth + 1)


def _parts(x: Any, path: str) -> list[tuple[Any, str]]:
    """The items of a tuple, list, dict or ``functools.partial``, each with its path."""
    if isinstance(x, functools.partial):
        return [(x.func, path), *((a, f"{path}.args[{i}]") for i, a in enumerate(x.args)),
                *((v, f"{path}.{k}") for k, v in x.keywords.items())]
    if isinstance(x, dict):
        return [(x[k], f"{path}[{k!r}]") for k in list(x)[:_MAX_ITEMS]]
    fields = getattr(x, "_fields", None)
    return [(item, f"{path}.{fields[i]}" if fields else f"{path}[{i}]") for i, item in enumerate(x[:_MAX_ITEMS])]


def optimizer_settings(optimizer: Any, init_state: Any) -> dict[str, str]:
    """The optimizer's hyper-parameters: its functions' closures, and the scalar leaves of
    its initial state (``optax.inject_hyperparams`` keeps them there)."""
    out = describe((getattr(optimizer, "init", None), getattr(optimizer, "update", None)), "optimizer")
    for p, leaf in jax.tree_util.tree_leaves_with_path(init_state):
        if np.size(leaf) == 1 and not jax.dtypes.issubdtype(np.asarray(leaf).dtype if not isinstance(leaf, jax.Array) else leaf.dtype, jax.dtypes.prng_key):
            out[f"opt_state{jax.tree_util.keystr(p)}"] = repr(np.asarray(leaf).item())
    return out


def diff(saved: dict, now: dict, limit: int = 4) -> str:
    """``a was x, now y; ...`` for the settings that differ (at most ``limit``)."""
    keys = [k for k in dict.fromkeys([*saved, *now]) if saved.get(k) != now.get(k)]
    parts = []
    for k in keys[:limit]:
        a, b = saved.get(k, "absent"), now.get(k, "absent")
        parts.append(f"{k}: saved {a}, this call {b}")
    more = f"; and {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(parts) + more


def loss_settings(loss_fn: Any) -> dict[str, str]:
    return describe(loss_fn, "") or {"loss_fn": _args.func_name(loss_fn)}
