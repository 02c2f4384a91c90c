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

:mod:`functorch_lite.planner` finds the cheapest bracketing (the matrix-chain problem,
extended to JVPs and VJPs); this module measures each stage's per-pass cost, and runs the
plan. :mod:`functorch_lite.explanation` reports it.

>>> import jax.numpy as jnp
>>> enc = lambda x: x[:2] * 2.0
>>> dec = lambda z: jnp.concatenate([z, z])
>>> f = chain(enc, dec)
>>> f(jnp.arange(4.0))
Array([0., 2., 0., 2.], dtype=float32)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from . import _args, _cost
from ._mode import forward_mode
from .jacobians import BY_MODE, cached_plan, choose_mode, to_layout
from .planner import Plan, Step, plan_chain

__all__ = ["chain", "Chain", "execute", "plan_chain", "Plan", "Step"]


# --------------------------------------------------------------------------------------
# chain: the pipeline object.


class _Shown(str):
    def __repr__(self) -> str:
        return str(self)


def _describe(tree: Any) -> str:
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
                    f"take {_describe(values[-1])} from {source}: {_args.first_line(exc).rstrip('.')}. Make "
                    f"{source} return the shape and structure stage {k} expects."
                ) from exc
            leaves = jax.tree_util.tree_leaves(values[-1])
            for leaf in leaves:
                if not jnp.issubdtype(leaf.dtype, jnp.inexact):
                    raise TypeError(
                        f"{where}: stage {k} ({self.names[k - 1]}) returns "
                        f"{_describe(values[-1])}; every stage must return floating-point "
                        "arrays to be differentiated.")
            if not leaves:
                raise ValueError(f"{where}: stage {k} ({self.names[k - 1]}) returns no arrays.")
        return values

    def plan(self, x: Any, where: str | None = None) -> Plan:
        """The accumulation plan for input ``x`` (remembered per input signature)."""
        where = where or f"jacobian({self.__name__})(*args)"
        key = ("chain", self, _cost.signature(x))
        return cached_plan(key, lambda: _plan_for(self, x, where))

    def __fl_jacobian__(self, *, argnums, mode, layout, chunk_size, has_aux) -> Callable:
        where = f"jacobian({self.__name__})"
        if has_aux:
            raise ValueError(f"{where}: has_aux=True is not supported for a chain (its stages "
                             "pass one value each); compute aux outside the chain.")
        if mode != "auto":
            return BY_MODE[mode](self, argnums, chunk_size=chunk_size, layout=layout)
        _, as_tuple = _args.check_argnums(argnums, where)

        def jac_f(*args, **kwargs):
            call = f"{where}(*args)"
            if kwargs or len(args) != 1:
                raise TypeError(f"{call}: a chain takes exactly one positional argument (stage "
                                f"1's input), got {len(args)} and keywords {sorted(kwargs)}.")
            _args.normalize_argnums(argnums, 1, call)
            _args.check_differentiable(args[0], call, "args[0]")
            x = _args.cast_python_scalars(args[0], args[0])
            plan = self.plan(x, call)
            if plan.kind != "mixed":
                # No mixed bracketing beats the pure modes here; which pure mode is
                # faster on this machine is then measured, as for any function.
                choice = choose_mode(self, (x,), {}, argnums, chunk_size=chunk_size)
                pure = BY_MODE[choice.mode]
                return pure(self, argnums, chunk_size=chunk_size, layout=layout)(x)
            matrix = execute(plan, self.stages, x, chunk_size)
            out = jax.eval_shape(self, _cost.abstract(x))
            jac = _matrix_to_tree(matrix, out, (x,) if as_tuple else x)
            return to_layout(jac, (x,) if as_tuple else x, layout)

        jac_f.__name__ = f"jacobian({self.__name__})"
        jac_f.__doc__ = f"Jacobian of {self.__name__}, mixed-mode (cheapest bracketing)."
        return jac_f


