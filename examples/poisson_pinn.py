"""A physics-informed network for the 2-D Poisson problem, trained with ``fl.train.fit``.

    -Δu = f on the unit square, u = 0 on its boundary, f = 2π² sin(πx) sin(πy),

whose solution is u* = sin(πx) sin(πy). The network ``N`` (``fl.nn.mlp``: its linear
layers carry custom rules, which ``fl.laplacian`` reads through) enters as
``u(x, y) = x(1-x) y(1-y) N(x, y)``, so the boundary condition holds exactly and the loss
is the mean squared residual ``(Δu + f)²`` over random collocation points. The
Laplacian is ``fl.laplacian`` (collapsed Taylor mode) under ``jax.vmap`` over the points
and ``jax.grad`` over the parameters. It writes a PNG: the solution, its error against
u*, and the PDE residual on a grid.

    python examples/poisson_pinn.py [--steps 3000] [--png docs/images/poisson_pinn.png]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import functorch_lite as fl

NET = fl.nn.mlp([2, 32, 32, 1], activation=jnp.tanh)


def source(p):
    return 2 * jnp.pi ** 2 * jnp.sin(jnp.pi * p[..., 0]) * jnp.sin(jnp.pi * p[..., 1])


def exact(p):
    return jnp.sin(jnp.pi * p[..., 0]) * jnp.sin(jnp.pi * p[..., 1])


def u(params, p):
    """The trial solution at one point ``p = (x, y)``: zero on the boundary by construction."""
    x, y = p[0], p[1]
    return x * (1 - x) * y * (1 - y) * NET.apply(params, p)[0]


def residual(params, points):
    """``Δu + f`` at each point (zero for the exact solution)."""
    lap = jax.vmap(fl.laplacian(u, argnums=1), in_axes=(None, 0))(params, points)
    return lap + source(points)


def loss(params, batch):
    (points,) = batch
    return jnp.mean(residual(params, points) ** 2)


def main(steps: int = 3000, png: str | None = None, n_points: int = 2048, batch_size: int = 256,
         progress: bool = True) -> dict:
    points = np.asarray(jax.random.uniform(jax.random.key(0), (n_points, 2)), np.float32)
    params = NET.init(jax.random.key(1))
    optimizer = optax.adam(optax.cosine_decay_schedule(3e-3, steps))
    result = fl.train.fit(loss, params, optimizer, (points,), steps=steps, batch_size=batch_size,
                          steps_per_call=10, key=jax.random.key(2), progress=progress)
    grid = jnp.stack(jnp.meshgrid(jnp.linspace(0, 1, 65), jnp.linspace(0, 1, 65)), axis=-1).reshape(-1, 2)
    pred = jax.jit(jax.vmap(u, in_axes=(None, 0)))(result.params, grid)
    res = jax.jit(residual)(result.params, grid)
    rel = float(jnp.linalg.norm(pred - exact(grid)) / jnp.linalg.norm(exact(grid)))
    out = {"relative_l2_error": rel, "loss_first": float(result.history["loss"][0]),
           "loss_last": float(result.history["loss"][-1]), "residual_rms": float(jnp.sqrt(jnp.mean(res ** 2))),
           "png": png}
    print(f"step {result.step}: loss {out['loss_first']:.3g} -> {out['loss_last']:.3g}; "
          f"relative L2 error vs sin(pi x) sin(pi y): {rel:.2e}; residual rms on the grid "
          f"{out['residual_rms']:.3g}")
    if png:
        plot(grid, pred, res, png)
        print(f"written to {png}")
    return out


def plot(grid, pred, res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = int(round(np.sqrt(grid.shape[0])))
    shape = (n, n)
    err = np.asarray(pred - exact(grid)).reshape(shape)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    panels = [(np.asarray(pred).reshape(shape), "network solution u", "viridis"),
              (err, "u - sin(πx) sin(πy)", "RdBu_r"),
              (np.asarray(res).reshape(shape), "PDE residual Δu + f (fl.laplacian)", "RdBu_r")]
    for ax, (z, title, cmap) in zip(axes, panels):
        lim = np.abs(z).max()
        im = ax.imshow(z, origin="lower", extent=(0, 1, 0, 1), cmap=cmap,
                       vmin=None if cmap == "viridis" else -lim, vmax=None if cmap == "viridis" else lim)
        ax.set_title(title)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        fig.colorbar(im, ax=ax, shrink=0.85)
    fig.suptitle("Poisson -Δu = 2π² sin(πx) sin(πy), u = 0 on the boundary: a 2-32-32-1 tanh PINN")
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--png", default="docs/images/poisson_pinn.png")
    args = parser.parse_args()
    main(args.steps, args.png)
