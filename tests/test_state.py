"""State in one registry: every memo the library keeps is registered in
``functorch_lite._caches``, bounded, weakly keyed on user callables, and cleared by
``fl.clear_caches()``. Many distinct user functions through every cached path of the
transforms, higher derivatives and ``fit`` leave every cache within its bound."""

import gc

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import functorch_lite as fl
import functorch_lite.train  # noqa: F401
from functorch_lite import _caches


def _within_bounds() -> None:
    for name, (entries, maxsize) in _caches.sizes().items():
        assert entries <= maxsize, (name, entries, maxsize)


def _total() -> int:
    return sum(entries for entries, _ in _caches.sizes().values())


@pytest.mark.slow
def test_a_thousand_lambdas_leave_every_cache_bounded():
    fl.clear_caches()
    x = jnp.array([0.3, -0.2, 0.5], jnp.float32)
    data = (jnp.ones((4, 3), jnp.float32), jnp.ones(4, jnp.float32))
    sgd = optax.sgd(0.1)
    keep = []
    for i in range(1000):
        c = np.float32(i + 1)
        f = lambda x, c=c: jnp.sum(jnp.sin(c * x) ** 2)          # noqa: E731
        keep.append(f)
        fl.hessian(f)(x)                                        # the planner's plans
        fl.hvp(f, (x,), (x,))
        fl.hessian_diag(f)(x)
        fl.jacobian(lambda x, f=f: jnp.stack([f(x), f(2 * x)]))(x)
        fl.vmap(f)(jnp.stack([x, x]))
        if i % 50 == 0:                                         # fit compiles: fewer of them
            loss = lambda w, batch, c=c: jnp.mean((batch[0] @ w - c * batch[1]) ** 2)  # noqa: E731
            keep.append(loss)
            fl.train.fit(loss, jnp.zeros(3), sgd, data, steps=1, batch_size=2 + i % 3, progress=False)
        _within_bounds()
    assert _total() > 0
    fl.clear_caches()
    assert _total() == 0


def test_weak_caches_forget_dead_functions():
    fl.clear_caches()
    data = (jnp.ones((4, 3), jnp.float32), jnp.ones(4, jnp.float32))
    for i in range(3):
        loss = lambda w, batch, i=i: jnp.mean((batch[0] @ w - i * batch[1]) ** 2)  # noqa: E731
        fl.train.fit(loss, jnp.zeros(3), optax.sgd(0.1), data, steps=1, progress=False)
    del loss
    gc.collect()
    assert _caches.sizes()["train.fit_chunk"][0] == 0
    _within_bounds()
