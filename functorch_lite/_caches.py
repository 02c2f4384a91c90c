"""Every memo of the library, registered in one place.

A cache here is bounded (least recently used entries go first), holds no strong
reference to a user callable (:class:`WeakCache` keys on ``weakref.ref(func)``, so the
entry dies with the function), and is cleared by :func:`clear_caches`. Modules never
keep a bare ``dict`` or ``functools.lru_cache`` of their own: they ask :func:`lru` or
:func:`weak` for a registered one.

>>> plans = lru("doctest.plans", maxsize=2)
>>> plans.put("a", 1); plans.put("b", 2); plans.put("c", 3)
>>> plans.get("a") is None, plans.get("c")
(True, 3)
>>> clear_caches()
>>> len(plans)
0
"""

from __future__ import annotations

import collections
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["LRUCache", "WeakCache", "lru", "weak", "clear_caches", "sizes"]

_MISSING = object()
_registry: dict[str, "LRUCache | WeakCache"] = {}
_registry_lock = threading.Lock()


class _Bounded:
    """A bounded, thread-safe ordered mapping: the storage both caches share."""

    def __init__(self, name: str, maxsize: int):
        if maxsize < 1:
            raise ValueError(f"cache {name!r}: maxsize must be >= 1, got {maxsize}")
        self.name, self.maxsize = name, maxsize
        self._data: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def _get(self, key: Hashable, default: Any) -> Any:
        with self._lock:
            value = self._data.get(key, _MISSING)
            if value is _MISSING:
                return default
            self._data.move_to_end(key)
            return value

    def _put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)}/{self.maxsize})"


class LRUCache(_Bounded):
    """A bounded, thread-safe mapping from hashable keys to values (LRU eviction).

    Keys must not hold user functions or arrays strongly: key on what determines the
    value (a jaxpr's text, shapes, dtypes, options), or use :class:`WeakCache`.
    """

    def get(self, key: Hashable, default: Any = None) -> Any:
        return self._get(key, default)

    def put(self, key: Hashable, value: Any) -> None:
        self._put(key, value)

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        value = self._get(key, _MISSING)
        if value is _MISSING:
            value = compute()
            self._put(key, value)
        return value


class WeakCache(_Bounded):
    """A bounded cache keyed on a user callable (weakly) plus a hashable sub-key.

    ``get(func, key)`` / ``put(func, key, value)``. When ``func`` is garbage-collected
    its entries go with it; at most ``maxsize`` (callable, key) entries live at once.
    A callable that cannot be weakly referenced is simply not cached.
    """

    def _ref(self, func: Callable) -> "weakref.ref | None":
        try:
            return weakref.ref(func, self._forget)
        except TypeError:
            return None

    def _forget(self, ref: weakref.ref) -> None:
        with self._lock:
            for k in [k for k in self._data if k[0] is ref or k[0] == ref]:
                del self._data[k]

    def get(self, func: Callable, key: Hashable = None, default: Any = None) -> Any:
        ref = self._ref(func)
        return default if ref is None else self._get((ref, key), default)

    def put(self, func: Callable, key: Hashable, value: Any) -> None:
        ref = self._ref(func)
        if ref is not None:
            self._put((ref, key), value)

    def get_or_compute(self, func: Callable, key: Hashable, compute: Callable[[], Any]) -> Any:
        value = self.get(func, key, _MISSING)
        if value is _MISSING:
            value = compute()
            self.put(func, key, value)
        return value


def _register(cache):
    with _registry_lock:
        if cache.name in _registry:
            raise ValueError(f"a cache named {cache.name!r} is registered already")
        _registry[cache.name] = cache
    return cache


def lru(name: str, maxsize: int = 128) -> LRUCache:
    """A new registered :class:`LRUCache` (``name`` is unique, e.g. ``"planner.plans"``)."""
    return _register(LRUCache(name, maxsize))


def weak(name: str, maxsize: int = 128) -> WeakCache:
    """A new registered :class:`WeakCache` keyed weakly on user callables."""
    return _register(WeakCache(name, maxsize))


def clear_caches() -> None:
    """Forget every plan and memo of functorch_lite (all caches are registered here).

    Compiled programs that ``jax.jit`` holds are JAX's own; ``jax.clear_caches()``
    drops those.

    >>> import jax.numpy as jnp
    >>> import functorch_lite as fl
    >>> _ = fl.jacobian(jnp.sin)(jnp.ones(2))      # plans a Jacobian: a cache entry
    >>> clear_caches()
    >>> sum(entries for entries, _ in sizes().values())
    0
    """
    with _registry_lock:
        caches = list(_registry.values())
    for cache in caches:
        cache.clear()


def sizes() -> dict[str, tuple[int, int]]:
    """``{name: (entries, maxsize)}`` of every registered cache (for tests and debugging)."""
    with _registry_lock:
        return {name: (len(c), c.maxsize) for name, c in _registry.items()}
