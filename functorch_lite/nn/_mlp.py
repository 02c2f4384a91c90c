"""Small pure-functional blocks: ``Block(init, apply)`` pairs, optax style.

``init(key) -> params`` builds a pytree of arrays (lists and dicts only, so it goes
straight into ``jax.grad``, optax and checkpointing); ``apply(params, x)`` is a pure
function of it. Blocks hold no state and no arrays: the parameters live in the pytree.

An MLP of sizes ``[d_0, d_1, ..., d_L]`` is, for each hidden layer,
``h <- activation(norm(linear(h, W, b)))`` and at the end ``linear(h, W_L, b_L)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _args
from ._fused import linear_norm_act
from ._linear import linear
from ._norms import layer_norm, rms_norm

__all__ = ["Block", "dense", "mlp", "NORMS"]

NORMS = (None, "layer", "rms")


class Block(NamedTuple):
    """A pure-functional layer: ``params = init(key)``, ``y = apply(params, x)``.

    >>> import jax, jax.numpy as jnp
    >>> from functorch_lite import nn
    >>> init, apply = block = nn.mlp([3, 4, 1])
    >>> isinstance(block, nn.Block), apply(init(jax.random.key(0)), jnp.ones((2, 3))).shape
    (True, (2, 1))
    """

    init: Callable[[jax.Array], Any]
    apply: Callable[[Any, jax.Array], jax.Array]


def _check_sizes(sizes, where):
    if not isinstance(sizes, Sequence) or len(sizes) < 2:
        raise ValueError(f"{where}: sizes must list at least an input and an output width, "
                         f"e.g. [64, 256, 1]; got {sizes!r}.")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise ValueError(f"{where}: every size must be a positive int, got {sizes!r}.")


def _check_dtype(dtype, where):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{where}: dtype={dtype!r} is not a dtype; use e.g. jnp.float32.") from None
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"{where}: dtype {dt.name} is not a floating dtype; the layers take "
                        "floating-point parameters (float16, bfloat16, float32, float64), e.g. "
                        "dtype=jnp.float32.")
    return dt


def _check_params(params, want, where):
    """``params`` must have the structure, shapes and dtypes ``want`` (what init builds)."""
    if not isinstance(params, (list, tuple)) or len(params) != len(want):
        got = f"a {type(params).__name__} of {len(params)}" if isinstance(params, (list, tuple)) \
            else f"a {type(params).__name__}"
        raise ValueError(f"{where}: expected params from this block's init (a list of "
                         f"{len(want)} dicts), got {got}.")
    for i, (p, w) in enumerate(zip(params, want)):
        if not isinstance(p, dict) or sorted(p) != sorted(w):
            keys = sorted(p) if isinstance(p, dict) else type(p).__name__
            raise ValueError(f"{where}: params[{i}] has keys {keys} but this block expected "
                             f"{sorted(w)}; were these params built by another block's init?")
        for k in sorted(w, key=lambda k: (k != "w", k)):
            shape = tuple(np.shape(p[k]))
            if shape != w[k].shape:
                raise ValueError(f"{where}: params[{i}][{k!r}] has shape {shape}, expected "
                                 f"{w[k].shape}; were these params built by another block's init?")


def _dense_init(key, d_in, d_out, dtype):
    """PyTorch's ``nn.Linear`` default: W, b ~ U(-1/sqrt(d_in), 1/sqrt(d_in))."""
    kw, kb = jax.random.split(key)
    bound = 1.0 / math.sqrt(d_in)
    return {
        "w": jax.random.uniform(kw, (d_in, d_out), dtype, -bound, bound),
        "b": jax.random.uniform(kb, (d_out,), dtype, -bound, bound),
    }


def dense(d_in: int, d_out: int, *, dtype: Any = jnp.float32) -> Block:
    """A linear layer block: ``params = {"w": (d_in, d_out), "b": (d_out,)}``.

    >>> import jax
    >>> block = dense(3, 2)
    >>> params = block.init(jax.random.key(0))
    >>> block.apply(params, jax.numpy.ones((5, 3))).shape
    (5, 2)
    """
    _check_sizes([d_in, d_out], "nn.dense(d_in, d_out)")
    dtype = _check_dtype(dtype, "nn.dense(d_in, d_out)")

    def init(key):
        _args.check_key(key, f"nn.dense({d_in}, {d_out}).init(key)")
        return _dense_init(key, d_in, d_out, dtype)

    return Block(init, lambda params, x: linear(x, params["w"], params["b"]))


