"""The same functions under torch.func and functorch_lite give the same results (float64).

torch is an optional peer: `pip install torch==2.13.0`. Skipped where it is not installed.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import func as tf  # noqa: E402

import functorch_lite as fl  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.normal(size=(5, 3))
W = RNG.normal(size=3)
Y = RNG.normal(size=5)


def t(a):
    return torch.tensor(np.asarray(a), dtype=torch.float64)


def loss_jax(w, x, y):
    return jnp.sum((x @ w - y) ** 2) + jnp.sum(jnp.tanh(w) ** 3)


def loss_torch(w, x, y):
    return torch.sum((x @ w - y) ** 2) + torch.sum(torch.tanh(w) ** 3)


def vec_jax(w, x):
    return jnp.sin(x @ w) * jnp.sum(w ** 2)


def vec_torch(w, x):
    return torch.sin(x @ w) * torch.sum(w ** 2)


def close(ours, theirs):
    ours_l, theirs_l = jax.tree_util.tree_leaves(ours), [v for v in _torch_leaves(theirs)]
    assert len(ours_l) == len(theirs_l)
    for a, b in zip(ours_l, theirs_l):
        np.testing.assert_allclose(np.asarray(a), b.detach().numpy(), rtol=1e-11, atol=1e-12)


def _torch_leaves(tree):
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [l for k in sorted(tree) for l in _torch_leaves(tree[k])]
    return [l for x in tree for l in _torch_leaves(x)]


@pytest.mark.parametrize("argnums", [0, 1, (0, 2), (-1, 0)])
def test_grad_and_grad_and_value(x64, argnums):
    close(fl.grad(loss_jax, argnums=argnums)(W, X, Y), tf.grad(loss_torch, argnums=argnums)(t(W), t(X), t(Y)))
    ours = fl.grad_and_value(loss_jax, argnums=argnums)(W, X, Y)
    theirs = tf.grad_and_value(loss_torch, argnums=argnums)(t(W), t(X), t(Y))
    close(ours, theirs)


def test_grad_has_aux(x64):
    g, aux = fl.grad(lambda w: (loss_jax(w, X, Y), jnp.sum(w)), has_aux=True)(W)
    g2, aux2 = tf.grad(lambda w: (loss_torch(w, t(X), t(Y)), torch.sum(w)), has_aux=True)(t(W))
    close((g, aux), (g2, aux2))


def test_vjp_jvp_linearize(x64):
    out, vjp_fn = fl.vjp(vec_jax, W, X)
    out2, vjp_fn2 = tf.vjp(vec_torch, t(W), t(X))
    v = RNG.normal(size=5)
    close((out, vjp_fn(jnp.asarray(v))), (out2, vjp_fn2(t(v))))
    u = (RNG.normal(size=3), RNG.normal(size=(5, 3)))
    close(fl.jvp(vec_jax, (W, X), u), tf.jvp(vec_torch, (t(W), t(X)), (t(u[0]), t(u[1]))))
    out, jvp_fn = fl.linearize(lambda w: vec_jax(w, X), W)
    out2, jvp_fn2 = tf.linearize(lambda w: vec_torch(w, t(X)), t(W))
    close((out, jvp_fn(jnp.asarray(u[0]))), (out2, jvp_fn2(t(u[0]))))


@pytest.mark.parametrize("argnums", [0, (0, 1)])
def test_jacobians_and_hessian(x64, argnums):
    close(fl.jacrev(vec_jax, argnums=argnums)(W, X), tf.jacrev(vec_torch, argnums=argnums)(t(W), t(X)))
    close(fl.jacfwd(vec_jax, argnums=argnums)(W, X), tf.jacfwd(vec_torch, argnums=argnums)(t(W), t(X)))
    close(fl.jacrev(vec_jax, argnums=argnums, chunk_size=2)(W, X),
          tf.jacrev(vec_torch, argnums=argnums, chunk_size=2)(t(W), t(X)))
    close(fl.hessian(loss_jax, argnums=argnums)(W, X, Y), tf.hessian(loss_torch, argnums=argnums)(t(W), t(X), t(Y)))


def test_vmap_in_dims_out_dims_chunks(x64):
    A = RNG.normal(size=(4, 6))
    f_j = lambda row, w: jnp.outer(row[:3] * w, w)
    f_t = lambda row, w: torch.outer(row[:3] * w, w)
    for chunk in (None, 3):
        close(fl.vmap(f_j, in_dims=(1, None), out_dims=2, chunk_size=chunk)(A.T, W),
              tf.vmap(f_t, in_dims=(1, None), out_dims=2, chunk_size=chunk)(t(A.T), t(W)))


def test_per_sample_gradients(x64):
    per = fl.vmap(fl.grad(lambda w, x, y: (x @ w - y) ** 2), in_dims=(None, 0, 0))(W, X, Y)
    per_t = tf.vmap(tf.grad(lambda w, x, y: (x @ w - y) ** 2), in_dims=(None, 0, 0))(t(W), t(X), t(Y))
    close(per, per_t)


def test_dict_pytrees(x64):
    params = {"a": W, "b": np.array(0.5)}
    f_j = lambda p: jnp.sum(jnp.exp(p["a"]) * p["b"])
    f_t = lambda p: torch.sum(torch.exp(p["a"]) * p["b"])
    close(fl.grad(f_j)(params), tf.grad(f_t)({k: t(v) for k, v in params.items()}))
    close(fl.jacrev(f_j)(params), tf.jacrev(f_t)({k: t(v) for k, v in params.items()}))
