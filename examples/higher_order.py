"""Taylor polynomials of increasing order, from ``fl.taylor``, against the function.

``fl.taylor(f, order=k)(x0)`` returns ``c_j = f^(j)(x0) / j!`` (Taylor mode, one pass);
the degree-``k`` polynomial ``sum_j c_j (x - x0)^j`` hugs ``f`` on a wider interval as
``k`` grows, up to the radius of convergence: for ``f(x) = 1 / (1 + x²)`` around
``x0 = 0.5`` that radius is the distance to the poles ``±i``, ``sqrt(1.25) ≈ 1.12``.

    python examples/higher_order.py [--out-dir .]   # writes higher_order.png
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import functorch_lite as fl  # noqa: E402

ORDERS = (1, 3, 5, 9, 15)


def f(x):
    return jnp.sin(2 * x) / (1 + x * x)


def taylor_polynomials(func, x0: float, orders, xs: np.ndarray) -> dict[int, np.ndarray]:
    coeffs = np.asarray(jax.jit(fl.taylor(func, order=max(orders)))(x0))
    return {k: np.polynomial.polynomial.polyval(xs - x0, coeffs[:k + 1]) for k in orders}


def main(out_dir: str = ".", x0: float = 0.5, orders=ORDERS) -> tuple[str, dict[int, float]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = np.linspace(-1.5, 2.5, 400)
    polys = taylor_polynomials(f, x0, orders, xs)
    exact = np.asarray(f(jnp.asarray(xs)))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(xs, exact, "k", lw=2.5, label="f(x) = sin(2x) / (1 + x²)")
    errors = {}
    for k, p in polys.items():
        ax.plot(xs, p, lw=1.2, label=f"Taylor, order {k}")
        errors[k] = float(np.abs(p - exact)[np.abs(xs - x0) < 0.5].max())
        print(f"order {k:2d}: max |f - T_k| on |x - x0| < 0.5: {errors[k]:.2e}")
    ax.axvline(x0, color="grey", ls=":", lw=1)
    radius = float(np.hypot(x0, 1.0))           # distance from x0 to the poles at ±i
    for edge in (x0 - radius, x0 + radius):
        ax.axvline(edge, color="grey", ls="--", lw=0.8)
    ax.text(x0 + radius, 1.8, " radius of\n convergence", fontsize=7, va="top")
    ax.set_ylim(-2, 2)
    ax.set_xlabel("x")
    ax.set_title(f"Taylor polynomials at x0 = {x0} (functorch_lite._taylor, Taylor mode)")
    ax.legend(fontsize=8, loc="lower left")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "higher_order.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return path, errors


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=".")
    main(parser.parse_args().out_dir)
