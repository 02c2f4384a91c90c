"""Layers with hand-written derivative rules, and small pure-functional blocks.

``linear``, ``l2_norm``, ``layer_norm``, ``rms_norm``, ``linear_norm_act``, ``conv`` and
``max_pool`` carry rules derived by hand from their formulas; ``avg_pool`` (linear) and
``dropout`` (a mask) use their formula's own. Reverse mode stores no more than autodiff
of the same formulas, the norms and ``max_pool`` much less (docs/benchmarks.md), and
every rule is finite at 0.

How they work under every transform
-----------------------------------
Each layer is one ``jax.custom_jvp`` (:func:`functorch_lite.nn._common.rule`) whose
hand-derived tangent rule has its linear part inside ``jax.checkpoint``. Forward mode
runs the tangent rule; reverse mode transposes it, storing only the rule's inputs (the
layer's input and per-row statistics, unbroadcast) and recomputing the rest; that
transpose is the seed's reverse rule (``dL/dx = dL/dy W^T``, ``dL/dW = x^T dL/dy``, row
sums; the norms' derivations), which each layer also keeps written out as a
``custom_vjp`` (``.seed``, compared in tests/test_nn_raw.py: same residuals, same
cotangents). So raw ``jax.grad``, ``jax.vjp``, ``jax.jvp``, ``jax.linearize``,
``jax.jacfwd``, ``jax.jacrev``, ``jax.hessian``, ``jax.vmap``, Equinox's
``filter_grad``/``filter_jvp`` and this library's transforms all work, with no context
manager. ``forward_mode`` (the switch of earlier versions) is a harmless no-op kept for
compatibility. Taylor mode (``jax.experimental.jet``) cannot trace any ``custom_jvp`` in
JAX 0.10; inside :func:`functorch_lite._mode.taylor_mode`, which this library's Taylor
transforms enter, the layers expand their plain primal instead.

Half precision: bfloat16/float16 inputs give outputs of the same dtype; matmuls and
statistics accumulate in float32.

>>> import jax, jax.numpy as jnp
>>> import functorch_lite as fl
>>> x, w = jnp.ones((4, 3)), jnp.full((3, 2), 0.5)
>>> fl.grad(lambda w: fl.nn.linear(x, w).sum())(w)        # x^T dL/dy
Array([[4., 4.],
       [4., 4.],
       [4., 4.]], dtype=float32)
>>> jax.jacfwd(fl.nn.l2_norm)(jnp.array([3.0, 4.0]))     # raw forward mode works
Array([0.6, 0.8], dtype=float32)
"""

from .._mode import forward_mode as forward_mode, in_forward_mode as in_forward_mode
from ._conv import avg_pool as avg_pool, conv as conv, max_pool as max_pool
from ._dropout import dropout as dropout
from ._fused import linear_norm_act as linear_norm_act
from ._linear import linear as linear
from ._norms import l2_norm as l2_norm, layer_norm as layer_norm, rms_norm as rms_norm
from ._mlp import Block as Block, dense as dense, mlp as mlp
