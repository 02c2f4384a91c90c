"""Jit-compiled optax training on top of functorch_lite's transforms.

- :func:`train_step`: one pure, compiled, buffer-donating optimizer step.
- :func:`fit`: the loop: gradient accumulation, several steps per dispatch, orbax
  checkpoints that survive SIGKILL and resume bitwise-exactly, a tqdm progress bar,
  data parallelism over a ``jax.sharding.Mesh``.
- :func:`plot_history`: the loss curve as a PNG (needs matplotlib, the ``plot`` extra).

See docs/train.md.

>>> import jax.numpy as jnp, optax
>>> from functorch_lite import train
>>> loss = lambda w, batch: jnp.mean((batch[0] @ w - batch[1]) ** 2)   # (xw - y)^2
>>> result = train.fit(loss, jnp.zeros(2), optax.sgd(0.1), (jnp.ones((4, 2)), jnp.ones(4)),
...                    steps=3, progress=False)
>>> result.step
3
"""

from ._fit import FitResult as FitResult, fit as fit
from ._plot import plot_history as plot_history
from ._sharding import cpu_device_flags as cpu_device_flags
from ._step import train_step as train_step

__all__ = ["train_step", "fit", "FitResult", "plot_history", "cpu_device_flags"]
