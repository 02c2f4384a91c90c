"""Which kind of accumulation is tracing the user's function right now.

``jax.custom_vjp`` has no forward rule, so a layer built on it cannot be traced by a
JVP. functorch_lite's forward-mode transforms (``jvp``, ``linearize``, ``jacfwd``, the
forward halves of ``hessian``, ``hvp``, ``derivative``) trace the user's function
inside :func:`forward_mode`; layers in :mod:`functorch_lite.nn` ask
:func:`in_forward_mode` and, when it is true, use their hand-written forward rule
(a ``jax.custom_jvp``) instead of their reverse rule.

The flag is read at trace time only; it costs nothing in compiled code.

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

_state = threading.local()


def in_forward_mode() -> bool:
    """True while one of this library's forward-mode transforms is tracing."""
    return getattr(_state, "depth", 0) > 0


@contextlib.contextmanager
def forward_mode() -> Iterator[None]:
    """Mark the enclosed tracing as forward-mode accumulation (re-entrant)."""
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1
