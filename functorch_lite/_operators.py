r"""Differential operators by collapsed Taylor mode: :func:`laplacian`,
:func:`diff_operator`, :func:`biharmonic`, :func:`divergence`.

For ``f`` at ``x`` and a direction ``v``, the curve ``t -> f(x + t v)`` has Taylor
coefficients ``c_1 = J v``, ``c_2 = v^T H v / 2``, ..., ``c_K = D^K f[v]^K / K!``. A linear
differential operator is a weighted sum of top coefficients over a set of directions:

.. math::

    \Delta f = \sum_i \partial_i^2 f = 2 \sum_i c_2(e_i), \qquad
    \sum_{ij} C_{ij} \partial_i \partial_j f = 2 \sum_r c_2(\sigma_r) \ (C = \sigma\sigma^T),

    \Delta^2 f = \sum_{ij} \partial_i^2 \partial_j^2 f
    = 24 \Big[ \tfrac{4 - d}{3} \sum_i c_4(e_i)
      + \tfrac16 \sum_{i<j} \big(c_4(e_i + e_j) + c_4(e_i - e_j)\big) \Big].

(The last identity: ``D⁴f[e_i ± e_j]⁴`` summed over both signs is
``2 f_iiii + 12 f_iijj + 2 f_jjjj``; the odd mixed terms cancel.)

*Collapsed* Taylor mode (:mod:`functorch_lite._jaxpr.taylor`) pushes the value, the
lower coefficients of each direction (a batch) and ONE top coefficient, already summed
over the directions with the weights, through the program. The Laplacian of an MLP
then costs one pass carrying ``d + 2`` vectors, where the trace of ``jax.hessian`` runs
``d`` Hessian-vector products (each a forward and a reverse pass).

The biharmonic is exact two ways: ``laplacian(laplacian(f))`` (the default; each
Laplacian collapsed) or one fourth-order collapsed pass over the ``d²`` directions
above (``method="taylor4"``).

Stochastic estimators draw the directions instead: ``E[z^T H z] = tr H`` for Rademacher
or standard Gaussian ``z`` (Hutchinson), ``E[D⁴f[z]⁴] = 3 Δ²f`` for Gaussian ``z``
(Isserlis). The same propagation runs with ``k = num_samples`` directions;
``return_std=True`` keeps the ``k`` top coefficients apart (one more top coefficient
per sample, about twice the cost of the collapsed estimate) and returns
``(estimate, standard_error)`` with ``standard_error = std(samples) / sqrt(k)``.

Every operator returned here is a callable with an ``explain(*args)`` method: its
passes and XLA's FLOPs against the Hessian route (:class:`OperatorCost`).

>>> import jax.numpy as jnp
>>> import functorch_lite as fl
>>> fl.laplacian(lambda x: jnp.sum(x ** 2))(jnp.ones(3))      # Δ|x|² = 2d
Array(6., dtype=float32)
>>> fl.biharmonic(lambda x: jnp.sum(x ** 2) ** 2)(jnp.ones(2))  # Δ²|x|⁴ = 8d(d+2)
Array(64., dtype=float32)
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from . import _args
from ._cost import analyse
from ._jaxpr.taylor import UnsupportedPrimitiveError, propagate, stage_with_tree


__all__ = ["laplacian", "diff_operator", "biharmonic", "divergence", "OperatorCost",
           "UnsupportedPrimitiveError"]

METHODS = ("exact", "stochastic")
DISTRIBUTIONS = ("rademacher", "gaussian")


# ------------------------------------------------------------------ the propagation

@dataclasses.dataclass
class _Problem:
    """``func`` flattened to ``flat(*leaves)``: which leaves are differentiated, their
    total size ``D``, and how to rebuild the output."""

    closed: Any
    leaves: list
    live: list          # indices of differentiated leaves
    shapes: list        # their shapes
    dtype: Any          # the dtype of the directions
    dim: int
    out_tree: Any
    out_avals: list


def _problem(func: Callable, args: tuple, argnums, where: str, check_out: Callable | None = None) -> _Problem:
    positions = _args.differentiable_positions(args, argnums, where)
    flat_args = []
    live = []
    for i, a in enumerate(args):
        a = jax.tree_util.tree_map(lambda t: t if isinstance(t, _args.ARRAY_TYPES) else jnp.asarray(t), a) \
            if i in positions else a
        leaves = jax.tree_util.tree_leaves(a)
        if i in positions:
            live.extend(range(len(flat_args), len(flat_args) + len(leaves)))
        flat_args.extend(leaves)
    treedef = jax.tree_util.tree_structure(tuple(args))

    def flat(*leaves):
        out = func(*jax.tree_util.tree_unflatten(treedef, list(leaves)))
        _args.check_arraylike(out, where, "the output")
        _args.check_inexact_output(out, where)
        if check_out is not None:
            check_out(out)
        return jax.tree_util.tree_map(jnp.asarray, out)

    closed, out_tree = stage_with_tree(flat, *flat_args)   # the jaxpr's outputs: out's leaves
    shapes = [tuple(np.shape(flat_args[i])) for i in live]
    dtype = jnp.result_type(*[flat_args[i] for i in live])
    dim = sum(math.prod(s) for s in shapes)
    return _Problem(closed, flat_args, live, shapes, dtype, dim, out_tree,
                    [v.aval for v in closed.jaxpr.outvars])


def _split(prob: _Problem, V):
    """Directions ``V`` (R, D) split into per-leaf ``(R, *leaf.shape)`` arrays."""
    out, off = [], 0
    for i, s in zip(prob.live, prob.shapes):
        n = math.prod(s)
        out.append(jnp.reshape(V[:, off:off + n], (V.shape[0],) + s).astype(prob.leaves[i].dtype))
        off += n
    return out


def _seeds(prob: _Problem, V, identity: bool) -> dict:
    """``propagate``'s ``lower`` and ``eye`` for directions ``V``; ``identity``: ``V`` is
    ``eye(D)``, which a single differentiated leaf takes whole (its seed is its identity)."""
    seeds = dict(zip(prob.live, _split(prob, V)))
    lower = [[seeds[i]] if i in seeds else [] for i in range(len(prob.leaves))]
    eye = [identity and len(prob.live) == 1 and i in seeds for i in range(len(prob.leaves))]
    return {"lower": lower, "eye": eye}


def _top(prob: _Problem, V, weights, order: int, where: str, identity: bool = False):
    """The collapsed top coefficient of each output (zeros where it is identically 0)."""
    outs = propagate(prob.closed, prob.leaves, order=order, weights=weights, where=where,
                     **_seeds(prob, V, identity))
    lead = () if weights is None or jnp.ndim(weights) == 1 else (jnp.shape(weights)[0],)
    return [jnp.zeros(lead + tuple(a.shape), a.dtype) if o.top is None else o.top
            for o, a in zip(outs, prob.out_avals)]


def _unflatten(prob: _Problem, leaves):
    return jax.tree_util.tree_unflatten(prob.out_tree, list(leaves))


def _directions(key, num: int, dim: int, dtype, distribution: str):
    if distribution == "rademacher":
        return jax.random.rademacher(key, (num, dim), dtype=dtype)
    return jax.random.normal(key, (num, dim), dtype=dtype)


def _stochastic(prob, V, order, scale, return_std, where):
    """Mean of the per-direction top coefficients (times ``scale``), and its standard
    error with ``return_std``."""
    k = V.shape[0]
    if not return_std:
        w = jnp.full((k,), 1.0 / k, V.dtype)
        return _unflatten(prob, [scale * t for t in _top(prob, V, w, order, where)])
    samples = [scale * t for t in _top(prob, V, jnp.eye(k, dtype=V.dtype), order, where)]
    mean = [jnp.mean(s, axis=0) for s in samples]
    se = [jnp.std(s, axis=0, ddof=1) / math.sqrt(k) for s in samples]
    return _unflatten(prob, mean), _unflatten(prob, se)


# ----------------------------------------------------------------------- the checks

def _check_stochastic(where, method, num_samples, key, distribution, return_std, *,
                      distributions=DISTRIBUTIONS):
    _args.check_choice(method, METHODS, where, "method")
    _args.check_bool(return_std, where, "return_std")
    if method == "stochastic":
        n = _args.check_positive_int(num_samples, where, "num_samples",
                                     hint="; the estimator averages num_samples random directions")
        if return_std and n < 2:
            raise ValueError(f"{where}: return_std=True needs num_samples >= 2 to estimate a "
                             f"standard error, got num_samples={n}.")
        if key is None:
            raise ValueError(f"{where}: method='stochastic' draws random directions and needs a "
                             "PRNG key; pass key=jax.random.key(0) (or any key).")
        _args.check_key(key, where)
        _args.check_choice(distribution, distributions, where, "distribution")
        return n
    for name, value, default in (("num_samples", num_samples, None), ("key", key, None),
                                 ("return_std", return_std, False)):
        if value is not default:
            raise ValueError(f"{where}: {name} is only used by method='stochastic'; "
                             "method='exact' is deterministic. Drop it, or pass method='stochastic'.")
    return None


# -------------------------------------------------------------------- cost lines

@dataclasses.dataclass(frozen=True)
class OperatorCost:
    """What one call of an operator costs, against the Hessian route.

    Attributes:
      operator: its name, e.g. ``"laplacian"``.
      dim: ``d``, the number of differentiated inputs.
      passes: the passes of collapsed Taylor mode, in words.
      reference: the Hessian (or Jacobian) route it replaces, in words.
      flops, reference_flops: XLA's FLOPs of one compiled call of each.
      temp_bytes, reference_temp_bytes: XLA's planned scratch memory of each.

    >>> import jax.numpy as jnp
    >>> cost = laplacian(lambda x: (x ** 2).sum()).explain(jnp.ones(3))
    >>> cost.operator, cost.dim, cost.passes
    ('laplacian', 3, '1 pass carrying the value, 3 first-order directions and 1 collapsed second-order coefficient')
    """

    operator: str
    dim: int
    passes: str
    reference: str
    flops: float
    reference_flops: float
    temp_bytes: int
    reference_temp_bytes: int

    @property
    def flops_ratio(self) -> float:
        """``reference_flops / flops`` (> 1: fewer FLOPs than the Hessian route)."""
        return self.reference_flops / self.flops if self.flops else math.nan

    def __str__(self) -> str:
        return (f"{self.operator} (d={self.dim}): {self.passes}; {self.flops:.3g} FLOPs vs "
                f"{self.reference_flops:.3g} for {self.reference} ({self.flops_ratio:.1f}x fewer)")


class _Operator:
    """A differential operator of ``func``: call it like ``func``; ``explain(*args)``
    gives its :class:`OperatorCost`."""

    def __init__(self, name: str, impl: Callable, passes: Callable, reference: Callable,
                 reference_text: Callable, doc: str):
        self.__name__ = self.__qualname__ = name
        self.__doc__ = doc
        self._impl, self._passes, self._reference, self._reference_text = impl, passes, reference, reference_text

    def __call__(self, *args):
        return self._impl(*args)

    def __repr__(self) -> str:
        return f"<{self.__name__}>"

    def explain(self, *args) -> OperatorCost:
        """XLA's FLOPs and temp bytes of this operator and of the Hessian route at ``args``
        (compiled for their shapes; nothing runs)."""
        abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.asarray(a).dtype), args)
        ours = analyse(self._impl, *abstract)
        ref = analyse(self._reference, *abstract)
        dim = self._dim(args)
        return OperatorCost(self.__name__.split("(")[0], dim, self._passes(dim), self._reference_text(dim),
                            ours.flops, ref.flops, ours.temp_bytes, ref.temp_bytes)

    def _dim(self, args) -> int:
        return self._passes.dim(args) if hasattr(self._passes, "dim") else 0


def _dim_of(args, argnums) -> int:
    positions = _args.normalize_argnums(argnums, len(args), "explain")
    return sum(int(np.size(leaf)) for p in positions for leaf in jax.tree_util.tree_leaves(args[p]))


def _passes_fn(text: Callable[[int], str], argnums) -> Callable:
    fn = lambda d: text(d)  # noqa: E731
    fn.dim = lambda args: _dim_of(args, argnums)
    return fn


def _raveled(func: Callable, args: tuple, argnums):
    """``func`` as a function of one flat vector (the argnums' leaves), and that vector."""
    positions = _args.normalize_argnums(argnums, len(args), "reference")
    flat, unravel = ravel_pytree(tuple(args[p] for p in positions))

    def g(v):
        parts = unravel(v)
        new = list(args)
        for p, part in zip(positions, parts):
            new[p] = part
        return func(*new)

    return g, flat


def _hessian_trace(func: Callable, args: tuple, argnums, weight=None):
    """The Hessian route: ``tr H`` (or ``tr(C H)``) of each output from the full Hessian
    (``jacfwd(jacrev(.))``, this library's, so :mod:`functorch_lite.nn` layers work)."""
    from ._jacobians import jacfwd, jacrev

    g, v = _raveled(func, args, argnums)
    out = jax.eval_shape(g, v)
    leaves, tree = jax.tree_util.tree_flatten(out)
    results = []
    for k in range(len(leaves)):
        H = jacfwd(jacrev(lambda v, k=k: jax.tree_util.tree_leaves(g(v))[k]))(v)
        results.append(jnp.trace(H, axis1=-2, axis2=-1) if weight is None
                       else jnp.tensordot(H, jnp.asarray(weight, H.dtype), axes=((-2, -1), (0, 1))))
    return jax.tree_util.tree_unflatten(tree, results)


# ----------------------------------------------------------------------- laplacian

def laplacian(func: Callable, argnums: _args.Argnums = 0, *, method: str = "exact",
              num_samples: int | None = None, key: Any = None, distribution: str = "rademacher",
              return_std: bool = False, mesh: Any = None, mesh_axis: str | None = None) -> Callable:
    r"""Laplacian ``Δf = Σ_i ∂²f/∂x_i²`` by collapsed Taylor mode (forward Laplacian).

    One pass carries the value, the ``d`` first-order directions ``e_i`` (a batch) and one
    second-order coefficient summed over them, ``X_2 = Σ_i e_i^T H e_i / 2``; the result
    is ``2 X_2``. For a vector-valued ``func`` it is the Laplacian of each output; for
    pytree arguments (and tuple ``argnums``) ``d`` counts every element of them.

    ``method="stochastic"`` returns Hutchinson's unbiased estimate
    ``(1/k) Σ_s z_s^T H z_s`` over ``k = num_samples`` directions drawn from ``key``
    (``distribution`` ``"rademacher"`` or ``"gaussian"``), propagated the same way;
    with ``return_std=True`` it returns ``(estimate, standard_error)``.

    Works under ``jax.jit``, ``jax.vmap`` (a batch of points) and ``jax.grad``.

    ``mesh=`` (a ``jax.sharding.Mesh``, axis ``mesh_axis=``, default its first) splits the
    directions over its devices, partial sums added across them (docs/scale.md); a batch
    of points splits with ``fl.vmap(laplacian(f), mesh=mesh)``.

    >>> import jax, jax.numpy as jnp
    >>> f = lambda x: jnp.prod(jnp.sin(x))              # Δf = -d f
    >>> x = jnp.array([0.3, 0.5, 0.7])
    >>> bool(jnp.allclose(laplacian(f)(x), -3 * f(x)))
    True
    >>> jax.vmap(laplacian(lambda x: x @ x))(jnp.ones((2, 4)))
    Array([8., 8.], dtype=float32)
    """
    _args.check_callable(func, "laplacian")
    _args.check_argnums(argnums, "laplacian")
    name = _args.func_name(func)
    where = f"laplacian({name})(*args)"
    k = _check_stochastic(f"laplacian({name})", method, num_samples, key, distribution, return_std)
    from . import _mesh  # mesh=: the directions split over devices (issue 17)
    mesh_axis = _mesh.check(mesh, mesh_axis, False, "laplacian")

    def impl(*args):
        if mesh is not None:
            return _mesh.laplacian(func, args, argnums=argnums, method=method, num_samples=k, key=key,
                                   distribution=distribution, return_std=return_std, mesh=mesh,
                                   mesh_axis=mesh_axis)
        prob = _problem(func, args, argnums, where)
        if method == "exact":
            V = jnp.eye(prob.dim, dtype=prob.dtype)
            return _unflatten(prob, [2 * t for t in _top(prob, V, None, 2, where, identity=True)])
        V = _directions(key, k, prob.dim, prob.dtype, distribution)
        return _stochastic(prob, V, 2, 2.0, return_std, where)

    if method == "exact":
        passes = lambda d: f"1 pass carrying the value, {d} first-order directions and 1 collapsed second-order coefficient"  # noqa: E731,E501
    else:
        passes = lambda d: (f"1 pass carrying the value, {k} random first-order directions and "  # noqa: E731
                            f"{k if return_std else 1} second-order coefficient(s)")
    return _Operator(f"laplacian({name})", impl, _passes_fn(passes, argnums),
                     lambda *a: _hessian_trace(func, a, argnums),
                     lambda d: f"the trace of the {d}x{d} Hessian ({d} Hessian-vector products)",
                     f"Laplacian of {name} w.r.t. argnums={argnums} ({method}).")


# ------------------------------------------------------------------ diff_operator

def _check_coefficients(where, dim, coefficients, factor):
    if (coefficients is None) == (factor is None):
        raise ValueError(f"{where}: pass exactly one of coefficients (the matrix C) or factor "
                         "(sigma with C = sigma sigma^T).")
    name, value = ("coefficients", coefficients) if factor is None else ("factor", factor)
    if _args.leaf_dtype(value) is None or not isinstance(value, _args.ARRAY_TYPES + (list, tuple)):
        raise TypeError(f"{where}: {name} must be an array, got {type(value).__name__}.")
    value = jnp.asarray(value)
    if not jnp.issubdtype(value.dtype, jnp.inexact):
        value = value.astype(jnp.result_type(float))
    if factor is None and value.shape != (dim, dim):
        raise ValueError(f"{where}: coefficients must be a ({dim}, {dim}) matrix for the {dim} "
                         f"differentiated inputs, got shape {tuple(value.shape)}.")
    if factor is not None and (value.ndim != 2 or value.shape[0] != dim):
        raise ValueError(f"{where}: factor must be a ({dim}, r) matrix sigma (C = sigma sigma^T) for "
                         f"the {dim} differentiated inputs, got shape {tuple(value.shape)}.")
    return value


def _check_weights_given(where, coefficients, factor, method):
    """``diff_operator`` needs ``C`` (or its factor), and a factor to draw directions."""
    if coefficients is None and factor is None:
        raise ValueError(f"{where}: pass coefficients (the matrix C) or factor "
                         "(sigma with C = sigma sigma^T).")
    if method == "stochastic" and factor is None:
        raise ValueError(f"{where}: method='stochastic' needs factor=sigma "
                         "(C = sigma sigma^T): directions sigma z have E[(sigma z)(sigma z)^T] = C.")


def diff_operator(func: Callable, coefficients: Any = None, *, factor: Any = None,
                  argnums: _args.Argnums = 0, method: str = "exact", num_samples: int | None = None,
                  key: Any = None, distribution: str = "rademacher", return_std: bool = False) -> Callable:
    r"""The weighted second-order operator ``Σ_ij C_ij ∂²f/∂x_i ∂x_j = tr(C H)``.

    Give ``C`` as ``coefficients`` (a ``(d, d)`` matrix; only its symmetric part counts),
    or as a ``factor`` ``σ`` (``(d, r)``, ``C = σ σ^T``, as the diffusion of a Fokker-Planck
    or Kolmogorov equation). With a factor the directions are the ``r`` columns of ``σ``
    and ``tr(C H) = Σ_r σ_r^T H σ_r``; with a matrix the directions are the eigenvectors
    ``q_r`` of ``C`` weighted by its eigenvalues, ``tr(C H) = Σ_r λ_r q_r^T H q_r``
    (``jnp.linalg.eigh``; its gradient with respect to a ``C`` with repeated eigenvalues
    is not defined: differentiate with respect to ``factor`` instead). Either way one
    collapsed Taylor pass, as :func:`laplacian` (which is ``C = I``).

    ``method="stochastic"`` (factor only) estimates ``E[(σz)^T H (σz)]`` with ``z``
    Rademacher or Gaussian in ``R^r``.

    >>> import jax.numpy as jnp
    >>> A = jnp.array([[2.0, 1.0], [1.0, 3.0]])
    >>> C = jnp.array([[1.0, 0.5], [0.5, 2.0]])
    >>> diff_operator(lambda x: x @ A @ x / 2, C)(jnp.ones(2))      # tr(C A) = 2 + 1 + 6
    Array(9., dtype=float32)
    >>> diff_operator(lambda x: x @ A @ x / 2, factor=jnp.eye(2))(jnp.ones(2))  # tr A
    Array(5., dtype=float32)
    """
    _args.check_callable(func, "diff_operator")
    _args.check_argnums(argnums, "diff_operator")
    name = _args.func_name(func)
    where = f"diff_operator({name})(*args)"
    k = _check_stochastic(f"diff_operator({name})", method, num_samples, key, distribution, return_std)
    _check_weights_given(f"diff_operator({name})", coefficients, factor, method)

    def impl(*args):
        prob = _problem(func, args, argnums, where)
        value = _check_coefficients(where, prob.dim, coefficients, factor).astype(prob.dtype)
        if factor is not None:
            if method == "stochastic":
                z = _directions(key, k, value.shape[1], prob.dtype, distribution)
                return _stochastic(prob, z @ value.T, 2, 2.0, return_std, where)
            return _unflatten(prob, [2 * t for t in _top(prob, value.T, None, 2, where)])
        lam, Q = jnp.linalg.eigh((value + value.T) / 2)
        return _unflatten(prob, [2 * t for t in _top(prob, Q.T, lam, 2, where)])

    def reference(*args):
        C = jnp.asarray(coefficients) if factor is None else jnp.asarray(factor) @ jnp.asarray(factor).T
        return _hessian_trace(func, args, argnums, weight=C)

    r = "r" if factor is None else np.shape(factor)[-1] if np.ndim(factor) == 2 else "r"
    passes = lambda d: (f"1 pass carrying the value, {k if method == 'stochastic' else (d if factor is None else r)} "  # noqa: E731
                        "first-order directions and 1 collapsed second-order coefficient")
    return _Operator(f"diff_operator({name})", impl, _passes_fn(passes, argnums), reference,
                     lambda d: f"tr(C H) from the {d}x{d} Hessian ({d} Hessian-vector products)",
                     f"Second-order operator tr(C H) of {name} w.r.t. argnums={argnums} ({method}).")


# ----------------------------------------------------------------------- biharmonic

def biharmonic_directions(dim: int, dtype: Any = jnp.float32):
    """Directions and weights with ``Δ²f = 24 Σ_r w_r c_4(v_r)``: ``e_i`` with weight
    ``(4 - d)/3`` and ``e_i ± e_j`` (``i < j``) with weight ``1/6``; ``d²`` in all.

    >>> V, w = biharmonic_directions(2)
    >>> V.tolist(), w.tolist()
    ([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]], [0.6666666865348816, 0.6666666865348816, 0.1666666716337204, 0.1666666716337204])
    """
    E = np.eye(dim)
    rows = [E[i] for i in range(dim)]
    weights = [(4.0 - dim) / 3.0] * dim
    for i, j in itertools.combinations(range(dim), 2):
        rows += [E[i] + E[j], E[i] - E[j]]
        weights += [1.0 / 6.0, 1.0 / 6.0]
    return jnp.asarray(np.array(rows).reshape(-1, dim), dtype), jnp.asarray(weights, dtype)


BIHARMONIC_METHODS = ("exact", "taylor4", "stochastic")


def biharmonic(func: Callable, argnums: _args.Argnums = 0, *, method: str = "exact",
               num_samples: int | None = None, key: Any = None, return_std: bool = False) -> Callable:
    r"""Biharmonic ``Δ²f = Σ_ij ∂_i² ∂_j² f`` by collapsed Taylor mode.

    ``method="exact"`` (default): ``laplacian(laplacian(func))``, the collapsed
    second-order pass (``d`` directions) run over the program of the inner collapsed
    pass: about ``(d + 2)²`` vectors per layer.

    ``method="taylor4"``: ONE fourth-order collapsed pass carrying the value, the first
    three Taylor coefficients of each of the ``d²`` directions of
    :func:`biharmonic_directions` and one collapsed fourth-order coefficient
    ``Σ_r w_r c_4(v_r)``; ``Δ²f = 24 Σ_r w_r c_4(v_r)``. About ``3d² + 1`` vectors per
    layer: measured slower than ``"exact"`` (docs/benchmarks.md) but it compiles
    faster, and it is the building block of the stochastic estimator.

    ``method="stochastic"``: ``E[D⁴f[z]⁴] = 3 Δ²f`` for standard Gaussian ``z``, so
    ``(8/k) Σ_s c_4(z_s)`` over ``k = num_samples`` directions by the fourth-order
    pass; ``return_std=True`` also returns its standard error.

    >>> import jax.numpy as jnp
    >>> x = jnp.array([1.0, 2.0, 3.0])
    >>> biharmonic(lambda x: jnp.sum(x ** 4))(x)       # Σ 24
    Array(72., dtype=float32)
    >>> biharmonic(lambda x: jnp.sum(x ** 4), method="taylor4")(x)
    Array(72., dtype=float32)
    """
    _args.check_callable(func, "biharmonic")
    _args.check_argnums(argnums, "biharmonic")
    name = _args.func_name(func)
    where = f"biharmonic({name})(*args)"
    _args.check_choice(method, BIHARMONIC_METHODS, f"biharmonic({name})", "method")
    k = _check_stochastic(f"biharmonic({name})", "stochastic" if method == "stochastic" else "exact",
                          num_samples, key, "gaussian", return_std)
    inner = laplacian(func, argnums) if method == "exact" else None
    outer = laplacian(inner, argnums) if method == "exact" else None

    def impl(*args):
        if method == "exact":
            return outer(*args)
        prob = _problem(func, args, argnums, where)
        if method == "taylor4":
            V, w = biharmonic_directions(prob.dim, prob.dtype)
            return _unflatten(prob, [24 * t for t in _top(prob, V, w, 4, where)])
        Z = jax.random.normal(key, (k, prob.dim), dtype=prob.dtype)
        return _stochastic(prob, Z, 4, 8.0, return_std, where)

    def reference(*args):
        return _hessian_trace(lambda *a: _hessian_trace(func, a, argnums), args, argnums)

    texts = {
        "taylor4": lambda d: f"1 pass carrying the value, 3 coefficients of each of {d * d} directions and 1 collapsed fourth-order coefficient",  # noqa: E501
        "exact": lambda d: f"a collapsed Laplacian ({d} directions) of a collapsed Laplacian ({d} directions)",
        "stochastic": lambda d: f"1 pass carrying the value, 3 coefficients of each of {k} Gaussian directions and {k if return_std else 1} fourth-order coefficient(s)",  # noqa: E501
    }
    return _Operator(f"biharmonic({name})", impl, _passes_fn(texts[method], argnums), reference,
                     lambda d: f"the trace of traces of nested {d}x{d} Hessians",
                     f"Biharmonic of {name} w.r.t. argnums={argnums} ({method}).")


# ----------------------------------------------------------------------- divergence

def _field_check(args: tuple, argnums, where: str) -> Callable:
    """A check that the field's output has the structure and shapes of the differentiated
    arguments (``F: R^d -> R^d``)."""
    positions = _args.normalize_argnums(argnums, len(args), where)
    like = tuple(args[p] for p in positions)
    like = like if isinstance(argnums, (tuple, list)) else like[0]
    ref = jax.tree_util.tree_structure(like)
    shapes_ref = [np.shape(x) for x in jax.tree_util.tree_leaves(like)]

    def check_out(out):
        got = jax.tree_util.tree_structure(out)
        shapes_out = [np.shape(x) for x in jax.tree_util.tree_leaves(out)]
        if ref != got or shapes_ref != shapes_out:
            raise ValueError(f"{where}: expected field to return a vector field shaped like the "
                             f"differentiated argument(s) ({ref} with shapes {shapes_ref}), got "
                             f"{got} with shapes {shapes_out}; the divergence needs F: R^d -> R^d.")
    return check_out


def _tangents(prob: _Problem, V, identity: bool, where: str):
    """``J v`` for each direction ``v`` (the rows of ``V``): one forward pass, ``(R, D)``."""
    outs = propagate(prob.closed, prob.leaves, order=1, with_top=False, where=where,
                     **_seeds(prob, V, identity))
    R = V.shape[0]
    return jnp.concatenate([jnp.zeros((R, math.prod(a.shape)), a.dtype) if o.lo[0] is None
                            else o.lo[0].reshape(R, -1) for o, a in zip(outs, prob.out_avals)], axis=1)


def divergence(field: Callable, argnums: _args.Argnums = 0, *, method: str = "exact",
               num_samples: int | None = None, key: Any = None, distribution: str = "rademacher",
               return_std: bool = False) -> Callable:
    r"""Divergence ``∇·F = Σ_i ∂F_i/∂x_i = tr J`` of a vector field, by forward mode.

    ``field`` must return an output with the structure and shapes of the differentiated
    arguments (``F: R^d -> R^d``). Exact: one forward pass carrying the ``d`` tangents
    ``J e_i`` (a batch), of which the diagonal is summed. ``method="stochastic"``:
    Hutchinson's ``(1/k) Σ_s z_s^T J z_s``.

    >>> import jax.numpy as jnp
    >>> divergence(lambda x: x * jnp.arange(3.0))(jnp.ones(3))        # 0 + 1 + 2
    Array(3., dtype=float32)
    """
    _args.check_callable(field, "divergence", "field")
    _args.check_argnums(argnums, "divergence")
    name = _args.func_name(field)
    where = f"divergence({name})(*args)"
    k = _check_stochastic(f"divergence({name})", method, num_samples, key, distribution, return_std)

    def impl(*args):
        prob = _problem(field, args, argnums, where, _field_check(args, argnums, where))
        if method == "exact":
            V = jnp.eye(prob.dim, dtype=prob.dtype)
        else:
            V = _directions(key, k, prob.dim, prob.dtype, distribution)
        JV = _tangents(prob, V, method == "exact", where)
        if method == "exact":
            return jnp.trace(JV)
        samples = jnp.sum(V.astype(JV.dtype) * JV, axis=1)
        if not return_std:
            return jnp.mean(samples)
        return jnp.mean(samples), jnp.std(samples, ddof=1) / math.sqrt(k)

    def reference(*args):
        g, v = _raveled(field, args, argnums)
        from ._jacobians import jacfwd
        return jnp.trace(jacfwd(lambda v: ravel_pytree(g(v))[0])(v))

    passes = lambda d: f"1 forward pass carrying {d if method == 'exact' else k} tangents"  # noqa: E731
    return _Operator(f"divergence({name})", impl, _passes_fn(passes, argnums), reference,
                     lambda d: f"the trace of the {d}x{d} Jacobian (jacfwd)",
                     f"Divergence of {name} w.r.t. argnums={argnums} ({method}).")
