"""Newton-CG that never forms the Hessian: each CG step needs one Hessian-vector product.

Minimises the L2-regularised logistic loss of a linear classifier in ``n`` dimensions.
Newton's step solves ``H p = -g``; conjugate gradients (CG) solves it with products
``H v`` only, each one a forward-over-reverse ``fl.hvp`` (a small constant times one
loss evaluation), so memory stays O(n) where ``H`` itself would be n x n.

    python examples/newton_cg.py [--n 2000] [--samples 500]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import functorch_lite as fl  # noqa: E402


def make_problem(key, n: int, samples: int):
    kx, kw, kn = jax.random.split(key, 3)
    X = jax.random.normal(kx, (samples, n)) / jnp.sqrt(n)
    w_true = jax.random.normal(kw, (n,))
    y = (X @ w_true + 0.3 * jax.random.normal(kn, (samples,)) > 0).astype(X.dtype)

    def loss(w):
        z = X @ w
        # log(1 + e^z) - y z, written with primitives that have all derivative rules
        return jnp.mean(jnp.maximum(z, 0) + jnp.log1p(jnp.exp(-jnp.abs(z))) - y * z) + 1e-3 * (w @ w)

    return loss


def cg(hv, b, iters: int, tol: float):
    """Solve ``H x = b`` for symmetric positive definite ``H`` given ``hv(v) = H v``."""
    def body(state):
        k, x, r, p, rr = state
        hp = hv(p)
        alpha = rr / (p @ hp)
        x, r = x + alpha * p, r - alpha * hp
        rr_new = r @ r
        return k + 1, x, r, r + (rr_new / rr) * p, rr_new

    def cond(state):
        k, _, _, _, rr = state
        return (k < iters) & (jnp.sqrt(rr) > tol * jnp.linalg.norm(b))

    x0 = jnp.zeros_like(b)
    k, x, *_ = jax.lax.while_loop(cond, body, (0, x0, b, b, b @ b))
    return x, k


def newton_cg(loss, w0, steps: int = 8, cg_iters: int = 50):
    @jax.jit
    def step(w):
        g = fl.grad(loss)(w)
        p, k = cg(lambda v: fl.hvp(loss, (w,), (v,))[1], -g, cg_iters, 1e-6)
        return w + p, jnp.linalg.norm(g), k

    w, history = w0, []
    for _ in range(steps):
        w, gnorm, k = step(w)
        history.append((float(loss(w)), float(gnorm), int(k)))
    return w, history


def main(n: int = 2000, samples: int = 500, steps: int = 8, out_dir: str | None = None) -> list:
    loss = make_problem(jax.random.key(0), n, samples)
    w, history = newton_cg(loss, jnp.zeros(n), steps=steps)
    for i, (value, gnorm, k) in enumerate(history):
        print(f"step {i}: loss {value:.6f}  |grad| before step {gnorm:.2e}  CG iterations {k}")
    print(f"final |grad| = {float(jnp.linalg.norm(jax.grad(loss)(w))):.2e}  (n = {n}; H would hold "
          f"{n * n * 4 / 2 ** 20:.1f} MiB in float32, never formed)")
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--steps", type=int, default=8)
    a = parser.parse_args()
    main(a.n, a.samples, a.steps)