def chain(*stages: Callable) -> Chain:
    """Compose ``stages`` into a pipeline, stage 1 first: ``chain(f, g)(x) == g(f(x))``.

    ``jacobian(chain(...))`` computes each stage's Jacobian (or its products with the
    neighbours' Jacobians) in its best mode and multiplies them in the cheapest order
    (see :func:`plan_chain`); :func:`explain` shows the plan.

    >>> import jax.numpy as jnp
    >>> from functorch_lite import jacobian
    >>> f = chain(lambda x: 2.0 * x, jnp.sin)
    >>> jacobian(f)(jnp.zeros(2))
    Array([[2., 0.],
           [0., 2.]], dtype=float32)
    """
    return Chain(*stages)


def _flat_stage(stage: Callable, example_in: Any) -> Callable:
    """``stage`` as a map between flat vectors (``ravel_pytree`` on both sides)."""
    _, unravel = ravel_pytree(example_in)

    def flat(v):
        return ravel_pytree(stage(unravel(v)))[0]

    return flat


def _zeros_like_abstract(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), tree)


def _stage_costs(stage: Callable, a_in: Any):
    """Widths, and the FLOPs of one JVP and one VJP through ``stage`` beyond its primal,
    from XLA's cost analysis of the lowered programs; ``inf`` (and the reason, in the
    returned dict) when a mode cannot run the stage.

    The stage is first staged out to a jaxpr (``jax.make_jaxpr``, in forward mode for
    the JVP) and its closed-over arrays become arguments, so lowering does not embed
    large weights as constants (fast) and works on closed-over tracers inside ``jit``.
    The marginal cost of a direction is ``flops(2 directions) - flops(1 direction)``.
    """
    with jax.ensure_compile_time_eval():
        example = _zeros_like_abstract(a_in)
        flat_example = ravel_pytree(example)[0]
    flat = _flat_stage(stage, example)
    v = jax.ShapeDtypeStruct(flat_example.shape, flat_example.dtype)
    out = jax.eval_shape(flat, v)
    n_in, n_out = v.shape[0], out.shape[0]
    costs: dict[str, float] = {}
    unsupported: dict[str, str] = {}
    for mode in ("fwd", "rev"):
        context = forward_mode if mode == "fwd" else contextlib.nullcontext
        try:  # can this mode run the stage at all? (abstract trace, as the plan runs it)
            with context():
                staged = jax.make_jaxpr(flat)(v)
                consts = _cost.abstract(list(staged.consts))

                def g(cs, x, jaxpr=staged.jaxpr):
                    return jax.core.eval_jaxpr(jaxpr, cs, x)[0]

                if mode == "fwd":
                    def passes(cs, x, t):
                        return jax.vmap(lambda tt: jax.jvp(lambda y: g(cs, y), (x,), (tt,))[1])(t)
                    width = n_in
                else:
                    def passes(cs, x, t):
                        _, pull = jax.vjp(lambda y: g(cs, y), x)
                        return jax.vmap(lambda cc: pull(cc)[0])(t)
                    width = n_out
                dtype = v.dtype if mode == "fwd" else out.dtype
                t1 = jax.ShapeDtypeStruct((1, width), dtype)
                t2 = jax.ShapeDtypeStruct((2, width), dtype)
                jax.eval_shape(passes, consts, v, t2)
        except Exception as exc:  # noqa: BLE001 - this mode cannot run the stage
            unsupported[mode] = _args.first_line(exc)
            costs[mode] = math.inf
            continue
        try:
            per_pass = (_cost.lowered_flops(passes, consts, v, t2)
                        - _cost.lowered_flops(passes, consts, v, t1))
        except Exception as exc:  # noqa: BLE001 - the mode traces but will not lower
            unsupported[mode] = _args.first_line(exc)
            costs[mode] = math.inf
            continue
        if not math.isfinite(per_pass) or per_pass <= 0:
            per_pass = 2.0 * n_in * n_out  # dense-linear estimate
        costs[mode] = max(per_pass, float(n_in + n_out))
    return n_in, n_out, costs, unsupported


