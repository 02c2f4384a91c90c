"""Mixed-mode accumulation: ``chain`` and the execution of its plan.

For a pipeline ``f = f_K o ... o f_1`` with ``f_k: R^{n_{k-1}} -> R^{n_k}`` the chain
rule gives ``J = J_K ... J_1``, ``J_k`` of size ``n_k x n_{k-1}``. The product can be
bracketed in many ways:

- forward accumulation multiplies right to left, ``J_K (... (J_2 J_1))``, pushing the
  ``n_0`` columns of the identity through every stage (``n_0`` JVPs);
- reverse accumulation multiplies left to right, ``((J_K J_{K-1}) ...) J_1``, pulling the
  ``n_K`` rows back (``n_K`` VJPs);
- anything else is *mixed mode*: e.g. for an autoencoder ``R^2000 -> R^8 -> R^2000``,
  8 VJPs give ``J_1`` (8 x 2000), 8 JVPs give ``J_2`` (2000 x 8), and one outer
  product ``J_2 J_1`` finishes: about ``2000 / 8`` times less work than either pure mode.

The planner (:mod:`functorch_lite._planner`) finds the narrow cuts of any function's
program by itself and brackets the stages between them (the matrix-chain problem,
extended to JVPs and VJPs); ``chain`` is the explicit form, planned the same way on the
composed function, with the stages named in reports. :mod:`functorch_lite._explanation`
reports the plan.

>>> import jax.numpy as jnp
>>> enc = lambda x: x[:2] * 2.0
>>> dec = lambda z: jnp.concatenate([z, z])
>>> f = chain(enc, dec)
>>> f(jnp.arange(4.0))
Array([0., 2., 0., 2.], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _args, _caches, _cost
from ._jaxpr import cuts as _cuts
from ._planner.plans import JacobianPlan
from ._jacobians import BY_MODE, planned_jacobian

__all__ = ["chain", "Chain"]

# (chain, input signature) pairs whose stages were checked to compose
_checked = _caches.weak("accumulation.checked_chains", maxsize=256)


# --------------------------------------------------------------------------------------
# chain: the pipeline object.


class _Shown(str):
    def __repr__(self) -> str:
        return str(self)


def describe_value(tree: Any) -> str:
    """``float32[8]`` for an array, the pytree of those otherwise, e.g.
    ``(float32[5], float32[5])``."""
    def one(x: Any) -> str:
        if hasattr(x, "shape") and hasattr(x, "dtype"):
            return _Shown(f"{np.dtype(x.dtype).name}{list(np.shape(x))}")
        return _Shown(type(x).__name__)
    if hasattr(tree, "shape") and hasattr(tree, "dtype"):
        return str(one(tree))
    return repr(jax.tree_util.tree_map(one, tree))


class Chain:
    """``chain(f1, f2, ..., fK)``: the callable ``x -> fK(...f2(f1(x)))`` (stage 1 first).

    Stages pass one value each (an array or a pytree of arrays). A chain is an ordinary
    function for every transform; :func:`functorch_lite.jacobian` recognises it and
    multiplies the stages' Jacobians in the cheapest order (mixed mode).

    Attributes:
      stages: the stage functions, nested chains flattened.
      names: their names, for messages and reports.

    >>> import jax.numpy as jnp
    >>> c = chain(jnp.sin, jnp.cos)          # x -> cos(sin(x)); J = J_cos · J_sin
    >>> c.names
    ['sin', 'cos']
    """

    def __init__(self, *stages: Callable):
        if not stages:
            raise ValueError("chain(): expected at least one stage; pass the functions to "
                             "compose, stage 1 first, e.g. chain(encoder, decoder).")
        flat: list[Callable] = []
        for k, stage in enumerate(stages, start=1):
            if not callable(stage):
                raise TypeError(f"chain(...): stage {k} is a {type(stage).__name__}, not a "
                                "callable; pass functions, e.g. chain(f, g), not chain(f(x), g).")
            flat.extend(stage.stages if isinstance(stage, Chain) else [stage])
        self.stages: tuple[Callable, ...] = tuple(flat)
        self.names: list[str] = [_args.func_name(s) for s in self.stages]
        self.__name__ = f"chain({', '.join(self.names)})"
        self.__doc__ = f"The pipeline {' -> '.join(self.names)} (stage 1 first)."

    def __call__(self, x: Any) -> Any:
        for stage in self.stages:
            x = stage(x)
        return x

    def __len__(self) -> int:
        return len(self.stages)

    def __repr__(self) -> str:
        return self.__name__

    def boundaries(self, x: Any, where: str) -> list[Any]:
        """Abstract values entering and leaving each stage, ``[x, f1(x), ..., f(x)]``.

        Raises a ValueError naming the stage and both shapes when a stage cannot take
        what the previous one returns.
        """
        values = [jax.eval_shape(lambda t: t, x)]  # also turns Python numbers into arrays
        for k, stage in enumerate(self.stages, start=1):
            try:
                values.append(jax.eval_shape(stage, values[-1]))
            except Exception as exc:  # noqa: BLE001 - re-raised with the stage named
                source = "the chain's input" if k == 1 else f"stage {k - 1} ({self.names[k - 2]})"
                raise ValueError(
                    f"{where}: stages do not compose: stage {k} ({self.names[k - 1]}) cannot "
                    f"take {describe_value(values[-1])} from {source}: {_args.first_line(exc).rstrip('.')}. Make "
                    f"{source} return the shape and structure stage {k} expects."
                ) from exc
            leaves = jax.tree_util.tree_leaves(values[-1])
            for leaf in leaves:
                if not jnp.issubdtype(leaf.dtype, jnp.inexact):
                    raise TypeError(
                        f"{where}: stage {k} ({self.names[k - 1]}) returns "
                        f"{describe_value(values[-1])}; every stage must return floating-point "
                        "arrays to be differentiated.")
            if not leaves:
                raise ValueError(f"{where}: stage {k} ({self.names[k - 1]}) returns no arrays.")
        return values

    def plan(self, x: Any, where: str | None = None) -> JacobianPlan:
        """The plan ``jacobian(self)`` runs at ``x``: the planner's, on the composed
        function (the same object, cached, that :func:`explain` shows)."""
        from ._planner import api

        where = where or f"jacobian({self.__name__})(*args)"
        x = _args.cast_python_scalars(x, x)
        try:
            return api.plan_jacobian(self, (x,), {}, 0, where=where)[0]
        except Exception:
            self.boundaries(x, where)  # names the stage that does not compose
            raise

    def stage_positions(self, x: Any) -> list[int]:
        """Where each stage ends in the composed program (equations before it), for
        labelling the cuts by stage: stage ``k`` ends at ``positions[k - 1]``."""
        values = self.boundaries(x, f"jacobian({self.__name__})")
        ends, total = [], 0
        for stage, value in zip(self.stages, values):
            total += len(_cuts.flatten(jax.make_jaxpr(stage)(value)).nodes)
            ends.append(total)
        return ends

    def __fl_jacobian__(self, *, argnums, mode, layout, chunk_size, has_aux,
                        calibrate=False) -> Callable:
        where = f"jacobian({self.__name__})"
        if has_aux:
            raise ValueError(f"{where}: has_aux=True is not supported for a chain (its stages "
                             "pass one value each); compute aux outside the chain.")
        if mode != "auto":
            return BY_MODE[mode](self, argnums, chunk_size=chunk_size, layout=layout)
        _args.check_argnums(argnums, where)

        def jac_f(*args, **kwargs):
            call = f"{where}(*args)"
            if kwargs or len(args) != 1:
                raise TypeError(f"{call}: a chain takes exactly one positional argument (stage "
                                f"1's input), got {len(args)} and keywords {sorted(kwargs)}.")
            _args.normalize_argnums(argnums, 1, call)
            _args.check_differentiable(args[0], call, "args[0]")
            x = _args.cast_python_scalars(args[0], args[0])
            key = _cost.signature(x)
            if not _checked.get(self, key):
                self.boundaries(x, call)  # every stage composes and returns floats
                _checked.put(self, key, True)
            try:
                return planned_jacobian(self, argnums, (x,), {}, has_aux=False,
                                        chunk_size=chunk_size, layout=layout,
                                        calibrate=calibrate, where=call)
            except Exception:
                self.boundaries(x, call)  # names the stage that does not compose
                raise

        jac_f.__name__ = f"jacobian({self.__name__})"
        jac_f.__doc__ = (f"Jacobian of {self.__name__}, accumulated as the planner finds "
                         "cheapest (mixed mode at narrow cuts).")
        return jac_f


def chain(*stages: Callable) -> Chain:
    """Compose ``stages`` into a pipeline, stage 1 first: ``chain(f, g)(x) == g(f(x))``.

    ``jacobian(chain(...))`` is planned like any function (the planner finds the
    narrow cuts of the composed program, which include the narrow stage boundaries, and
    brackets the stages between them in the cheapest order, :func:`functorch_lite._planner.chain.plan_chain`);
    :func:`explain` shows the plan and names the stages.

    >>> import jax.numpy as jnp
    >>> from functorch_lite import jacobian
    >>> f = chain(lambda x: 2.0 * x, jnp.sin)
    >>> jacobian(f)(jnp.zeros(2))
    Array([[2., 0.],
           [0., 2.]], dtype=float32)
    """
    return Chain(*stages)


