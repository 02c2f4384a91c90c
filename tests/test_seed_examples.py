"""The worked examples of DESIGN.md (from the lecture notes), against their closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functorch_lite as fl


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_squared_residual_of_dot(x64, rng):
    # z = (<x, w> - y)^2  ->  dz/dw = 2 (<x, w> - y) x   (the note drops the "- y")
    x, w, y = rng.normal(size=4), rng.normal(size=4), 0.7
    got = fl.grad(lambda w: (jnp.dot(x, w) - y) ** 2)(jnp.asarray(w))
    np.testing.assert_allclose(got, 2 * (x @ w - y) * x, rtol=1e-12)


def test_least_squares(x64, rng):
    # z = ||Xw - y||^2  ->  dz/dw = 2 (Xw - y)^T X ;  d2z/dw2 = 2 X^T X
    X, w, y = rng.normal(size=(6, 3)), rng.normal(size=3), rng.normal(size=6)
    loss = lambda w: jnp.sum((X @ w - y) ** 2)
    np.testing.assert_allclose(fl.grad(loss)(w), 2 * (X @ w - y) @ X, rtol=1e-12)
    np.testing.assert_allclose(fl.hessian(loss)(w), 2 * X.T @ X, rtol=1e-12)


def test_two_x_transpose_x():
    # y = 2 x^T x  ->  dy/dx = 4x (the notes' first autograd example, x = arange(4))
    x = jnp.arange(4.0)
    np.testing.assert_allclose(fl.grad(lambda x: 2 * jnp.dot(x, x))(x), 4 * x)


def test_sum_of_squares_is_gradient_of_vector_output_sum():
    # PyTorch: y = x * x; y.sum().backward() gives 2x, and so does y.backward(ones)
    x = jnp.arange(4.0)
    np.testing.assert_allclose(fl.grad(lambda x: jnp.sum(x * x))(x), 2 * x)
    _, vjp_fn = fl.vjp(lambda x: x * x, x)
    np.testing.assert_allclose(vjp_fn(jnp.ones(4))[0], 2 * x)


def test_stop_gradient_is_detach():
    # u = detach(y) with y = x * x; z = u * x  ->  dz/dx = u = x * x
    x = jnp.arange(4.0)
    got = fl.grad(lambda x: jnp.sum(jax.lax.stop_gradient(x * x) * x))(x)
    np.testing.assert_allclose(got, x * x)


def _control_flow(a):
    b = a * 2
    while jnp.linalg.norm(b) < 1000:
        b = b * 2
    c = b if b.sum() > 0 else 100 * b
    return c


@pytest.mark.parametrize("a", [0.37, -1.3, 5.0])
def test_python_control_flow(a):
    # c is linear in a along the path taken, so dc/da = c / a
    a = jnp.asarray(a)
    np.testing.assert_allclose(fl.grad(_control_flow)(a), _control_flow(a) / a, rtol=1e-6)


def test_numerator_layout_table(x64, rng):
    A = rng.normal(size=(3, 4))
    x = jnp.asarray(rng.normal(size=4))
    np.testing.assert_allclose(fl.jacrev(lambda x: A @ x)(x), A)                 # d(Ax)/dx = A
    y = jnp.asarray(rng.normal(size=3))
    np.testing.assert_allclose(fl.jacfwd(lambda y: y @ A)(y), A.T)              # d(x^T A)/dx = A^T
    u = lambda x: jnp.sin(x)
    B = rng.normal(size=(2, 4))
    du = fl.jacrev(u)(x)
    np.testing.assert_allclose(fl.jacrev(lambda x: 3.0 * u(x))(x), 3.0 * du)    # d(a u)/dx = a du/dx
    np.testing.assert_allclose(fl.jacfwd(lambda x: B @ u(x))(x), B @ du)        # d(Au)/dx = A du/dx
    # denominator layout is the transpose
    np.testing.assert_allclose(fl.jacrev(lambda x: A @ x, layout="denominator")(x), A.T)


def test_backward_v_is_vjp(rng):
    # y.backward(v) == v^T J; v = ones sums the rows of J
    A = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    f = lambda x: jnp.tanh(A @ x)
    x = jnp.asarray(rng.normal(size=4), jnp.float32)
    J = fl.jacrev(f)(x)
    _, vjp_fn = fl.vjp(f, x)
    v = jnp.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(vjp_fn(v)[0], v @ J, rtol=1e-5)
    np.testing.assert_allclose(vjp_fn(jnp.ones(3))[0], J.sum(axis=0), rtol=1e-5)


def test_linear_layer_rules(x64, rng):
    # y = xW + b: dL/dx = dL/dy W^T, dL/dW = x^T dL/dy, dL/db = sum of dL/dy over rows
    x, W, b = rng.normal(size=(5, 3)), rng.normal(size=(3, 2)), rng.normal(size=2)
    G = rng.normal(size=(5, 2))   # dL/dy for L = <G, y>
    loss = lambda x, W, b: jnp.sum(G * (x @ W + b[None, :]))
    dx, dW, db = fl.grad(loss, argnums=(0, 1, 2))(x, W, b)
    np.testing.assert_allclose(dx, G @ W.T, rtol=1e-12)
    np.testing.assert_allclose(dW, x.T @ G, rtol=1e-12)
    np.testing.assert_allclose(db, G.sum(axis=0), rtol=1e-12)