def _plan_for(ch: Chain, x: Any, where: str) -> Plan:
    values = ch.boundaries(x, where)
    widths, cf, cr, unsupported = [], [], [], {}
    for k, stage in enumerate(ch.stages, start=1):
        n_in, n_out, costs, bad = _stage_costs(stage, values[k - 1])
        if not widths:
            widths.append(n_in)
        widths.append(n_out)
        cf.append(costs["fwd"])
        cr.append(costs["rev"])
        if bad:
            unsupported[k] = bad
        if len(bad) == 2:
            raise TypeError(f"{where}: stage {k} ({ch.names[k - 1]}) can be differentiated "
                            f"in neither mode: {bad['fwd']}; {bad['rev']}")
    plan = plan_chain(widths, cf, cr)
    if not math.isfinite(plan.cost):
        raise TypeError(f"{where}: no accumulation order can run this chain: "
                        + "; ".join(f"stage {k}: {m} {r}" for k, d in unsupported.items()
                                    for m, r in d.items()))
    plan.names = list(ch.names)
    plan.unsupported = unsupported
    plan.cost_source = "XLA cost analysis of each stage's JVP and VJP"
    return plan


# --------------------------------------------------------------------------------------
# Running a plan.


def _batched(fn: Callable, m: jax.Array, axis: int, chunk_size: int | None) -> jax.Array:
    """Apply ``fn`` to each slice of ``m`` along ``axis`` (vmap, or chunked lax.map)."""
    if chunk_size is None:
        return jax.vmap(fn, in_axes=axis, out_axes=axis)(m)
    moved = jnp.moveaxis(m, axis, 0)
    out = jax.lax.map(fn, moved, batch_size=chunk_size)
    return jnp.moveaxis(out, 0, axis)


def execute(plan: Plan, stages: Sequence[Callable], x: Any, chunk_size: int | None = None) -> jax.Array:
    """The dense Jacobian ``J_K ... J_1`` (``n_K x n_0``) of the chain at ``x``, by ``plan``."""
    # Primal values between the stages, as flat vectors, and each stage as a flat map.
    primals, flats = [], []
    value = x
    for stage in stages:
        flat_in, _ = ravel_pytree(value)
        flats.append(_flat_stage(stage, value))
        primals.append(flat_in)
        value = stage(value)
    dtypes = [p.dtype for p in primals] + [ravel_pytree(value)[0].dtype]
    n = plan.widths

    def dense(s: Step | None, i: int, j: int) -> jax.Array:
        if s is None:  # identity seed, n_{i-1} x n_{i-1}
            return jnp.eye(n[i - 1], dtype=dtypes[i - 1])
        if s.kind == "fwd":
            m = dense(s.sub, s.i, s.k)
            for l in range(s.k + 1, s.j + 1):
                f, p = flats[l - 1], primals[l - 1]
                with forward_mode():
                    m = _batched(lambda t, f=f, p=p: jax.jvp(f, (p,), (t.astype(p.dtype),))[1],
                                 m, 1, chunk_size)
            return m
        if s.kind == "rev":
            m = dense(s.sub, s.k + 1, s.j)
            for l in range(s.k, s.i - 1, -1):
                _, pull = jax.vjp(flats[l - 1], primals[l - 1])
                m = _batched(lambda c, pull=pull: pull(c)[0], m, 0, chunk_size)
            return m
        return dense(s.left, s.k + 1, s.j) @ dense(s.right, s.i, s.k)

    root = plan.root
    return dense(root, root.i, root.j)


def _matrix_to_tree(matrix: jax.Array, out: Any, primal: Any) -> Any:
    """Split the flat ``n_out x n_in`` Jacobian into the numerator-layout pytree: nested
    like ``out``, then like ``primal``; each leaf ``out.shape + in.shape``."""
    out_leaves, out_tree = jax.tree_util.tree_flatten(out)
    in_leaves, in_tree = jax.tree_util.tree_flatten(primal)
    rows, r = [], 0
    for o in out_leaves:
        size_o = math.prod(o.shape)
        cols, c = [], 0
        for leaf in in_leaves:
            shape = np.shape(leaf)
            size_i = math.prod(shape)
            block = matrix[r:r + size_o, c:c + size_i]
            cols.append(block.reshape(tuple(o.shape) + tuple(shape)).astype(o.dtype))
            c += size_i
        rows.append(jax.tree_util.tree_unflatten(in_tree, cols))
        r += size_o
    return jax.tree_util.tree_unflatten(out_tree, rows)
