"""The empirical neural tangent kernel, its per-sample Jacobians split over a device mesh.

The model is the one of torch.func's "Neural Tangent Kernels" tutorial: three 3x3
convolutions (3 -> 32 -> 32 -> 32 channels, ReLU between) and a linear layer to 10 logits,
on 3 x 32 x 32 images. For inputs x1, x2 the NTK is

    NTK(x1, x2)[a, b] = sum_p  d f_a(x1) / d theta_p  *  d f_b(x2) / d theta_p,

the contraction of the two per-sample Jacobians over the parameters (the tutorial's
"Jacobian contraction" method). Each per-sample Jacobian is ``jacrev`` of the network in
its parameters (10 rows, 10 x 235k floats at 32 x 32). Over a mesh the kernel is computed
blockwise (``functorch_lite._mesh.sharded_pairs``): each device computes the Jacobians of
its share of x1 and of x2, and the x2 blocks travel around the devices (a ring), so no
device holds all of either set's Jacobians (an all-gathered J(x2) would put all of them on
every device) and none computes more than its share.

On a CPU-only machine JAX shows one device, so this script asks for 4 simulated ones
(set before JAX starts; `train.cpu_device_flags` also raises XLA's in-process collective
timeout, see docs/scale.md):

    python examples/ntk_mesh.py [--train 20 --test 5 --size 32]

It prints the NTK's shape and its largest difference from one device's.
"""

from __future__ import annotations

import os

from functorch_lite.train import cpu_device_flags  # noqa: E402 - imports jax; its backend starts later

os.environ.setdefault("XLA_FLAGS", cpu_device_flags(4))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import functorch_lite as fl  # noqa: E402
from functorch_lite._mesh import sharded_pairs  # noqa: E402


def init_cnn(key: jax.Array, size: int = 32) -> dict:
    """Parameters of the tutorial's CNN, torch's default init (uniform in +-1/sqrt(fan_in))."""
    def uniform(k, shape, fan_in):
        bound = 1.0 / fan_in ** 0.5
        return jax.random.uniform(k, shape, jnp.float32, -bound, bound)

    keys = jax.random.split(key, 8)
    params, channels = {}, [3, 32, 32, 32]
    for i in range(3):
        fan_in = channels[i] * 9
        params[f"conv{i + 1}"] = {"w": uniform(keys[2 * i], (channels[i + 1], channels[i], 3, 3), fan_in),
                                  "b": uniform(keys[2 * i + 1], (channels[i + 1],), fan_in)}
    flat = 32 * (size - 6) ** 2            # 21632 at 32 x 32, as in the tutorial
    params["fc"] = {"w": uniform(keys[6], (10, flat), flat), "b": uniform(keys[7], (10,), flat)}
    return params


def cnn(params: dict, x: jax.Array) -> jax.Array:
    """Logits (10,) of one image ``x`` (3, H, W)."""
    h = x[None]
    for i in range(3):
        p = params[f"conv{i + 1}"]
        h = jax.lax.conv_general_dilated(h, p["w"], (1, 1), "VALID",
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        h = h + p["b"][None, :, None, None]
        if i < 2:
            h = jax.nn.relu(h)
    return params["fc"]["w"] @ h.reshape(-1) + params["fc"]["b"]


def contract(j1: dict, j2: dict) -> jax.Array:
    """NTK block (N, M, 10, 10) from per-sample Jacobians (pytrees of (N, 10, ...) and
    (M, 10, ...) leaves): one matrix product per parameter, summed."""
    total = 0
    for a, b in zip(jax.tree.leaves(j1), jax.tree.leaves(j2)):
        n, m = a.shape[0], b.shape[0]
        total = total + a.reshape(n * 10, -1) @ b.reshape(m * 10, -1).T
    return total.reshape(n, 10, m, 10).transpose(0, 2, 1, 3)


def ntk(params: dict, x1: jax.Array, x2: jax.Array, mesh=None) -> jax.Array:
    """NTK (N, M, 10, 10) of the samples x1 (N, ...) against x2 (M, ...): per-sample
    Jacobians contracted over every parameter. With ``mesh``, blockwise over a ring
    (``sharded_pairs``): each device computes the Jacobians of its N / d samples of x1
    and M / d of x2, contracts, and passes its x2 block on to the next device, d times;
    no device holds all of either set, so memory (and work) per device falls as 1 / d."""
    per_sample = fl.vmap(fl.jacrev(cnn), in_dims=(None, 0))
    if mesh is None:
        return contract(per_sample(params, x1), per_sample(params, x2))
    return sharded_pairs(per_sample, contract, x1, x2, mesh=mesh, operands=(params,))


def main(n_train: int = 20, n_test: int = 5, size: int = 32) -> float:
    n = jax.device_count()
    mesh = jax.make_mesh((n,), ("data",))
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = init_cnn(k1, size)
    x_train = jax.random.normal(k2, (n_train, 3, size, size))
    x_test = jax.random.normal(k3, (n_test, 3, size, size))
    split = jax.jit(lambda p, a, b: ntk(p, a, b, mesh))(params, x_train, x_test)
    single = jax.jit(ntk)(params, x_train, x_test)
    diff = float(jnp.max(jnp.abs(split - single)) / jnp.max(jnp.abs(single)))
    print(f"NTK {tuple(split.shape)} over {n} devices (mesh {dict(mesh.shape)}); "
          f"{sum(x.size for x in jax.tree.leaves(params))} parameters")
    print(f"max relative difference from one device = {diff:.2e}")
    return diff


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default in (("--train", 20), ("--test", 5), ("--size", 32)):
        parser.add_argument(flag, type=int, default=default)
    a = parser.parse_args()
    main(a.train, a.test, a.size)
