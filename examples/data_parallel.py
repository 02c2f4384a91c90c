"""Data parallelism with fit: a mesh over the devices, batches sharded over its "data"
axis, parameters replicated; the result equals one device's up to float32 round-off.

On a CPU-only machine JAX shows one device; this script asks XLA for 4 host "devices"
(set before JAX starts) so the sharded program really runs on 4 partitions, with the
in-process collective timeout raised (`train.cpu_device_flags`; fit refuses a CPU mesh
without it, since XLA's 40 s default aborts runs on a loaded machine, see docs/scale.md):

    python examples/data_parallel.py

On several hosts, start the same script on every host after
`jax.distributed.initialize()` (see docs/train.md); `jax.make_mesh` then spans all
hosts' devices and each host feeds its own rows.
"""

from __future__ import annotations

import os

from functorch_lite.train import cpu_device_flags  # noqa: E402 - imports jax; its backend starts later

os.environ.setdefault("XLA_FLAGS", cpu_device_flags(4))
if "--xla_cpu_collective_call_terminate_timeout_seconds" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_cpu_collective_call_terminate_timeout_seconds=3600"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from functorch_lite import train  # noqa: E402


def loss(params, batch):
    x, y = batch
    h = jnp.tanh(x @ params["W1"] + params["b1"][None, :])
    return jnp.mean(((h @ params["W2"])[:, 0] - y) ** 2)


def main(steps=200, progress=True):
    n = jax.device_count()
    mesh = jax.make_mesh((n,), ("data",))  # explicit axes by default in current JAX
    rng = np.random.RandomState(0)
    x = rng.randn(4096, 16).astype(np.float32)
    y = np.tanh(x @ rng.randn(16)).astype(np.float32)
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"W1": jax.random.normal(k1, (16, 64)) / 4, "b1": jnp.zeros(64),
              "W2": jax.random.normal(k2, (64, 1)) / 8}
    kw = dict(steps=steps, batch_size=256, steps_per_call=10, key=jax.random.key(1), progress=progress)
    sharded = train.fit(loss, params, optax.adam(1e-3), (x, y), mesh=mesh, **kw)
    single = train.fit(loss, params, optax.adam(1e-3), (x, y), **kw)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
               zip(jax.tree.leaves(sharded.params), jax.tree.leaves(single.params)))
    print(f"{n} devices, mesh {dict(mesh.shape)} ({mesh.axis_types[0]} axes)")
    print(f"final loss: {n} devices {sharded.history['loss'][-1]:.6f}, one device {single.history['loss'][-1]:.6f}")
    print(f"max |params difference| = {diff:.2e} (float32 round-off)")
    return diff


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    main(parser.parse_args().steps)
