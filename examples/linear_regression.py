"""Linear regression, the seed's z = ||Xw - y||^2, trained with functorch_lite.train.fit.

The gradient is dz/dw = 2 (Xw - y)^T X (numerator layout: a row; `fit` uses its
transpose, shaped like w). Gradient descent with step 1/L, L = 2 λ_max(X^T X) the
Lipschitz constant of the gradient, converges to the least-squares solution
w* = argmin ||Xw - y||^2, which numpy computes in closed form (np.linalg.lstsq).

    python examples/linear_regression.py
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from functorch_lite import train


def loss(w, batch):
    X, y = batch
    return jnp.sum((X @ w - y) ** 2)  # z = ||Xw - y||^2


def main(steps: int = 300, progress: bool = True) -> dict:
    rng = np.random.RandomState(0)
    X = rng.randn(200, 4).astype(np.float32)
    w_true = np.array([1.5, -2.0, 0.5, 3.0], np.float32)
    y = (X @ w_true + 0.1 * rng.randn(200)).astype(np.float32)
    lipschitz = 2 * np.linalg.eigvalsh(X.T.astype(np.float64) @ X).max()
    result = train.fit(loss, jnp.zeros(4), optax.sgd(1.0 / lipschitz), (X, y), steps=steps, progress=progress)
    w_star = np.linalg.lstsq(X.astype(np.float64), y.astype(np.float64), rcond=None)[0]
    error = float(np.max(np.abs(np.asarray(result.params) - w_star)))
    print(f"trained w      = {np.asarray(result.params)}")
    print(f"least squares  = {w_star}")
    print(f"max |w - w*|   = {error:.2e} after {result.step} steps; final z = {result.history['loss'][-1]:.4f}")
    return {"w": np.asarray(result.params), "w_star": w_star, "error": error, "result": result}


if __name__ == "__main__":
    main()
