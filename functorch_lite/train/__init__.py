"""Jit-compiled optax training on top of functorch_lite's transforms.

- :func:`train_step`: one pure, compiled, buffer-donating optimizer step.
- :func:`fit`: the loop: gradient accumulation, several steps per dispatch, orbax
  checkpoints that survive SIGKILL and resume bitwise-exactly, a tqdm progress bar,
  data parallelism over a ``jax.sharding.Mesh``.
- :func:`plot_history`: the loss curve as a PNG (needs matplotlib, the ``plot`` extra).

See docs/train.md.
"""

from ._fit import FitResult as FitResult, fit as fit
from ._plot import plot_history as plot_history
from ._sharding import cpu_device_flags as cpu_device_flags
from ._step import train_step as train_step

__all__ = ["train_step", "fit", "FitResult", "plot_history", "cpu_device_flags"]
