"""Train a small MLP (plain jnp, no framework) on a 1-D regression with fit: mini-batches
drawn from a key, gradient accumulation, 8 steps per compiled call, checkpoints every
200 steps (run it twice: the second run resumes and finds the work done), and the loss
curve as a PNG.

    python examples/train_mlp.py [--steps 2000] [--checkpoint-dir /tmp/mlp_ckpt] [--png loss.png]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

from functorch_lite import train


def init(key, sizes=(1, 64, 64, 1)):
    keys = jax.random.split(key, len(sizes) - 1)
    return [{"W": jax.random.normal(k, (m, n)) * np.sqrt(2.0 / m), "b": jnp.zeros(n)}
            for k, m, n in zip(keys, sizes[:-1], sizes[1:])]


def apply(params, x):
    for layer in params[:-1]:
        x = jax.nn.gelu(x @ layer["W"] + layer["b"][None, :])
    return x @ params[-1]["W"] + params[-1]["b"][None, :]


def loss(params, batch):
    x, y = batch
    return jnp.mean((apply(params, x) - y) ** 2)


def make_data(n=2048, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.uniform(-3, 3, (n, 1)).astype(np.float32)
    y = (np.sin(2 * x) + 0.3 * x + 0.05 * rng.randn(n, 1)).astype(np.float32)
    return x, y


def main(steps=2000, checkpoint_dir=None, png=None, progress=True):
    data = make_data()
    optimizer = optax.adam(optax.cosine_decay_schedule(3e-3, steps))
    result = train.fit(loss, init(jax.random.key(0)), optimizer, data, steps=steps, batch_size=128,
                       accumulate=2, steps_per_call=8, key=jax.random.key(1),
                       checkpoint_dir=checkpoint_dir, checkpoint_every=200 if checkpoint_dir else None,
                       progress=progress)
    print(f"step {result.step}: loss {result.history['loss'][0]:.4f} -> {result.history['loss'][-1]:.4f}")
    if png:
        train.plot_history(result, png)
        print(f"loss curve written to {png}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--png", default=None)
    args = parser.parse_args()
    main(args.steps, args.checkpoint_dir, args.png)
