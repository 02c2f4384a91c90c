"""Draw the pictures of docs/sparse.md: spy plots of detected patterns, each nonzero
colored by the group (JVP, VJP or HVP) that computes it.

    python examples/sparse_figures.py [out_dir]      # default: docs/images
"""

from __future__ import annotations

import os
import sys

import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import functorch_lite as fl  # noqa: E402


def laplacian(n):
    """The 5-point stencil on an n x n grid, zero Dirichlet boundary."""
    def lap(u):
        p = jnp.pad(u.reshape(n, n), 1)
        return (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * p[1:-1, 1:-1]).ravel()
    return lap


def arrowhead(x):
    return jnp.concatenate([jnp.sum(x ** 2)[None], x[1:] ** 3 + x[0]])


def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def main(out_dir: str = os.path.join(os.path.dirname(__file__), "..", "docs", "images")) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    jobs = [
        ("sparse_laplacian.png", "5-point Laplacian, 8x8 grid", fl.sparsity(laplacian(8), jnp.ones(64)), "auto"),
        ("sparse_arrowhead.png", "arrowhead, n=40: bicoloring", fl.sparsity(arrowhead, jnp.ones(40)), "auto"),
        ("sparse_arrowhead_columns.png", "arrowhead, n=40: columns only", fl.sparsity(arrowhead, jnp.ones(40)), "fwd"),
        ("sparse_rosenbrock_hessian.png", "Rosenbrock Hessian, n=30: star coloring",
         fl.sparsity(rosenbrock, jnp.ones(30), hessian=True), "star"),
    ]
    paths = []
    for name, title, pattern, mode in jobs:
        fig, ax = plt.subplots(figsize=(4.2, 4.4))
        pattern.plot(ax=ax, mode=mode)
        ax.set_title(f"{title}\n{pattern.plan(mode).describe()}", fontsize=9)
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in main(*sys.argv[1:]):
        print(p)
