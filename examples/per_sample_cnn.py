"""Per-sample gradients of a small CNN: torch.func's tutorial, ported to functorch_lite.

The model of the tutorial (https://pytorch.org/tutorials/intermediate/per_sample_grads.html):
conv 1->32 (3x3) -> relu -> conv 32->64 (3x3) -> relu -> max_pool 2 -> flatten ->
linear 9216->128 -> relu -> linear 128->10 -> log_softmax, NLL loss, MNIST-sized inputs
(1x28x28), batch 64. Parameters are stored as torch stores them (conv ``(out, in, kh, kw)``;
linear here as ``(in, out)``, the layout ``fl.nn.linear`` takes).

``per_sample_grads`` is the tutorial's ``vmap(grad(compute_loss), in_dims=(None, 0, 0))``;
``fl.nn.conv`` gives each sample's conv weight gradient as a patch product (batched
matmuls, one per kernel offset) rather than the grouped convolution that ``vmap`` of
``lax.conv``'s own rule becomes. ``lax_model`` is the same network written by hand with ``lax``, the peer that
raw JAX users write.

Run: ``python examples/per_sample_cnn.py`` (checks against a Python loop over samples).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

import functorch_lite as fl
from functorch_lite import nn


def init(key: jax.Array) -> dict:
    """torch's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases."""
    shapes = {"conv1": ((32, 1, 3, 3), 9), "conv2": ((64, 32, 3, 3), 288),
              "fc1": ((9216, 128), 9216), "fc2": ((128, 10), 128)}
    params = {}
    for (name, (shape, fan_in)), k in zip(shapes.items(), jax.random.split(key, len(shapes))):
        kw, kb = jax.random.split(k)
        bound = 1 / math.sqrt(fan_in)
        out = shape[0] if name.startswith("conv") else shape[1]
        params[name] = {"w": jax.random.uniform(kw, shape, jnp.float32, -bound, bound),
                        "b": jax.random.uniform(kb, (out,), jnp.float32, -bound, bound)}
    return params


def model(params: dict, x: jax.Array) -> jax.Array:
    """Log-probabilities ``(N, 10)`` of ``x`` ``(N, 1, 28, 28)`` (or one sample ``(1, 28, 28)``)."""
    h = jax.nn.relu(nn.conv(x, params["conv1"]["w"], params["conv1"]["b"]))
    h = jax.nn.relu(nn.conv(h, params["conv2"]["w"], params["conv2"]["b"]))
    h = nn.max_pool(h, (2, 2))   # a tuple: 2-D pooling of a batch or of one sample
    h = h.reshape(h.shape[:-3] + (-1,))
    h = jax.nn.relu(nn.linear(h, params["fc1"]["w"], params["fc1"]["b"]))
    return jax.nn.log_softmax(nn.linear(h, params["fc2"]["w"], params["fc2"]["b"]), axis=-1)


def lax_model(params: dict, x: jax.Array) -> jax.Array:
    """The same network written with ``lax`` directly (raw JAX autodiff of it)."""
    dn = ("NCHW", "OIHW", "NCHW")

    def conv(h, p):
        y = lax.conv_general_dilated(h, p["w"], (1, 1), "VALID", dimension_numbers=dn)
        return y + p["b"].reshape(1, -1, 1, 1)

    batched = x.ndim == 4
    h = x if batched else x[None]
    h = jax.nn.relu(conv(h, params["conv1"]))
    h = jax.nn.relu(conv(h, params["conv2"]))
    h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    h = h.reshape(h.shape[0], -1)
    h = jax.nn.relu(h @ params["fc1"]["w"] + params["fc1"]["b"][None])
    out = jax.nn.log_softmax(h @ params["fc2"]["w"] + params["fc2"]["b"][None], axis=-1)
    return out if batched else out[0]


def loss(params: dict, x: jax.Array, target: jax.Array, *, forward=model) -> jax.Array:
    """Negative log-likelihood of one sample (``x`` ``(1, 28, 28)``, integer ``target``)."""
    return -forward(params, x)[target]


def per_sample_grads(params: dict, xs: jax.Array, targets: jax.Array, *, chunk_size=None):
    """One gradient per sample: the tutorial's ``vmap(grad(loss), in_dims=(None, 0, 0))``."""
    return fl.vmap(fl.grad(loss), in_dims=(None, 0, 0), chunk_size=chunk_size)(params, xs, targets)


def data(key: jax.Array, batch: int = 64):
    kx, ky = jax.random.split(key)
    return jax.random.normal(kx, (batch, 1, 28, 28)), jax.random.randint(ky, (batch,), 0, 10)


def main() -> None:
    params = init(jax.random.key(0))
    xs, ys = data(jax.random.key(1), 8)
    fast = jax.jit(per_sample_grads)(params, xs, ys)
    loop = [jax.grad(loss)(params, xs[i], ys[i]) for i in range(len(xs))]
    for name in params:
        for leaf in ("w", "b"):
            want = jnp.stack([g[name][leaf] for g in loop])
            err = float(jnp.max(jnp.abs(fast[name][leaf] - want)))
            print(f"{name}.{leaf}: per-sample shape {tuple(fast[name][leaf].shape)}, "
                  f"max |vmap - loop| = {err:.1e}")


if __name__ == "__main__":
    main()
