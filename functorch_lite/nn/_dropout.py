r"""Dropout with explicit, typed PRNG keys.

``y = x * m / (1 - rate)`` with ``m ~ Bernoulli(1 - rate)`` drawn from ``key``; so
``E[y] = x``. The rule is the formula's own (JAX derives it; it is already minimal):
``dy = dx * m / (1 - rate)``, ``dL/dx = G * m / (1 - rate)``; reverse mode stores the
boolean mask ``m`` (one byte per element). The mask is a function of ``key`` only, so a
gradient sees the same mask as the forward pass, and ``vmap`` over a batch of keys
(``jax.random.split(key, n)``) draws a mask per sample.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from .. import _args
from . import _common

__all__ = ["dropout"]


def dropout(x: jax.Array, rate: float, key: jax.Array | None = None, *,
            deterministic: bool = False) -> jax.Array:
    r"""Dropout: zero each entry with probability ``rate``, scale the rest by
    ``1 / (1 - rate)`` (inverted dropout, as ``torch.nn.functional.dropout``).

    ``rate`` is a Python float in ``[0, 1)``; ``key`` a typed key (``jax.random.key``;
    legacy ``PRNGKey`` arrays work too); ``deterministic=True`` (evaluation) or
    ``rate=0`` returns ``x`` unchanged and needs no key.

    >>> import jax, jax.numpy as jnp
    >>> y = dropout(jnp.ones(8), 0.5, jax.random.key(0))
    >>> sorted(set(y.tolist()))                      # kept entries scaled by 2
    [0.0, 2.0]
    >>> dropout(jnp.ones(3), 0.5, deterministic=True)
    Array([1., 1., 1.], dtype=float32)
    """
    where = f"nn.dropout(x, rate={rate!r}, key)"
    _common.check_float(x, where, "x")
    if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, numbers.Real):
        raise TypeError(f"{where}: rate must be a Python float in [0, 1), got "
                        f"{type(rate).__name__}; it is a static constant, e.g. rate=0.1.")
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{where}: rate must lie in [0, 1) (the probability of dropping an "
                         f"entry), got {rate}.")
    if not isinstance(deterministic, bool):
        raise TypeError(f"{where}: deterministic must be True or False, got {deterministic!r}.")
    if deterministic or rate == 0.0:
        return x
    _args.check_key(key, where, required=", a fresh one per step (jax.random.split), "
                    "or deterministic=True to switch dropout off")
    keep = jax.random.bernoulli(key, 1.0 - rate, jnp.shape(x))
    scale = jnp.asarray(1.0 / (1.0 - rate), x.dtype)
    return jnp.where(keep, x * scale, jnp.zeros((), x.dtype))
