"""Mixed-mode accumulation: ``chain``, the bracketing planner, ``explain``.

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

Finding the cheapest bracketing is the matrix-chain problem, extended so that a factor
need not be materialised: a dense block ``A`` can be pushed forward through further
stages by JVPs (one per column of ``A``) or pulled back by VJPs (one per row). With
``cost[i..j]`` the cheapest way to obtain ``J_j ... J_i`` densely, ``cf_l`` / ``cr_l``
the FLOPs of one JVP / VJP through stage ``l`` (from XLA's ``cost_analysis()`` of the
compiled stage) and ``n`` the widths::

    cost[i..j] = min(  min_k  cost[i..k] + n_{i-1} * sum_{l=k+1..j} cf_l     (forward)
                    ,  min_k  cost[k+1..j] + n_j * sum_{l=i..k} cr_l       (reverse)
                    ,  min_k  cost[i..k] + cost[k+1..j] + 2 n_j n_k n_{i-1} (product) )

with ``cost[i..i-1] = 0`` for the identity seed. Dynamic programming over the O(K^2)
intervals solves it in O(K^3).

>>> import jax.numpy as jnp
>>> enc = lambda x: x[:2] * 2.0
>>> dec = lambda z: jnp.concatenate([z, z])
>>> f = chain(enc, dec)
>>> f(jnp.arange(4.0))
Array([0., 2., 0., 2.], dtype=float32)
>>> print(plan_chain([4, 2, 4], [8.0, 4.0], [8.0, 4.0]).bracketing())
J2 · J1
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from . import _args, _cost
from ._mode import forward_mode
from .jacobians import (
    ModeChoice,
    cached_plan,
    choose_mode,
    jacfwd,
    jacobian,
    jacrev,
    split_dynamic,
    to_layout,
)

__all__ = ["chain", "Chain", "plan_chain", "Plan", "Step", "explain", "Report", "Candidate"]


# --------------------------------------------------------------------------------------
# The planner: dynamic programming over the chain.


@dataclasses.dataclass(frozen=True)
class Step:
    """How the dense product ``J_j ... J_i`` (stages ``i..j``, 1-based) is obtained.

    kind:
      ``"fwd"``: take ``sub`` (the dense ``J_k ... J_i``; the identity when ``k = i - 1``)
      and push its columns forward through stages ``k+1..j`` by JVPs.
      ``"rev"``: take ``sub`` (the dense ``J_j ... J_{k+1}``; the identity when
      ``k = j``) and pull its rows back through stages ``k..i`` by VJPs.
      ``"mul"``: multiply ``left = J_j ... J_{k+1}`` by ``right = J_k ... J_i``.
    cost: FLOPs predicted for this step and everything below it.
    """

    kind: str
    i: int
    j: int
    k: int
    cost: float
    sub: Step | None = None
    left: Step | None = None
    right: Step | None = None


def plan_chain(widths: Sequence[int], fwd_cost: Sequence[float],
               rev_cost: Sequence[float]) -> Plan:
    """The cheapest way to form ``J_K ... J_1`` (see the module docstring).

    Args:
      widths: ``[n_0, ..., n_K]``, the flat sizes between the stages.
      fwd_cost: ``cf_1 .. cf_K``, FLOPs of one JVP through each stage (``inf`` if the
        stage has no forward mode).
      rev_cost: ``cr_1 .. cr_K``, FLOPs of one VJP through each stage (``inf`` if none).

    >>> p = plan_chain([2000, 8, 2000], [8e6, 8e6], [8e6, 8e6])   # 2000-wide hidden layers
    >>> p.bracketing(), p.cost < min(p.fwd_cost_total, p.rev_cost_total) / 100
    ('J2 · J1', True)
    """
    n = [int(w) for w in widths]
    K = len(n) - 1
    cf = [math.nan] + [float(c) for c in fwd_cost]
    cr = [math.nan] + [float(c) for c in rev_cost]
    if K < 1 or len(cf) != K + 1 or len(cr) != K + 1:
        raise ValueError(f"plan_chain: need K + 1 widths and K costs, got {len(n)} widths, "
                         f"{len(fwd_cost)} and {len(rev_cost)} costs.")
    best: dict[tuple[int, int], Step] = {}

    def cost_of(i: int, j: int) -> float:  # dense J_j..J_i; identity when j = i - 1
        return 0.0 if j < i else best[(i, j)].cost

    def sub(i: int, j: int) -> Step | None:
        return None if j < i else best[(i, j)]

    for length in range(1, K + 1):
        for i in range(1, K - length + 2):
            j = i + length - 1
            options = []
            for k in range(i - 1, j):  # forward through k+1..j, seeded by J_k..J_i
                c = cost_of(i, k) + n[i - 1] * sum(cf[k + 1:j + 1])
                options.append(Step("fwd", i, j, k, c, sub=sub(i, k)))
            for k in range(j, i - 1, -1):  # reverse through k..i, seeded by J_j..J_{k+1}
                c = cost_of(k + 1, j) + n[j] * sum(cr[i:k + 1])
                options.append(Step("rev", i, j, k, c, sub=sub(k + 1, j)))
            for k in range(i, j):  # (J_j..J_{k+1}) (J_k..J_i)
                c = cost_of(i, k) + cost_of(k + 1, j) + 2.0 * n[j] * n[k] * n[i - 1]
                options.append(Step("mul", i, j, k, c, left=best[(k + 1, j)], right=best[(i, k)]))
            # ties go to the first option: unseeded (single-step) forms come first
            best[(i, j)] = min(options, key=lambda s: (s.cost if not math.isnan(s.cost) else math.inf))
    return Plan(widths=n, fwd_cost=cf[1:], rev_cost=cr[1:], root=best[(1, K)])


@dataclasses.dataclass
class Plan:
    """A chain's accumulation plan.

    Attributes:
      widths: ``[n_0, ..., n_K]``.
      fwd_cost, rev_cost: FLOPs of one JVP / VJP per stage.
      root: the :class:`Step` tree computing ``J_K ... J_1``.
      names: the stages' names (for messages and :meth:`describe_steps`).
      cost_source: where the per-pass costs came from.
      unsupported: stage index -> mode -> reason it cannot run.
    """

    widths: list[int]
    fwd_cost: list[float]
    rev_cost: list[float]
    root: Step
    names: list[str] = dataclasses.field(default_factory=list)
    cost_source: str = "given"
    unsupported: dict[int, dict[str, str]] = dataclasses.field(default_factory=dict)
    cacheable: bool = True

    @property
    def cost(self) -> float:
        """Predicted FLOPs of the plan (the passes and the products)."""
        return self.root.cost

    @property
    def fwd_cost_total(self) -> float:
        return self.widths[0] * sum(self.fwd_cost)

    @property
    def rev_cost_total(self) -> float:
        return self.widths[-1] * sum(self.rev_cost)

    @property
    def kind(self) -> str:
        """``"fwd"``/``"rev"`` when the plan is a pure mode, else ``"mixed"``."""
        kinds: set[str] = set()

        def walk(s: Step | None) -> None:
            if s is not None:
                kinds.add(s.kind)
                for child in (s.sub, s.left, s.right):
                    walk(child)

        walk(self.root)
        return kinds.pop() if len(kinds) == 1 and "mul" not in kinds else "mixed"

    def bracketing(self) -> str:
        """The product as a bracketed expression, e.g. ``J3 · (J2 · J1)``."""
        return _render(self.root)

    def passes(self) -> dict[str, int]:
        """How many JVPs, VJPs (each counted per stage crossed) and matrix products."""
        count = {"jvp": 0, "vjp": 0, "matmul": 0}

        def walk(s: Step | None) -> None:
            if s is None:
                return
            if s.kind == "fwd":
                count["jvp"] += self.widths[s.i - 1] * (s.j - s.k)
            elif s.kind == "rev":
                count["vjp"] += self.widths[s.j] * (s.k - s.i + 1)
            else:
                count["matmul"] += 1
            for child in (s.sub, s.left, s.right):
                walk(child)

        walk(self.root)
        return count

    def describe_steps(self) -> list[str]:
        """The plan in words, innermost work first."""
        lines: list[str] = []
        n = self.widths

        def name(l: int) -> str:
            return f"stage {l} ({self.names[l - 1]})" if self.names else f"stage {l}"

        def walk(s: Step | None) -> None:
            if s is None:
                return
            for child in (s.sub, s.right, s.left):
                walk(child)
            expr = _render(s)
            if s.kind == "fwd":
                seed = "identity" if s.sub is None else f"the {n[s.k]} x {n[s.i - 1]} block {_render(s.sub)}"
                stages = ", ".join(name(l) for l in range(s.k + 1, s.j + 1))
                lines.append(f"{expr}  [{n[s.j]} x {n[s.i - 1]}]: forward mode, {n[s.i - 1]} JVPs "
                             f"through {stages}, seeded with {seed}")
            elif s.kind == "rev":
                seed = "identity" if s.sub is None else f"the {n[s.j]} x {n[s.k]} block {_render(s.sub)}"
                stages = ", ".join(name(l) for l in range(s.k, s.i - 1, -1))
                lines.append(f"{expr}  [{n[s.j]} x {n[s.i - 1]}]: reverse mode, {n[s.j]} VJPs "
                             f"through {stages}, seeded with {seed}")
            else:
                lines.append(f"{expr}  [{n[s.j]} x {n[s.i - 1]}]: matrix product "
                             f"({n[s.j]} x {n[s.k]}) @ ({n[s.k]} x {n[s.i - 1]})")

        walk(self.root)
        return lines


def _render(s: Step) -> str:
    """Forward steps multiply on the left of their seed, reverse steps on the right."""
    def paren(text: str) -> str:
        return f"({text})" if "·" in text else text

    if s.kind == "mul":
        return f"{paren(_render(s.left))} · {paren(_render(s.right))}"
    expr = None if s.sub is None else _render(s.sub)
    if s.kind == "fwd":
        for l in range(s.k + 1, s.j + 1):
            expr = f"J{l}" if expr is None else f"J{l} · {paren(expr)}"
    else:
        for l in range(s.k, s.i - 1, -1):
            expr = f"J{l}" if expr is None else f"{paren(expr)} · J{l}"
    return expr


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
                    f"take {_describe(values[-1])} from {source}: {_first_line(exc).rstrip('.')}. Make "
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
            return {"fwd": jacfwd, "rev": jacrev}[mode](self, argnums, chunk_size=chunk_size,
                                                        layout=layout)
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
                pure = {"fwd": jacfwd, "rev": jacrev}[choice.mode]
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


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
            unsupported[mode] = _first_line(exc)
            costs[mode] = math.inf
            continue
        try:
            per_pass = (_cost.lowered_flops(passes, consts, v, t2)
                        - _cost.lowered_flops(passes, consts, v, t1))
        except Exception as exc:  # noqa: BLE001 - the mode traces but will not lower
            unsupported[mode] = _first_line(exc)
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


# --------------------------------------------------------------------------------------
# explain: the report.


@dataclasses.dataclass
class Candidate:
    """One way to compute the Jacobian, with XLA's figures for its compiled program.

    Attributes:
      name: ``"fwd"``, ``"rev"`` or ``"plan"`` (a chain's mixed-mode plan).
      passes: a short description, e.g. ``"300 JVPs"``.
      supported: False if the function cannot run this way (``reason`` says why).
      flops, bytes_accessed, temp_bytes: from ``cost_analysis()`` / ``memory_analysis()``
        of the compiled Jacobian program (NaN / -1 when not compiled).
      seconds: measured time when ``mode="auto"`` calibrated (else NaN).
      chosen: whether ``jacobian(mode="auto")`` runs this one.
    """

    name: str
    passes: str
    supported: bool = True
    reason: str = ""
    flops: float = math.nan
    bytes_accessed: float = math.nan
    temp_bytes: int = -1
    seconds: float = math.nan
    chosen: bool = False


@dataclasses.dataclass
class StageInfo:
    """One stage of a chain: ``name``, ``n_in`` -> ``n_out``, the FLOPs of one JVP and one
    VJP through it (``inf`` if that mode cannot run it)."""

    index: int
    name: str
    n_in: int
    n_out: int
    jvp_flops: float
    vjp_flops: float


@dataclasses.dataclass
class Report:
    """What :func:`explain` found. Public fields (stable, for tools built on it):

    Attributes:
      name: the function's name.
      argnums: as passed.
      in_shapes, out_shapes: ``dtype[shape]`` strings of the differentiated inputs and
        of the outputs.
      in_size, out_size: total element counts (``n`` and ``m`` of the ``m x n`` Jacobian).
      candidates: :class:`Candidate` rows: ``fwd``, ``rev`` and, for a chain, ``plan``.
      chosen: the name of the candidate ``jacobian(mode="auto")`` runs.
      source: how it was chosen (``calibration``, ``cost analysis``, ``sizes``,
        ``only supported mode``, or ``matrix-chain dynamic programming``).
      reason: one sentence with the evidence.
      stages: for a chain, one :class:`StageInfo` per stage (else empty).
      bracketing: for a chain, the chosen product, e.g. ``J3 · (J2 · J1)``.
      steps: for a chain, the plan in words.
      predicted_flops: for a chain, the planner's FLOPs for ``fwd``, ``rev``, ``plan``.
    """

    name: str
    argnums: Any
    in_shapes: list[str]
    out_shapes: list[str]
    in_size: int
    out_size: int
    candidates: list[Candidate]
    chosen: str
    source: str
    reason: str
    stages: list[StageInfo] = dataclasses.field(default_factory=list)
    bracketing: str = ""
    steps: list[str] = dataclasses.field(default_factory=list)
    predicted_flops: dict[str, float] = dataclasses.field(default_factory=dict)

    def candidate(self, name: str) -> Candidate:
        return next(c for c in self.candidates if c.name == name)

    def __str__(self) -> str:
        lines = [f"explain({self.name}), argnums={self.argnums}: Jacobian of "
                 f"R^{self.in_size} -> R^{self.out_size} ({self.out_size} x {self.in_size})",
                 f"  inputs:  {', '.join(self.in_shapes)}",
                 f"  outputs: {', '.join(self.out_shapes)}"]
        if self.stages:
            lines.append("")
            lines.append(f"  {'stage':<6} {'name':<16} {'n_in':>7} {'n_out':>7} "
                         f"{'JVP FLOPs':>11} {'VJP FLOPs':>11}")
            for s in self.stages:
                lines.append(f"  {s.index:<6} {s.name[:16]:<16} {s.n_in:>7} {s.n_out:>7} "
                             f"{_num(s.jvp_flops):>11} {_num(s.vjp_flops):>11}")
        lines.append("")
        head = (f"  {'':<2}{'mode':<6} {'passes':<28} {'FLOPs':>10} {'bytes':>10} "
                f"{'temp mem':>10} {'time':>10}")
        lines.append(head)
        lines.append("  " + "-" * (len(head) - 2))
        for c in self.candidates:
            mark = "* " if c.chosen else "  "
            if not c.supported:
                lines.append(f"  {mark}{c.name:<6} cannot run: {c.reason}")
                continue
            lines.append(f"  {mark}{c.name:<6} {c.passes[:28]:<28} {_num(c.flops):>10} "
                         f"{_bytes(c.bytes_accessed):>10} {_bytes(c.temp_bytes):>10} "
                         f"{_secs(c.seconds):>10}")
        lines.append("")
        lines.append(f"  chosen: {self.chosen}, by {self.source}: {self.reason}")
        if self.bracketing:
            lines.append(f"  bracketing: {self.bracketing}")
            for k, step in enumerate(self.steps, start=1):
                lines.append(f"    {k}. {step}")
        return "\n".join(lines)

    def plot(self, path: str) -> str:
        """Draw the report as a PNG at ``path`` (needs matplotlib: the ``plot`` extra)."""
        try:
            from matplotlib.figure import Figure
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("Report.plot needs matplotlib: pip install "
                              "'functorch-lite[plot]'.") from exc
        rows = [c for c in self.candidates if c.supported]
        panels = 3 if self.stages else 2
        fig = Figure(figsize=(4.2 * panels, 3.8), layout="constrained")
        axes = fig.subplots(1, panels)
        names = [c.name + (" *" if c.chosen else "") for c in rows]
        colours = ["tab:orange" if c.chosen else "tab:blue" for c in rows]
        axes[0].bar(names, [c.flops for c in rows], color=colours)
        axes[0].set_yscale("log")
        axes[0].set_title("FLOPs (XLA cost analysis)")
        axes[1].bar(names, [max(c.temp_bytes, 0) / 2**20 for c in rows], color=colours)
        axes[1].set_title("planned temp memory (MiB)")
        if self.stages:
            widths = [self.stages[0].n_in] + [s.n_out for s in self.stages]
            ax = axes[2]
            ax.plot(range(len(widths)), widths, marker="o")
            ax.set_yscale("log")
            ax.set_xticks(range(len(widths)), ["in"] + [s.name[:10] for s in self.stages])
            ax.set_title("widths: " + self.bracketing, fontsize=9)
        fig.suptitle(f"explain({self.name}): R^{self.in_size} -> R^{self.out_size}, "
                     f"chosen {self.chosen} ({self.source})", fontsize=10)
        fig.savefig(path, dpi=110)
        return path


def _num(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if math.isinf(v):
        return "n/a"
    return f"{v:.3g}"


def _bytes(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v < 0:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if v < 1024 or unit == "GiB":
            return f"{v:.0f}{unit}" if unit == "B" else f"{v:.1f}{unit}"
        v /= 1024
    return str(v)


def _secs(v: float) -> str:
    if math.isnan(v):
        return "-"
    return f"{v * 1e3:.3g}ms"


def _shapes(tree: Any) -> list[str]:
    return [_describe(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


def _fill(c: Candidate, run: Callable, abstract: list) -> None:
    try:
        stats = _cost.analyse(run, *abstract)
        c.flops, c.bytes_accessed, c.temp_bytes = stats.flops, stats.bytes_accessed, stats.temp_bytes
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        c.reason = f"could not compile: {_first_line(exc)}"


def explain(func: Callable, *args: Any, argnums: _args.Argnums = 0, **kwargs: Any) -> Report:
    """How ``jacobian(func, argnums, mode="auto")`` accumulates at ``args``, and what the
    alternatives cost.

    Compiles (does not run) the forward, reverse and chosen programs and reads XLA's
    ``cost_analysis()`` and ``memory_analysis()``. For a :func:`chain` it also lists the
    stages and the chosen bracketing. ``print(report)`` gives a table; ``report.plot(path)``
    draws it (matplotlib). Keyword arguments are passed to ``func`` undifferentiated.

    >>> import jax.numpy as jnp
    >>> A = jnp.ones((50, 2))
    >>> r = explain(lambda x: jnp.tanh(A @ x), jnp.ones(2))
    >>> r.in_size, r.out_size, r.candidate("fwd").passes
    (2, 50, '2 JVPs')
    """
    where = f"explain({_args.func_name(func)})"
    _args.check_callable(func, where)
    _, as_tuple = _args.check_argnums(argnums, where)
    positions = _args.differentiable_positions(args, argnums, where)
    primal = tuple(args[p] for p in positions)
    if isinstance(func, Chain):
        if kwargs or len(args) != 1:
            raise TypeError(f"{where}: a chain takes exactly one positional argument (stage "
                            f"1's input), got {len(args)} and keywords {sorted(kwargs)}.")
        args = (_args.cast_python_scalars(args[0], args[0]),)
        func.boundaries(args[0], where)  # names the stage that does not compose
    dynamic, rebuild = split_dynamic(args, kwargs)
    abstract = _cost.abstract(dynamic)

    def call(*dyn):
        a, kw = rebuild(list(dyn))
        return func(*a, **kw)

    out = jax.eval_shape(call, *abstract)
    in_size = sum(math.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(primal))
    out_size = sum(math.prod(o.shape) for o in jax.tree_util.tree_leaves(out))
    report = Report(name=_args.func_name(func), argnums=argnums, in_shapes=_shapes(primal),
                    out_shapes=_shapes(out), in_size=in_size, out_size=out_size,
                    candidates=[], chosen="", source="", reason="")

    def runner(transform: Callable) -> Callable:
        jac = transform(func, argnums)

        def run(*dyn):
            a, kw = rebuild(list(dyn))
            return jac(*a, **kw)

        return run

    fwd = Candidate("fwd", f"{in_size} JVPs")
    rev = Candidate("rev", f"{out_size} VJPs")
    report.candidates = [fwd, rev]

    if isinstance(func, Chain):
        plan = func.plan(args[0], where)
        counts = plan.passes()
        planned = Candidate("plan", f"{counts['jvp']} JVP, {counts['vjp']} VJP, "
                                    f"{counts['matmul']} matmul")
        report.candidates.append(planned)
        bad_fwd = {k: d["fwd"] for k, d in plan.unsupported.items() if "fwd" in d}
        bad_rev = {k: d["rev"] for k, d in plan.unsupported.items() if "rev" in d}
        for c, bad in ((fwd, bad_fwd), (rev, bad_rev)):
            if bad:
                c.supported = False
                c.reason = "; ".join(f"stage {k}: {r}" for k, r in bad.items())
        if fwd.supported:
            _fill(fwd, runner(jacfwd), abstract)
        if rev.supported:
            _fill(rev, runner(jacrev), abstract)
        planned_jac = jacobian(func, argnums)

        def run_plan(*dyn):
            a, _ = rebuild(list(dyn))
            return planned_jac(*a)

        report.source = "matrix-chain dynamic programming"
        report.reason = (f"predicted {_num(plan.cost)} FLOPs vs fwd {_num(plan.fwd_cost_total)}, "
                         f"rev {_num(plan.rev_cost_total)} (per-pass costs: {plan.cost_source})")
        if plan.kind == "mixed":
            _fill(planned, run_plan, abstract)
            planned.chosen = True
            report.chosen = "plan"
            report.reason = "mixed mode; " + report.reason
        else:  # a pure mode: jacobian measures which one (see Chain.__fl_jacobian__)
            report.candidates.remove(planned)
            choice = choose_mode(func, args, {}, argnums)
            for c in (fwd, rev):
                c.seconds = choice.seconds.get(c.name, math.nan)
                c.chosen = c.name == choice.mode
            report.chosen = choice.mode
            report.source += " + " + choice.source
            report.reason = (f"no mixed bracketing is cheaper ({report.reason}); "
                             f"then {choice.describe()}")
        report.stages = [StageInfo(k, name, plan.widths[k - 1], plan.widths[k],
                                   plan.fwd_cost[k - 1], plan.rev_cost[k - 1])
                         for k, name in enumerate(plan.names, start=1)]
        report.bracketing = plan.bracketing()
        report.steps = plan.describe_steps()
        report.predicted_flops = {"fwd": plan.fwd_cost_total, "rev": plan.rev_cost_total,
                                  "plan": plan.cost}
        return report

    choice: ModeChoice = choose_mode(func, args, kwargs, argnums)
    for c in (fwd, rev):
        if c.name in choice.unsupported:
            c.supported, c.reason = False, choice.unsupported[c.name]
        else:
            _fill(c, runner({"fwd": jacfwd, "rev": jacrev}[c.name]), abstract)
        c.seconds = choice.seconds.get(c.name, math.nan)
        c.chosen = c.name == choice.mode
    report.chosen, report.source = choice.mode, choice.source
    report.reason = choice.describe()
    return report