def mlp(sizes: Sequence[int], *, norm: str | None = None,
        activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
        dtype: Any = jnp.float32, eps: float | None = None, fused: bool = False) -> Block:
    """A multi-layer perceptron block over :func:`linear` and an optional norm.

    Args:
      sizes: widths ``[d_in, hidden..., d_out]``.
      norm: ``None``, ``"layer"`` (:func:`layer_norm`, params ``scale``/``offset``) or
        ``"rms"`` (:func:`rms_norm`, param ``scale``), after each hidden linear layer.
      activation: elementwise function after each hidden layer (after the norm).
      dtype: parameter dtype (bfloat16/float16 work: inputs must share it).
      eps: the norm's eps (default: the norm's own default).
      fused: run each hidden ``linear -> norm -> activation`` as one
        :func:`linear_norm_act` (one rule; reverse mode stores about half, for one
        extra matmul per block in the backward pass). Needs a norm.

    ``params`` is a list with one dict per linear layer (``{"w", "b"}``, plus
    ``"scale"``/``"offset"`` for the normed hidden layers). ``apply`` takes ``x`` of
    shape ``(..., d_in)``: one sample or any batch, so ``vmap(grad(loss))`` gives
    per-sample gradients.

    >>> import jax, jax.numpy as jnp
    >>> block = mlp([4, 8, 1], norm="layer")
    >>> params = block.init(jax.random.key(0))
    >>> [sorted(p) for p in params]
    [['b', 'offset', 'scale', 'w'], ['b', 'w']]
    >>> block.apply(params, jnp.ones((2, 4))).shape
    (2, 1)
    """
    where = "nn.mlp(sizes)"
    _check_sizes(sizes, where)
    if norm not in NORMS:
        raise ValueError(f"{where}: unknown norm={norm!r}; choose None, 'layer' or 'rms'.")
    if not callable(activation):
        raise TypeError(f"{where}: activation must be a callable such as jax.nn.relu, got "
                        f"{type(activation).__name__}.")
    if fused and norm is None:
        raise ValueError(f"{where}: fused=True fuses linear -> norm -> activation; choose "
                         "norm='layer' or 'rms', or use fused=False.")
    dtype = _check_dtype(dtype, where)
    sizes = [int(s) for s in sizes]

    def init(key):
        _args.check_key(key, f"nn.mlp(sizes={sizes}).init(key)")
        return _mlp_init(key, sizes, norm, dtype)

    def apply(params, x):
        where_apply = f"nn.mlp(sizes={sizes}).apply(params, x)"
        _check_params(params, jax.eval_shape(init, jax.random.key(0)), where_apply)
        if np.ndim(x) < 1 or np.shape(x)[-1] != sizes[0]:
            raise ValueError(f"{where_apply}: x has shape {tuple(np.shape(x))}; its last axis "
                             f"must be the input width {sizes[0]}.")
        return _mlp_apply(params, x, norm, activation, eps, fused)

    return Block(init, apply)


def _mlp_init(key: jax.Array, sizes: list[int], norm: str | None, dtype: Any) -> list[dict]:
    keys = jax.random.split(key, len(sizes) - 1)
    params = []
    for i, k in enumerate(keys):
        p = _dense_init(k, sizes[i], sizes[i + 1], dtype)
        if norm is not None and i < len(sizes) - 2:
            p["scale"] = jnp.ones((sizes[i + 1],), dtype)
            if norm == "layer":
                p["offset"] = jnp.zeros((sizes[i + 1],), dtype)
        params.append(p)
    return params


def _mlp_apply(params: list[dict], x: jax.Array, norm: str | None, activation: Callable,
               eps: float | None, fused: bool) -> jax.Array:
    norm_kwargs = {} if eps is None else {"eps": eps}
    h = x
    for i, p in enumerate(params):
        if fused and i < len(params) - 1:
            h = linear_norm_act(h, p["w"], p["b"], p["scale"], p.get("offset"), norm=norm,
                                activation=activation, eps=eps)
            continue
        h = linear(h, p["w"], p["b"])
        if i < len(params) - 1:
            if norm == "layer":
                h = layer_norm(h, p["scale"], p["offset"], **norm_kwargs)
            elif norm == "rms":
                h = rms_norm(h, p["scale"], **norm_kwargs)
            h = activation(h)
    return h
