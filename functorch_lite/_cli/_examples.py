"""Small built-in functions for the command line (``functorch-lite graph NAME``,
``functorch-lite explain NAME``): the lecture notes' worked examples and a 2-layer MLP,
each with deterministic arguments of small shapes.

>>> func, args = EXAMPLES["least_squares"].make()
>>> func.__name__, [a.shape for a in args]
('least_squares', [(3,), (6, 3), (6,)])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["EXAMPLES", "Example"]


def _rand(seed: int, *shape: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype=jnp.float32)


@dataclasses.dataclass(frozen=True)
class Example:
    """A named function and a maker of its arguments; differentiate ``args[0]``."""

    name: str
    formula: str
    make: Callable[[], tuple[Callable, tuple[Any, ...]]]


def least_squares(w, X, y):
    """z = ||Xw - y||^2; dz/dw = 2 (Xw - y)^T X."""
    return jnp.sum((X @ w - y) ** 2)


def dot_residual(w, x, y):
    """z = (<x, w> - y)^2; dz/dw = 2 (<x, w> - y) x."""
    return (jnp.dot(x, w) - y) ** 2


def linear(x, W, b):
    """L = sum((xW + b)^2) / 2; dL/dx = dL/dy W^T with dL/dy = y."""
    y = x @ W + b[None, :]
    return 0.5 * jnp.sum(y * y)


def mlp(params, x):
    """A 2-layer MLP's mean squared output: relu(x W1 + b1) W2 + b2."""
    h = jax.nn.relu(x @ params["W1"] + params["b1"][None, :])
    return jnp.mean((h @ params["W2"] + params["b2"][None, :]) ** 2)


def detach(x):
    """z = sum(stop_gradient(x * x) * x); dz/dx = x * x (PyTorch's detach)."""
    return jnp.sum(jax.lax.stop_gradient(x * x) * x)


def tanh_chain(x, W1, W2, W3):
    """R^8 -> R^6 -> R^4 -> R^2: y = W3 tanh(W2 tanh(W1 x)); a Jacobian to accumulate."""
    return W3 @ jnp.tanh(W2 @ jnp.tanh(W1 @ x))


EXAMPLES: dict[str, Example] = {e.name: e for e in [
    Example("least_squares", "z = ||Xw - y||^2",
            lambda: (least_squares, (_rand(0, 3), _rand(1, 6, 3), _rand(2, 6)))),
    Example("dot_residual", "z = (<x, w> - y)^2",
            lambda: (dot_residual, (_rand(0, 4), _rand(1, 4), jnp.float32(0.7)))),
    Example("linear", "L = ||xW + b||^2 / 2",
            lambda: (linear, (_rand(0, 4, 3), _rand(1, 3, 2), _rand(2, 2)))),
    Example("mlp", "mean((relu(x W1 + b1) W2 + b2)^2)",
            lambda: (mlp, ({"W1": _rand(0, 3, 8), "b1": _rand(1, 8), "W2": _rand(2, 8, 2),
                            "b2": _rand(3, 2)}, _rand(4, 5, 3)))),
    Example("detach", "z = sum(stop_gradient(x * x) * x)", lambda: (detach, (_rand(0, 4),))),
    Example("tanh_chain", "y = W3 tanh(W2 tanh(W1 x))",
            lambda: (tanh_chain, (_rand(0, 8), _rand(1, 6, 8), _rand(2, 4, 6), _rand(3, 2, 4)))),
]}
