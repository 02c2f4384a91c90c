"""Layers with hand-written derivative rules, and small pure-functional blocks.

``linear``, ``l2_norm``, ``layer_norm`` and ``rms_norm`` each carry a reverse rule
(``jax.custom_vjp``) written from the formulas, which stores less than autodiff of the
same formulas (docs/benchmarks.md measures it), and is finite at 0.

How they work under every transform
-----------------------------------
``jax.custom_vjp`` alone forbids forward mode. Each layer is therefore defined twice
over one primal function: a ``jax.custom_vjp`` (the reverse rule) and a
``jax.custom_jvp`` (a hand-derived tangent rule, itself plain JAX, so JAX can also
transpose it and differentiate it again). At trace time the layer asks
:func:`functorch_lite._mode.in_forward_mode`: this library's forward-mode transforms
(``jvp``, ``linearize``, ``jacfwd``, the forward halves of ``hessian``/``hvp``/
``derivative``) trace the function inside :func:`forward_mode`, and then the layer
uses the tangent rule; everywhere else it uses the reverse rule. So ``grad``, ``vjp``,
``jacrev`` and ``rev-over-rev`` Hessians use the lean reverse rule; ``jvp``,
``jacfwd`` and the Hessian nestings with a forward half use the tangent rule (for
``fwd-over-rev`` the inner reverse pass is the transpose JAX derives from the tangent
rule; measured with ``jax.vjp``, that keeps about twice the reverse rule's residuals,
because JAX stores the per-row statistics broadcast to full size, still no more than
autodiff of the plain formulas).

Limits, honestly:

- Raw ``jax.jvp``/``jax.jacfwd``/``jax.hessian`` on these layers raise JAX's own
  ``TypeError: can't apply forward-mode autodiff (jvp) to a custom_vjp function``,
  exactly as for any ``custom_vjp``. Wrap the call in ``with forward_mode():`` (exported
  here) to make raw JAX forward mode use the tangent rule, or use this library's
  transforms.
- The choice is made when JAX *traces* the layer, and the mode is part of ``jax.jit``'s
  cache key (``jax.make_user_context``): a ``jax.jit`` function traced in reverse mode
  is traced again when a forward-mode transform calls it, so jitting works in either
  order. A function traced and exported (``jax.export``, a saved jaxpr) keeps the rule
  it was traced with.
- ``jax.custom_derivatives.linear_call`` (a tangent with a custom transpose, which
  would make one definition serve raw ``jax.jacfwd`` too) was evaluated and not used:
  in JAX 0.10 it has no batching rule (no ``vmap``, hence no ``jacfwd``/``jacrev``) and
  its JVP rule requires the residuals to have zero tangents, which breaks every
  second-order nesting.
- Taylor mode (``jax.experimental.jet``) ignores both custom rules and expands the
  primal function, which is plain ``jnp`` code.

Half precision: bfloat16/float16 inputs give outputs of the same dtype; matmuls and
statistics accumulate in float32.

>>> import jax, jax.numpy as jnp
>>> import functorch_lite as fl
>>> x, w = jnp.ones((4, 3)), jnp.full((3, 2), 0.5)
>>> fl.grad(lambda w: fl.nn.linear(x, w).sum())(w)        # x^T dL/dy
Array([[4., 4.],
       [4., 4.],
       [4., 4.]], dtype=float32)
>>> fl.jacfwd(fl.nn.l2_norm)(jnp.array([3.0, 4.0]))      # forward mode works
Array([0.6, 0.8], dtype=float32)
"""

from .._mode import forward_mode as forward_mode, in_forward_mode as in_forward_mode
from ._conv import avg_pool as avg_pool, conv as conv, max_pool as max_pool
from ._dropout import dropout as dropout
from ._fused import linear_norm_act as linear_norm_act
from ._linear import linear as linear
from ._norms import l2_norm as l2_norm, layer_norm as layer_norm, rms_norm as rms_norm
from ._mlp import Block as Block, dense as dense, mlp as mlp
