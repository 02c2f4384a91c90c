"""Newton's method for a 2-D reaction-diffusion problem with a sparse Jacobian.

The steady Bratu problem on the unit square, zero Dirichlet boundary:

    F(u) = Δ_h u + λ exp(u) = 0,     λ = 5,

Δ_h the 5-point Laplacian on an ``N x N`` grid (N = 100: 10^4 unknowns). Each Newton
step solves ``J(u) δ = -F(u)``. ``fl.jacobian(F, sparse=True)`` reads the 5-point
pattern from the program while ``jax.jit`` traces, colors it with 5 colors and gets J
from 5 JVPs (dense forward mode would need 10^4); J is a BCOO. For λ below the critical
value (about 6.8), ``-J`` is symmetric positive definite, so the linear solve is
``jax.scipy.sparse.linalg.cg`` with the BCOO matrix-vector product. At a small size
the same step is checked against a dense solve with ``jnp.linalg.solve``.

    python examples/reaction_diffusion_newton.py [N]
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import functorch_lite as fl

LAMBDA = 5.0


def residual(u: jax.Array, n: int) -> jax.Array:
    """F(u) = Δ_h u + λ e^u on the interior of an n x n grid (u flattened)."""
    h = 1.0 / (n + 1)
    g = u.reshape(n, n)
    p = jnp.pad(g, 1)                       # the zero boundary
    lap = (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4.0 * g) / h ** 2
    return (lap + LAMBDA * jnp.exp(g)).reshape(-1)


def newton_step(n: int):
    @jax.jit
    def step(u):
        F = residual(u, n)
        J = fl.jacobian(lambda v: residual(v, n), sparse=True)(u)     # BCOO, 5 JVPs
        delta, _ = jax.scipy.sparse.linalg.cg(lambda v: -(J @ v), F, tol=1e-10, maxiter=2000)
        return u + delta, jnp.linalg.norm(F)
    return step


def dense_check(n: int = 12) -> float:
    """One Newton step with the sparse J and CG, and with the dense J and a direct
    solve: the largest difference of the two updates."""
    u = jnp.zeros(n * n, jnp.float64)
    F = residual(u, n)
    J_sparse = fl.jacobian(lambda v: residual(v, n), sparse=True, output="dense")(u)
    J_dense = jax.jacfwd(lambda v: residual(v, n))(u)
    assert np.allclose(J_sparse, J_dense)
    direct = jnp.linalg.solve(J_dense, -F)
    iterative, _ = newton_step(n)(u)
    return float(jnp.max(jnp.abs(iterative - direct)))


def main(n: int = 100, iterations: int = 8, verbose: bool = True) -> list[float]:
    """Newton iterations in float64 (the 1/h^2 = 10^4 scale of the residual leaves float32
    a relative accuracy of ~1e-4); returns the residual norms."""
    with jax.enable_x64(True):
        return _main(n, iterations, verbose)


def _main(n, iterations, verbose):
    pattern = fl.sparsity(lambda v: residual(v, n), jnp.zeros(n * n))
    if verbose:
        print(f"{n}x{n} grid: J is {pattern.matrix_shape}, nnz={pattern.nnz}, "
              f"{pattern.plan().describe()} (dense forward mode: {n * n} JVPs)")
        print(f"dense check at 12x12: max |sparse CG step - dense solve step| = {dense_check():.2e}")
    # quadratic convergence: each |F| about the square of the last (relative to the first)
    step = newton_step(n)
    u = jnp.zeros(n * n, jnp.float64)
    norms = []
    t0 = time.perf_counter()
    for k in range(iterations):
        u, norm = step(u)
        norms.append(float(norm))
        if verbose:
            print(f"  Newton {k}: |F(u)| = {norms[-1]:.3e}")
        if norms[-1] < 1e-9 * norms[0]:
            break
    final = float(jnp.linalg.norm(residual(u, n)))
    norms.append(final)
    if verbose:
        print(f"final |F(u)| = {final:.3e}, max u = {float(u.max()):.4f}, "
              f"{time.perf_counter() - t0:.2f} s (first step includes tracing and compiling)")
    return norms


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
