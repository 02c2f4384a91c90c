"""torch.func's porting helpers, ``functional_call`` and ``stack_module_state``, for
pytrees and Equinox modules.

In torch a module owns its parameters, so ``torch.func.functional_call(model, params,
args)`` runs the module with other parameters swapped in, and
``torch.func.stack_module_state(models)`` stacks the parameters of an ensemble along a
new leading axis for ``vmap``. In JAX parameters are already values; these two make the
torch tutorials (model ensembling, neural tangent kernels) port by renaming:

- a *module* is an Equinox module (its array leaves are the parameters), an object
  with an ``apply(params, *args)`` method (a :mod:`functorch_lite.nn` block, a Flax
  module), or a plain function ``apply(params, *args)``;
- *params* is any pytree: an Equinox module's arrays (``eqx.filter(model,
  eqx.is_array)``), a dict, a list of dicts. torch's ``(params, buffers)`` pair is
  accepted with empty buffers, which is what ``stack_module_state`` returns (JAX has
  no buffers: non-trainable arrays are params leaves too).

>>> import jax, jax.numpy as jnp
>>> import functorch_lite as fl
>>> block = fl.nn.dense(3, 2)
>>> models = [block.init(jax.random.key(i)) for i in range(4)]
>>> params, buffers = stack_module_state(models)
>>> params["w"].shape, buffers
((4, 3, 2), {})
>>> x = jnp.ones((5, 3))
>>> fl.vmap(lambda p: functional_call(block, (p, buffers), (x,)))(params).shape
(4, 5, 2)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _args

__all__ = ["functional_call", "stack_module_state"]


def _equinox():
    try:
        import equinox
    except ImportError:  # pragma: no cover - equinox is a test dependency
        return None
    return equinox


def _is_module(obj: Any) -> bool:
    eqx = _equinox()
    return eqx is not None and isinstance(obj, eqx.Module)


def _is_array(x: Any) -> bool:
    return isinstance(x, _args.ARRAY_TYPES)


def _merge(params: Any) -> Any:
    """torch's ``(params, buffers)`` tuple: empty dicts (JAX has no buffers) are dropped
    and a single remaining part is the params; anything else is the params pytree
    itself (a tuple of two non-empty dicts could be either, so it is left alone: merge
    them yourself, ``{**params, **buffers}``)."""
    if not isinstance(params, tuple) or not params:
        return params
    parts = [p for p in params if not (isinstance(p, dict) and not p)]
    return parts[0] if len(parts) == 1 and len(parts) < len(params) else params


def functional_call(module: Any, parameter_and_buffer_dicts: Any, args: Any = (),
                    kwargs: dict | None = None) -> Any:
    """Call ``module`` with the parameters ``parameter_and_buffer_dicts``, as
    ``torch.func.functional_call``.

    - Equinox module: its array leaves are replaced by those of the params pytree
      (``eqx.combine(params, static)``; ``params`` has the module's structure, e.g.
      ``eqx.filter(model, eqx.is_array)`` or a slice of :func:`stack_module_state`'s
      result), then the module is called.
    - an object with ``apply`` (a :mod:`functorch_lite.nn` block, a Flax module):
      ``module.apply(params, *args, **kwargs)``.
    - a function: ``module(params, *args, **kwargs)``.

    ``args`` is a tuple of positional arguments, or one argument (as torch). torch's
    ``(params, buffers)`` with empty ``buffers`` (as :func:`stack_module_state` gives)
    passes ``params``.

    >>> import jax.numpy as jnp
    >>> apply = lambda p, x: x @ p["w"] + p["b"]
    >>> functional_call(apply, {"w": jnp.eye(2), "b": jnp.ones(2)}, jnp.array([1.0, 2.0]))
    Array([2., 3.], dtype=float32)
    """
    where = "functional_call(module, parameter_and_buffer_dicts, args)"
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise TypeError(f"{where}: kwargs must be a dict or None, got {type(kwargs).__name__}.")
    args = args if isinstance(args, tuple) else (args,)
    params = _merge(parameter_and_buffer_dicts)
    if _is_module(module):
        eqx = _equinox()
        _, static = eqx.partition(module, eqx.is_array)
        try:
            model = eqx.combine(params, static)
        except ValueError as e:
            raise ValueError(
                f"{where}: the params do not have the structure of the module "
                f"{type(module).__name__} ({e}); pass eqx.filter(model, eqx.is_array) of a "
                "module of this kind, or one slice of stack_module_state(models)."
            ) from None
        return model(*args, **kwargs)
    apply = getattr(module, "apply", None)
    if callable(apply) and not isinstance(module, type(lambda: 0)):
        return apply(params, *args, **kwargs)
    if callable(module):
        return module(params, *args, **kwargs)
    raise TypeError(
        f"{where}: module must be an Equinox module, an object with an apply(params, ...) "
        f"method, or a function apply(params, ...); got {type(module).__name__}."
    )


def stack_module_state(models: Sequence[Any]) -> tuple[Any, dict]:
    """Stack the parameters of ``models`` along a new leading axis, as
    ``torch.func.stack_module_state``: returns ``(params, buffers)``.

    ``models`` are params pytrees of one structure (e.g. ``block.init(key)`` for
    several keys) or Equinox modules of one structure; for modules ``params`` is the
    stacked array part (``eqx.filter(model, eqx.is_array)`` with a leading axis), to
    pass to :func:`functional_call` inside ``vmap``. ``buffers`` is always ``{}``:
    JAX keeps no separate buffers (non-trainable arrays are leaves of params too).

    >>> import jax.numpy as jnp
    >>> params, _ = stack_module_state([{"w": jnp.zeros(2)}, {"w": jnp.ones(2)}])
    >>> params["w"]
    Array([[0., 0.],
           [1., 1.]], dtype=float32)
    """
    where = "stack_module_state(models)"
    if not isinstance(models, (list, tuple)) or not models:
        raise ValueError(
            f"{where}: expected a non-empty list of models (params pytrees or Equinox "
            f"modules), got {_args.describe(models)}."
        )
    if all(_is_module(m) for m in models):
        eqx = _equinox()
        trees = [eqx.filter(m, eqx.is_array) for m in models]
    elif any(_is_module(m) for m in models):
        raise TypeError(f"{where}: mix of Equinox modules and other values; pass one kind.")
    else:
        trees = list(models)
    first = jax.tree_util.tree_structure(trees[0])
    for i, t in enumerate(trees[1:], 1):
        if jax.tree_util.tree_structure(t) != first:
            raise ValueError(
                f"{where}: models[{i}] has a different structure from models[0] "
                f"({jax.tree_util.tree_structure(t)} vs {first}); an ensemble needs models "
                "of one architecture."
            )
    for keypath, leaf in jax.tree_util.tree_leaves_with_path(trees[0]):
        if not _is_array(leaf) and _args.leaf_dtype(leaf) is None:
            raise TypeError(
                f"{where}: models[0]{jax.tree_util.keystr(keypath)} is a "
                f"{type(leaf).__name__}, not an array; only arrays can be stacked."
            )
    shapes = [[np.shape(x) for x in jax.tree_util.tree_leaves(t)] for t in trees]
    for i, s in enumerate(shapes[1:], 1):
        if s != shapes[0]:
            raise ValueError(f"{where}: models[{i}]'s parameter shapes differ from models[0]'s.")
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)
    return _args.reorder(_args.order_of(trees[0]), stacked), {}
