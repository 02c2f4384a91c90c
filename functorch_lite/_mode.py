"""Which kind of accumulation is tracing the user's function right now.

``jax.custom_vjp`` has no forward rule, so a layer built on it cannot be traced by a
JVP. functorch_lite's forward-mode transforms (``jvp``, ``linearize``, ``jacfwd``, the
forward halves of ``hessian``, ``hvp``, ``derivative``) trace the user's function
inside :func:`forward_mode`; layers in :mod:`functorch_lite.nn` ask
:func:`in_forward_mode` and, when it is true, use their hand-written forward rule
(a ``jax.custom_jvp``) instead of their reverse rule.

The flag is read at trace time only; it costs nothing in compiled code. It is also part
of ``jax.jit``'s cache key, so a jitted function is traced once per mode.

Taylor mode (``jax.experimental.jet``) cannot trace any ``custom_jvp``/``custom_vjp``
function in JAX 0.10 (it raises ``UnexpectedTracerError``). A transform that runs
``jet`` traces the user's function inside :func:`taylor_mode`; layers then run their
primal function (plain ``jnp``, written to be safe at 0) with no custom rule at all.

>>> in_forward_mode()
False
>>> with forward_mode():
...     in_forward_mode()
True
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import jax

_state = threading.local()

# Part of jax.jit's cache key (public `jax.make_user_context`): a `jax.jit` function traced
# once outside these modes is traced again when called inside them, instead of reusing a
# trace made with the other rule (a cached custom_vjp trace cannot run forward mode).
_jit_key = jax.make_user_context(default_value=(False, False))


def _modes() -> tuple[bool, bool]:
    return in_forward_mode(), in_taylor_mode()


def in_forward_mode() -> bool:
    """True while one of this library's forward-mode transforms is tracing."""
    return getattr(_state, "depth", 0) > 0


@contextlib.contextmanager
def forward_mode() -> Iterator[None]:
    """Mark the enclosed tracing as forward-mode accumulation (re-entrant)."""
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        with _jit_key(_modes()):
            yield
    finally:
        _state.depth -= 1


def in_taylor_mode() -> bool:
    """True while a Taylor-mode (``jet``) transform of this library is tracing."""
    return getattr(_state, "taylor_depth", 0) > 0


@contextlib.contextmanager
def taylor_mode() -> Iterator[None]:
    """Mark the enclosed tracing as Taylor-mode propagation (re-entrant); layers in
    :mod:`functorch_lite.nn` then use no custom rule."""
    _state.taylor_depth = getattr(_state, "taylor_depth", 0) + 1
    try:
        with _jit_key(_modes()):
            yield
    finally:
        _state.taylor_depth -= 1
