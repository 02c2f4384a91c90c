"""What is left of the trace-time mode switch: Taylor mode only.

The layers of :mod:`functorch_lite.nn` no longer depend on the kind of accumulation
that traces them. Each is one ``jax.custom_jvp`` whose tangent rule JAX runs in forward
mode and transposes in reverse mode (see :mod:`functorch_lite.nn._common`), so they
work under raw ``jax.jvp``/``jax.grad``/``jax.hessian``/``jax.vmap``, Equinox, and this
library alike, with no context manager. :func:`forward_mode` is kept, harmless, so
that code written for the old switch keeps working: :func:`in_forward_mode` still
reports whether one of this library's forward-mode transforms is tracing (nothing in
the layers reads it; user code that branches on it is retraced per mode under
``jax.jit``).

One switch must remain: Taylor mode (``jax.experimental.jet``) cannot trace any
``custom_jvp``/``custom_vjp`` function in JAX 0.10 (``UnexpectedTracerError``). A
transform that runs ``jet`` traces the user's function inside :func:`taylor_mode`, and
the layers then expand their primal (plain ``jnp``, written to be safe at 0) with no
custom rule. Its default (off: the custom rule) is the one that works under every other
transform; raw ``jet`` on a layer needs ``with taylor_mode():``. The flag is part of
``jax.jit``'s cache key (``jax.make_user_context``), so a jitted function traced outside
Taylor mode is traced again inside it.

>>> in_taylor_mode()
False
>>> with taylor_mode():
...     in_taylor_mode()
True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax

# The one piece of mode state: (forward, taylor) flags, in jax.jit's cache key, so a
# jitted function traced once outside Taylor mode (with the layers' custom_jvp, which
# jet cannot trace) is traced again inside it. The forward flag stays in the key too (a
# retrace, never a wrong trace) for user code that still branches on in_forward_mode(),
# as the old layers did. A user context is per thread and restored on exit, so nesting
# (re-entrance) needs no counter.
_jit_key = jax.make_user_context(default_value=(False, False))


@contextlib.contextmanager
def _entered(forward: bool, taylor: bool) -> Iterator[None]:
    """Set the flags (or keep those already set) for the enclosed tracing."""
    was_forward, was_taylor = _jit_key.value
    with _jit_key((was_forward or forward, was_taylor or taylor)):
        yield


def in_forward_mode() -> bool:
    """True while one of this library's forward-mode transforms is tracing (informative
    only: the layers do not depend on it).

    >>> in_forward_mode()
    False
    """
    return _jit_key.value[0]


def forward_mode() -> contextlib.AbstractContextManager[None]:
    """A no-op kept for compatibility (re-entrant; ``fl.nn.forward_mode`` is public): the
    layers work in forward mode without it. It only makes :func:`in_forward_mode` true
    inside.

    >>> with forward_mode():
    ...     in_forward_mode()
    True
    """
    return _entered(True, False)


def in_taylor_mode() -> bool:
    """True while a Taylor-mode (``jet``) transform of this library is tracing."""
    return _jit_key.value[1]


def taylor_mode() -> contextlib.AbstractContextManager[None]:
    """Mark the enclosed tracing as Taylor-mode propagation (re-entrant); layers in
    :mod:`functorch_lite.nn` then use no custom rule."""
    return _entered(False, True)
