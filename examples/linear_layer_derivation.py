"""The lecture notes' linear-layer derivation, checked numerically.

The notes take ``y = x w`` with N=1 sample, D=2 inputs, M=3 outputs and derive, element
by element, ``dL/dx_{1,1} = dy_{1,1} w_{1,1} + dy_{1,2} w_{1,2} + dy_{1,3} w_{1,3}``, then
the general rules

    dL/dx = dL/dy w^T        dL/dw = x^T dL/dy        dL/db = sum over rows of dL/dy

This script evaluates those formulas by hand, the hand-written rule of
``functorch_lite.nn.linear``, JAX autodiff of ``x @ w + b`` and float64 central finite
differences, and checks that all four agree; then does the same for a batch of N=4.

Run: ``python examples/linear_layer_derivation.py``
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import functorch_lite as fl


def finite_difference_vjp(f, args, g, h=1e-6):
    """``<g, df/da>`` for each argument and each element, by central differences."""
    out = []
    for k, a in enumerate(args):
        grad = np.zeros(a.shape)
        for idx in np.ndindex(a.shape):
            e = np.zeros(a.shape)
            e[idx] = h
            plus = list(args); plus[k] = a + e
            minus = list(args); minus[k] = a - e
            grad[idx] = np.sum(np.asarray(g) * (np.asarray(f(*plus)) - np.asarray(f(*minus)))) / (2 * h)
        out.append(grad)
    return out


def check(n: int, seed: int, verbose: bool = True) -> float:
    """All four ways for an N=n, D=2, M=3 layer; returns the largest disagreement."""
    k = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(k[0], (n, 2), jnp.float64)
    w = jax.random.normal(k[1], (2, 3), jnp.float64)
    b = jax.random.normal(k[2], (3,), jnp.float64)
    dy = jax.random.normal(k[3], (n, 3), jnp.float64)       # dL/dy, an N x M matrix

    by_hand = (dy @ w.T, x.T @ dy, dy.sum(axis=0))
    _, pullback = fl.vjp(fl.nn.linear, x, w, b)              # the library's hand-written rule
    ours = pullback(dy)
    autodiff = jax.vjp(lambda x, w, b: x @ w + b[None, :], x, w, b)[1](dy)
    fd = finite_difference_vjp(lambda x, w, b: x @ w + b[None, :], [x, w, b], dy)

    if n == 1:   # the notes' element-wise formula for dL/dx_{1,1}
        element = dy[0, 0] * w[0, 0] + dy[0, 1] * w[0, 1] + dy[0, 2] * w[0, 2]
        assert np.isclose(element, by_hand[0][0, 0], rtol=1e-12)

    worst = 0.0
    for name, hand, o, a, f in zip(("dL/dx", "dL/dw", "dL/db"), by_hand, ours, autodiff, fd):
        err = max(float(np.abs(o - hand).max()), float(np.abs(a - hand).max()), float(np.abs(f - hand).max()))
        worst = max(worst, err)
        if verbose:
            print(f"N={n} {name} shape {tuple(hand.shape)}: max |difference| over rule, autodiff, "
                  f"finite differences = {err:.1e}")
    return worst


def main(verbose: bool = True) -> float:
    with jax.enable_x64(True):
        worst = max(check(1, 0, verbose), check(4, 1, verbose))
    assert worst < 1e-8, worst
    if verbose:
        print("all agree: dL/dx = dL/dy w^T, dL/dw = x^T dL/dy, dL/db = sum of rows of dL/dy")
    return worst


if __name__ == "__main__":
    main()
