"""Per-sample gradients of an MLP with ``vmap(grad)``.

A training batch gives one gradient (the sum over samples); differential privacy,
influence functions and gradient-noise diagnostics need one gradient *per sample*.
With pure functions that is one line: ``vmap(grad(loss), in_dims=(None, 0, 0))``: map
the gradient of the one-sample loss over the batch, sharing the parameters.

Under ``vmap`` the hand-written reverse rule of ``functorch_lite.nn.linear`` runs batched:
its ``dL/dW = x^T dL/dy`` for one sample is an outer product, which becomes one fused
multiply over the batch (docs/benchmarks.md times it against raw JAX and torch.func).

Run: ``python examples/per_sample_grads.py``
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import functorch_lite as fl


def main(batch: int = 256, sizes=(64, 256, 1), verbose: bool = True):
    model = fl.nn.mlp(list(sizes), norm="layer", activation=jnp.tanh)
    kp, kx, ky = jax.random.split(jax.random.key(0), 3)
    params = model.init(kp)
    x = jax.random.normal(kx, (batch, sizes[0]))
    y = jax.random.normal(ky, (batch, sizes[-1]))

    def loss(params, x, y):            # one sample: x is (d_in,), y is (d_out,)
        return jnp.sum((model.apply(params, x) - y) ** 2)

    per_sample = jax.jit(fl.vmap(fl.grad(loss), in_dims=(None, 0, 0)))(params, x, y)
    shapes = [tuple(g.shape) for g in jax.tree_util.tree_leaves(per_sample)]

    # the same gradients, one sample at a time, and their sum = the batch gradient
    one = jax.jit(fl.grad(loss))
    for i in (0, batch // 2, batch - 1):
        single = one(params, x[i], y[i])
        for a, b in zip(jax.tree_util.tree_leaves(per_sample), jax.tree_util.tree_leaves(single)):
            np.testing.assert_allclose(a[i], b, rtol=2e-5, atol=2e-6)
    total = fl.grad(lambda p: jnp.sum((model.apply(p, x) - y) ** 2))(params)
    for a, b in zip(jax.tree_util.tree_leaves(per_sample), jax.tree_util.tree_leaves(total)):
        np.testing.assert_allclose(a.sum(0), b, rtol=1e-4, atol=1e-4)

    norms = jnp.sqrt(sum(jnp.sum(g.reshape(batch, -1) ** 2, axis=1)
                         for g in jax.tree_util.tree_leaves(per_sample)))
    if verbose:
        print(f"per-sample gradient leaves: {shapes}")
        print(f"per-sample gradient norms: min {float(norms.min()):.3f}, median "
              f"{float(jnp.median(norms)):.3f}, max {float(norms.max()):.3f}")
        print("checked against one-sample grads and against the batch gradient (their sum)")
    return per_sample


if __name__ == "__main__":
    main()
