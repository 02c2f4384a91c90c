"""Jacobians, Hessians and batches split over a device mesh (``mesh=`` on the transforms).

The passes of a Jacobian are independent: row ``i`` of ``J`` is the VJP ``e_i^T J``,
column ``j`` the JVP ``J e_j``. With ``mesh=`` (a ``jax.sharding.Mesh``) and
``mesh_axis=`` (one of its axis names, default the first) the ``B`` basis indices are
split over the ``d`` devices of that axis with ``jax.shard_map``:

- device ``k`` runs indices ``[k p, (k + 1) p)`` with ``p = ceil(B / d)`` passes per
  device; it recomputes the one forward pass (or linearization) itself, so nothing but
  the inputs travels to it;
- ``chunk_size=c`` still bounds each device's memory: a ``lax.map`` walks the device's
  ``p`` indices ``c`` at a time, so a device holds ``min(c, p)`` passes at once;
- when ``d`` does not divide ``B`` the last device is padded with *zero* basis vectors
  (indices ``>= B``; their rows are exactly zero and are dropped), so a basis smaller
  than the device count works too (some devices then compute only zeros);
- the result comes back sharded along its basis axis (the leading output axes of
  ``jacrev``, the trailing input axes of ``jacfwd``; ``NamedSharding(mesh,
  P(mesh_axis))`` on that dimension) when the device count divides that dimension,
  otherwise (and with ``gather=True``) replicated: every device holds all of it. A
  replicated result is first checked against one device's memory
  (:func:`device_memory_bytes`) and refused, with the sizes, when it cannot fit.

Other axes of the mesh are not used by the split: every device along them repeats the
same share (replicated), as ``P(mesh_axis)`` says.

The computation itself is the same per index as on one device, so results equal one
device's bitwise where XLA keeps the per-pass arithmetic (float64 in the tests) and to
float round-off otherwise; sums over the basis (Hutchinson, :func:`sharded_basis_map`
with ``reduce="sum"``) add per-device partial sums, a different order.

:func:`sharded_basis_map` is the building block for any other "one pass per basis
index" operator (a Laplacian's directions, a sparse Jacobian's colors);
:func:`split_plan` gives the per-device pass count the planner and ``explain()`` show.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from . import _args

__all__ = ["check", "split_plan", "MeshSplit", "sharded_basis_map", "device_memory_bytes",
           "jacobian", "hessian", "hessian_diag", "vmap", "sharded_pairs", "laplacian"]


# --------------------------------------------------------------------------------------
# checks


def check(mesh: Any, mesh_axis: Any, gather: Any, transform: str) -> str | None:
    """Validate ``mesh=``, ``mesh_axis=`` and ``gather=`` when a transform is built;
    returns the axis name (the mesh's first axis by default), or None without a mesh.

    >>> check(None, None, False, "jacrev") is None
    True
    """
    _args.check_bool(gather, transform, "gather")
    if mesh is None:
        if mesh_axis is not None or gather:
            raise ValueError(
                f"{transform}: mesh_axis= and gather=True only apply with mesh=; pass "
                f"mesh=jax.make_mesh((n,), ('data',)) too, or drop them.")
        return None
    if not isinstance(mesh, Mesh):
        hint = (" (an AbstractMesh has no devices to run on; pass the concrete Mesh)"
                if isinstance(mesh, jax.sharding.AbstractMesh) else "")
        raise TypeError(
            f"{transform}: mesh must be a jax.sharding.Mesh, e.g. "
            f"jax.make_mesh((jax.device_count(),), ('data',)), got {type(mesh).__name__}{hint}.")
    names = tuple(mesh.axis_names)
    if mesh_axis is None:
        return names[0]
    if not isinstance(mesh_axis, str) or mesh_axis not in names:
        raise ValueError(
            f"{transform}: mesh_axis={mesh_axis!r} is not an axis of the mesh, whose axes are "
            f"{names}; pass mesh_axis= one of them (default: the first, {names[0]!r}).")
    return mesh_axis


def _check_context(mesh: Mesh, axis: str, where: str) -> None:
    """Refuse a mesh that cannot be used where the transform is traced: inside a
    ``shard_map`` (or ``pmap``) that already split ``axis``, or inside ``jax.jit``
    under ``jax.set_mesh`` of a different mesh."""
    context = jax.sharding.get_abstract_mesh()
    if context.empty:
        return
    if axis in context.manual_axes:
        raise ValueError(
            f"{where}: mesh axis {axis!r} is already split by an enclosing jax.shard_map "
            f"(inside it each device sees only its own share), so mesh= cannot split the "
            f"basis over it again; call the transform outside the shard_map, or drop mesh= "
            f"inside it.")
    if (tuple(context.axis_names), tuple(context.axis_sizes)) != (
            tuple(mesh.axis_names), tuple(mesh.axis_sizes)):
        raise ValueError(
            f"{where}: mesh= {dict(mesh.shape)} differs from the mesh this code is traced "
            f"under ({dict(zip(context.axis_names, context.axis_sizes))}, set by jax.set_mesh "
            f"or a sharded jax.jit); inside it only that mesh can be used: pass it as mesh=, "
            f"or call the transform outside.")


def _check_concrete_size(size: Any, where: str, what: str) -> int:
    if isinstance(size, jax.core.Tracer):
        raise ValueError(f"{where}: {what} is traced; mesh= needs static shapes.")
    return int(size)


# --------------------------------------------------------------------------------------
# the split and what it costs


@dataclasses.dataclass(frozen=True)
class MeshSplit:
    """How ``basis`` passes are split over ``devices`` devices of a mesh axis.

    Attributes:
      basis: the number of passes (basis vectors) of the whole computation.
      devices: devices along the split axis.
      axis: the mesh axis name.
      per_device: passes each device runs, ``ceil(basis / devices)`` (padding included).
      padding: zero basis vectors added so that every device runs ``per_device``.
      chunk_size: passes a device holds at once (``None``: all ``per_device``).
      steps: sequential steps per device, ``ceil(per_device / chunk_size)``.
    """

    basis: int
    devices: int
    axis: str
    per_device: int
    padding: int
    chunk_size: int | None
    steps: int

    def describe(self) -> str:
        """One line for ``explain()``."""
        text = (f"basis of {self.basis} split over mesh axis {self.axis!r} ({self.devices} "
                f"device{'s' if self.devices != 1 else ''}): {self.per_device} passes per device")
        if self.padding:
            text += f" ({self.padding} zero padding)"
        if self.chunk_size is not None and self.steps > 1:
            text += f", {self.chunk_size} at a time ({self.steps} steps)"
        return text


def split_plan(basis: int, mesh: Mesh, axis: str | None = None,
               chunk_size: int | None = None) -> MeshSplit:
    """The per-device share of ``basis`` passes over ``mesh``'s ``axis`` (default its
    first). The planner's cost of a split computation is ``per_device`` passes (and
    ``steps`` sequential chunks) instead of ``basis``.

    >>> import jax
    >>> mesh = jax.make_mesh((1,), ("data",))
    >>> split_plan(10, mesh, chunk_size=4).describe()
    "basis of 10 split over mesh axis 'data' (1 device): 10 passes per device, 4 at a time (3 steps)"
    """
    axis = check(mesh, axis, False, "split_plan")
    devices = int(mesh.shape[axis])
    per = max(1, -(-int(basis) // devices))
    chunk = None if chunk_size is None or chunk_size >= per else int(chunk_size)
    steps = 1 if chunk is None else -(-per // chunk)
    return MeshSplit(int(basis), devices, axis, per, per * devices - int(basis), chunk, steps)


def device_memory_bytes(device: Any) -> tuple[int, str]:
    """How many bytes one device can still hold, and where that figure comes from.

    ``device.memory_stats()`` (GPU/TPU: ``bytes_limit - bytes_in_use``) where the
    backend reports it; on CPU (which reports nothing) the host's physical memory
    divided by the number of this process's devices, which share it.
    """
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - a backend without memory statistics
        stats = None
    if stats and "bytes_limit" in stats:
        free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return free, f"memory_stats() of {device}: bytes_limit - bytes_in_use"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 16 * 2 ** 30
    local = max(1, sum(1 for d in jax.local_devices() if d.platform == device.platform))
    return total // local, (f"{device.platform} reports no memory_stats(): host memory "
                            f"{_fmt(total)} shared by {local} device(s)")


def _fmt(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"


def _check_fits(leaves: list, replicated: list[bool], mesh: Mesh, gather: bool, where: str) -> None:
    need = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize
               for x, r in zip(leaves, replicated) if r)
    if not need:
        return
    device = mesh.devices.flat[0]
    free, source = device_memory_bytes(device)
    if need <= free:
        return
    why = ("gather=True puts the whole result on every device" if gather else
           "the basis dimension does not divide evenly over the devices, so the result is "
           "replicated on every device")
    raise ValueError(
        f"{where}: the result needs {_fmt(need)} ({need} bytes) on one device, but a device "
        f"has {_fmt(free)} ({source}); {why}. Keep the result sharded (gather=False, with a "
        f"device count that divides the basis dimension) or reduce the problem.")


# --------------------------------------------------------------------------------------
# the building block


def _auto(mesh: Mesh) -> Mesh:
    """The same devices and names with every axis Auto (GSPMD places the glue code)."""
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def _jit_call(program: Callable, mesh: Mesh, *args: Any) -> Any:
    """``jax.jit(program)(*args)``; under ``jax.set_mesh(mesh)`` (explicit axes) the
    program's own glue runs with the axes Auto, as everywhere else."""
    if jax.sharding.get_abstract_mesh().empty:
        return jax.jit(program)(*args)
    with jax.sharding.use_abstract_mesh(_auto(mesh).abstract_mesh):
        return jax.jit(program)(*args)


def sharded_basis_map(make_row: Callable, basis_size: int, *, mesh: Mesh, axis: str | None = None,
                      chunk_size: int | None = None, operands: tuple = (),
                      reduce: str | None = None, where: str = "sharded_basis_map") -> Any:
    """``stack([row(i) for i in range(basis_size)])`` with the indices split over ``mesh``.

    ``make_row(*operands)`` runs once per device (set up there: a forward pass, a
    linearization) and returns ``row(i)``, a function of one int32 index giving a
    pytree of arrays. Each device maps ``row`` over its ``ceil(basis_size / d)``
    indices, ``chunk_size`` at a time (``lax.map``; all at once with ``vmap`` when
    None). Indices ``>= basis_size`` are padding: ``row`` must give zeros there (a
    one-hot of an out-of-range index is all zeros); they are dropped (or, with
    ``reduce="sum"``, add nothing).

    Returns each leaf stacked, ``(basis_size, ...)``, sharded along axis 0 over
    ``axis`` when ``d`` divides ``basis_size``; with ``reduce="sum"`` the sum over all
    indices, replicated (per-device partial sums, then one ``psum``). ``operands`` (a
    tuple of arrays, replicated to every device) are what ``make_row`` needs; close
    over nothing traced. Usable eagerly or inside ``jax.jit``.

    >>> import jax, jax.numpy as jnp
    >>> mesh = jax.make_mesh((1,), ("data",))
    >>> sharded_basis_map(lambda w: (lambda i: w * i), 3, mesh=mesh, operands=(jnp.ones(2),))
    Array([[0., 0.],
           [1., 1.],
           [2., 2.]], dtype=float32)
    """
    axis = check(mesh, axis, False, where)
    _check_context(mesh, axis, where)
    if reduce not in (None, "sum"):
        raise ValueError(f"{where}: reduce must be None or 'sum', got {reduce!r}.")
    basis_size = _check_concrete_size(basis_size, where, "the basis size")
    split = split_plan(basis_size, mesh, axis, chunk_size)
    per = split.per_device

    def body(*ops):
        row = make_row(*ops)
        idx = jax.lax.axis_index(axis) * per + jnp.arange(per, dtype=jnp.int32)
        if split.chunk_size is None:
            out = jax.vmap(row)(idx)
        else:
            out = jax.lax.map(row, idx, batch_size=split.chunk_size)
        if reduce == "sum":
            return jax.tree_util.tree_map(lambda x: jax.lax.psum(x.sum(0), axis), out)
        return out

    spec = P() if reduce == "sum" else P(axis)
    auto = _auto(mesh)
    ops = tuple(jnp.asarray(o) if not isinstance(o, jax.Array) else o for o in operands)

    def run(*ops):
        out = jax.shard_map(body, mesh=auto, in_specs=(P(),) * len(ops), out_specs=spec,
                            check_vma=False)(*ops)
        if reduce == "sum" or split.padding == 0:
            return out
        return jax.tree_util.tree_map(lambda x: x[:basis_size], out)

    return _jit_call(run, mesh, *ops)


# --------------------------------------------------------------------------------------
# plumbing shared by the transforms


def _split_dynamic(tree: Any):
    """Array leaves of ``tree`` and a function rebuilding ``tree`` from them (other
    leaves, e.g. Python scalars and strings, are closed over): ``jacobians.split_dynamic``."""
    from ._jacobians import split_dynamic  # lazily: jacobians imports this module

    dynamic, rebuild = split_dynamic(tree, {})
    return dynamic, lambda leaves: rebuild(leaves)[0]


def _one_hot(index: jax.Array, like: list) -> list:
    """The ``index``-th standard basis vector of the flattened leaves ``like`` (all zeros
    for an index past the end: the padding), as ``jacobians`` builds it."""
    from ._jacobians import _basis  # lazily: jacobians imports this module

    return _basis(index, like)


def _place(leaves: list, basis_dims: list[int | None], mesh: Mesh, axis: str, gather: bool,
           where: str) -> list:
    """Constrain each leaf: sharded over ``axis`` on its basis dimension, or replicated
    (with ``gather``, or when the device count does not divide that dimension)."""
    d = int(mesh.shape[axis])
    specs, replicated = [], []
    for x, b in zip(leaves, basis_dims):
        if not gather and b is not None and x.ndim > b and x.shape[b] % d == 0:
            specs.append(P(*([None] * b), axis))
            replicated.append(False)
        else:
            specs.append(P())
            replicated.append(True)
    _check_fits(leaves, replicated, mesh, gather, where)
    auto = _auto(mesh)
    return [jax.lax.with_sharding_constraint(x, NamedSharding(auto, s)) for x, s in zip(leaves, specs)]


def _prologue(transform: str, func: Callable, mesh: Mesh, mesh_axis: Any, gather: bool,
              label: str = "") -> tuple[str, str]:
    """The axis name and the ``where`` of the messages, after the mesh checks."""
    where = f"{transform}({_args.func_name(func)}{label}, mesh=...)(*args)"
    axis = check(mesh, mesh_axis, gather, transform)
    _check_context(mesh, axis, where)
    return axis, where


# --------------------------------------------------------------------------------------
# jacrev / jacfwd / jacobian / hessian


def _closed_problem(func: Callable, rebuild: Callable, positions: tuple, as_tuple: bool,
                    has_aux: bool, where: str) -> Callable:
    """``closed(ops) -> (g, primal)``: ``func`` as a function ``g`` of the differentiated
    arguments (aux checked, always returned) at the arguments rebuilt from ``ops``."""
    def closed(ops):
        a, kw = rebuild(list(ops))
        diff = tuple(a[p] for p in positions)

        def call(primal):
            primal = primal if as_tuple else (primal,)
            return func(*_args.replace_args(a, positions, primal), **kw)

        return _args.checked_output(call, has_aux, where), (diff if as_tuple else diff[0])

    return closed


def _row_maker(closed: Callable, mode: str, out_leaves: list, out_tree: Any, in_leaves: list,
               in_tree: Any) -> Callable:
    """``make_row(*ops)`` for :func:`sharded_basis_map`: one VJP (``rev``) per output
    index or one JVP (``fwd``) per input index, after one linearization per device."""
    def make_row(*ops):
        g, primal = closed(ops)
        if mode == "rev":
            _, pullback, _ = jax.vjp(g, primal, has_aux=True)

            def row(i):
                (ct,) = pullback(jax.tree_util.tree_unflatten(out_tree, _one_hot(i, out_leaves)))
                return jax.tree_util.tree_leaves(ct)
        else:
            _, lin, _ = jax.linearize(g, primal, has_aux=True)

            def row(i):
                return jax.tree_util.tree_leaves(
                    lin(jax.tree_util.tree_unflatten(in_tree, _one_hot(i, in_leaves))))
        return row

    return make_row


def _jacobian_blocks(rows: list, mode: str, layout: str, out_leaves: list,
                     in_leaves: list) -> tuple[list, list]:
    """The ``(out_j, in_k)`` blocks of the Jacobian cut from the stacked ``rows`` (rev:
    ``rows[k]`` is ``(M,) + in_k.shape``; fwd: ``rows[j]`` is ``(N,) + out_j.shape``),
    in ``layout``, and the dimension of each that is the split basis (None: none)."""
    stacked_over = out_leaves if mode == "rev" else in_leaves
    offsets = np.cumsum([0] + [math.prod(np.shape(x)) for x in stacked_over])
    blocks, dims = [], []
    for j, o in enumerate(out_leaves):
        for k, x in enumerate(in_leaves):
            n_out, n_in = np.ndim(o), np.ndim(x)
            if mode == "rev":
                piece = rows[k][offsets[j]:offsets[j + 1]]
                leaf = piece.reshape(tuple(np.shape(o)) + tuple(np.shape(x)))
            else:
                piece = rows[j][offsets[k]:offsets[k + 1]].reshape(tuple(np.shape(x)) + tuple(np.shape(o)))
                leaf = jnp.moveaxis(piece, tuple(range(n_in)), tuple(range(n_out, n_out + n_in)))
            if layout == "denominator":
                leaf = jnp.transpose(leaf, tuple(range(n_out, n_out + n_in)) + tuple(range(n_out)))
                basis_dim = (n_in if n_out else None) if mode == "rev" else (0 if n_in else None)
            else:
                basis_dim = (0 if n_out else None) if mode == "rev" else (n_out if n_in else None)
            blocks.append(leaf)
            dims.append(basis_dim)
    return blocks, dims


def jacobian(func: Callable, args: tuple, kwargs: dict, *, argnums: Any, mode: str, has_aux: bool,
             chunk_size: int | None, layout: str, mesh: Mesh, mesh_axis: str | None, gather: bool,
             transform: str) -> Any:
    """``jacrev`` (``mode="rev"``) or ``jacfwd`` (``mode="fwd"``) of ``func`` at
    ``args`` with the basis split over ``mesh`` (see the module docstring)."""
    axis, where = _prologue(transform, func, mesh, mesh_axis, gather)
    positions = _args.differentiable_positions(args, argnums, where)
    dynamic, rebuild = _split_dynamic((args, kwargs))
    closed = _closed_problem(func, rebuild, positions, isinstance(argnums, (tuple, list)),
                             has_aux, where)

    def program(*ops):
        g, primal = closed(ops)
        out_shape, _ = jax.eval_shape(g, primal)
        out_leaves, out_tree = jax.tree_util.tree_flatten(out_shape)
        in_leaves, in_tree = jax.tree_util.tree_flatten(primal)
        basis = sum(math.prod(np.shape(x)) for x in (out_leaves if mode == "rev" else in_leaves))
        make_row = _row_maker(closed, mode, out_leaves, out_tree, in_leaves, in_tree)
        rows = sharded_basis_map(make_row, basis, mesh=mesh, axis=axis, chunk_size=chunk_size,
                                 operands=tuple(ops), where=where)
        blocks, dims = _jacobian_blocks(rows, mode, layout, out_leaves, in_leaves)
        it = iter(_place(blocks, dims, mesh, axis, gather, where))
        jac = jax.tree_util.tree_unflatten(
            out_tree, [jax.tree_util.tree_unflatten(in_tree, [next(it) for _ in in_leaves])
                       for _ in out_leaves])
        return (jac, g(primal)[1]) if has_aux else jac

    return _jit_call(program, mesh, *dynamic)


def hessian(func: Callable, args: tuple, kwargs: dict, *, argnums: Any, mode: str,
            chunk_size: int | None, mesh: Mesh, mesh_axis: str | None, gather: bool) -> Any:
    """``hessian(func, mode=mode)`` at ``args``, the outer Jacobian's basis split over
    ``mesh``; the inner (gradient) runs whole on each device."""
    from . import _higher as higher, _jacobians as jacobians  # lazily: higher imports this module

    chosen = higher.resolve_hessian_mode(func, mode, args, kwargs, argnums)
    outer, _, inner_name = chosen.split("-")
    inner = jacobians.BY_MODE[inner_name](func, argnums)
    return jacobian(inner, args, kwargs, argnums=argnums, mode=outer, has_aux=False,
                    chunk_size=chunk_size, layout="numerator", mesh=mesh, mesh_axis=mesh_axis,
                    gather=gather, transform="hessian")


def hessian_diag(func: Callable, args: tuple, kwargs: dict, *, argnums: Any, method: str, key: Any,
                 num_samples: int, chunk_size: int | None, mesh: Mesh, mesh_axis: str | None,
                 gather: bool) -> Any:
    """``hessian_diag`` at ``args`` with its HVPs (``n`` basis vectors, or the
    ``num_samples`` Hutchinson probes) split over ``mesh``."""
    from jax.flatten_util import ravel_pytree

    axis, where = _prologue("hessian_diag", func, mesh, mesh_axis, gather)
    positions = _args.differentiable_positions(args, argnums, where)
    dynamic, rebuild = _split_dynamic((args, kwargs, key))

    def flat_problem(ops):
        a, kw, k = rebuild(list(ops))
        flat, unravel = ravel_pytree(tuple(a[p] for p in positions))

        def g(v):
            out = func(*_args.replace_args(a, positions, unravel(v)), **kw)
            _args.check_scalar(out, where, "jacrev")
            return out

        return g, flat, unravel, k

    def make_row(*ops):
        g, flat, _, k = flat_problem(ops)
        n = flat.shape[0]
        _, hv = jax.linearize(jax.grad(g), flat)
        if method == "exact":
            return lambda i: hv((jnp.arange(n) == i).astype(flat.dtype))[jnp.minimum(i, n - 1)]

        def probe(i):
            z = jax.random.rademacher(jax.random.fold_in(k, i), (n,), dtype=flat.dtype)
            return jnp.where(i < num_samples, z * hv(z), jnp.zeros_like(z))
        return probe

    def program(*ops):
        _, flat, unravel, _ = flat_problem(ops)
        exact = method == "exact"
        diag = sharded_basis_map(make_row, flat.shape[0] if exact else num_samples, mesh=mesh,
                                 axis=axis, chunk_size=chunk_size, operands=tuple(ops),
                                 reduce=None if exact else "sum", where=where)
        out = list(unravel(diag if exact else diag / num_samples))
        placed = tuple(_place(out, [0 if np.ndim(x) else None for x in out], mesh, axis,
                              gather or not exact, where))
        return placed if isinstance(argnums, (tuple, list)) else placed[0]

    return _jit_call(program, mesh, *dynamic)


# --------------------------------------------------------------------------------------
# vmap


def _batch_layout(func: Callable, args: tuple, kwargs: dict, in_dims: Any, out_dims: Any):
    """The flattened arguments with their mapped dims, the batch size, and the output's
    leaves, tree and mapped dims. The plain vmap validates ``in_dims``/``out_dims``
    against the arguments (its messages) and gives the output structure."""
    from . import _transforms as transforms  # lazily: transforms imports this module

    out_shape = jax.eval_shape(lambda *a: transforms.vmap(func, in_dims, out_dims)(*a, **kwargs), *args)
    prefix = tuple(in_dims) if isinstance(in_dims, (tuple, list)) else (in_dims,) * len(args)
    is_none = lambda x: x is None  # noqa: E731
    dims = jax.tree_util.tree_leaves(jax.tree.broadcast(prefix, tuple(args), is_leaf=is_none), is_leaf=is_none)
    flat, tree = jax.tree_util.tree_flatten(tuple(args))
    batch = next(np.shape(x)[d] for x, d in zip(flat, dims) if d is not None)
    out_leaves, out_tree = jax.tree_util.tree_flatten(out_shape)
    odims = jax.tree_util.tree_leaves(jax.tree.broadcast(out_dims, out_shape, is_leaf=is_none), is_leaf=is_none)
    return flat, tree, dims, batch, out_tree, odims


def vmap(func: Callable, args: tuple, kwargs: dict, *, in_dims: Any, out_dims: Any,
         chunk_size: int | None, mesh: Mesh, mesh_axis: str | None, gather: bool) -> Any:
    """``vmap(func, in_dims, out_dims, chunk_size=...)(*args, **kwargs)`` with the batch
    split over ``mesh``: each device maps its ``ceil(B / d)`` elements (the last padded
    by repeating the final element, whose results are dropped), ``chunk_size`` at a
    time; outputs sharded along their batch axis (or replicated, as for Jacobians)."""
    from . import _transforms as transforms  # lazily: transforms imports this module

    axis, where = _prologue("vmap", func, mesh, mesh_axis, gather, f", in_dims={in_dims!r}")
    flat, tree, dims, batch, out_tree, odims = _batch_layout(func, args, kwargs, in_dims, out_dims)
    split = split_plan(batch, mesh, axis, chunk_size)
    padded = split.per_device * split.devices
    batched = [i for i, d in enumerate(dims) if d is not None]
    kw_dynamic, kw_rebuild = _split_dynamic(kwargs)
    fixed, fixed_rebuild = _split_dynamic([x for x, d in zip(flat, dims) if d is None])
    local_dims = tuple(0 if d is not None else None for d in dims)
    local_odims = jax.tree_util.tree_unflatten(out_tree, [0 if d is not None else None for d in odims])
    out_specs = jax.tree_util.tree_unflatten(out_tree, [P(axis) if d is not None else P() for d in odims])

    def body(mapped, fixed_dyn, kw_dyn):
        it_m, it_f = iter(mapped), iter(fixed_rebuild(list(fixed_dyn)))
        full = [next(it_m) if d is not None else next(it_f) for d in dims]
        kw = kw_rebuild(list(kw_dyn))
        fn = lambda *leaves: func(*jax.tree_util.tree_unflatten(tree, list(leaves)), **kw)  # noqa: E731
        return transforms.vmap(fn, in_dims=local_dims, out_dims=local_odims,
                               chunk_size=split.chunk_size)(*full)

    def program(mapped, fixed_dyn, kw_dyn):
        mapped = [jnp.moveaxis(jnp.asarray(x), dims[i], 0) for x, i in zip(mapped, batched)]
        mapped = _pad_rows(mapped, padded)
        out = jax.shard_map(body, mesh=_auto(mesh), in_specs=(P(axis), P(), P()), out_specs=out_specs,
                            check_vma=False)(mapped, fixed_dyn, kw_dyn)
        moved = [x if d is None else jnp.moveaxis(x[:batch], 0, d)
                 for x, d in zip(jax.tree_util.tree_leaves(out), odims)]
        basis_dims = [None if d is None else (d % x.ndim) for x, d in zip(moved, odims)]
        return jax.tree_util.tree_unflatten(out_tree, _place(moved, basis_dims, mesh, axis, gather, where))

    return _jit_call(program, mesh, [flat[i] for i in batched], fixed, kw_dynamic)


# --------------------------------------------------------------------------------------
# pairs of blocks (kernels such as the NTK)


def _pad_rows(tree: Any, padded: int) -> Any:
    """Each leaf padded along axis 0 to ``padded`` rows by repeating its last row."""
    def pad(x):
        x = jnp.asarray(x)
        extra = padded - x.shape[0]
        return x if not extra else jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)])
    return jax.tree_util.tree_map(pad, tree)


def sharded_pairs(embed: Callable, combine: Callable, x1: Any, x2: Any, *, mesh: Mesh,
                  axis: str | None = None, operands: tuple = (), where: str = "sharded_pairs") -> Any:
    """``K = combine(embed(*operands, x1), embed(*operands, x2))`` computed blockwise over
    ``mesh``, with no device holding all of either embedding (an NTK:
    ``embed`` the per-sample Jacobians, ``combine`` their contraction over the parameters,
    ``(n, m, ...)`` for ``n`` and ``m`` rows).

    Both row sets are split over the ``d`` devices (``ceil(N / d)`` and ``ceil(M / d)``
    rows each, padded by repeating the last row, results dropped). Device ``k`` embeds
    its rows of ``x1`` and of ``x2`` once, then for ``d`` steps (``lax.fori_loop``)
    combines its ``x1`` embedding with the ``x2`` block it holds and passes that block to
    its neighbour (``lax.ppermute``, a ring), so it sees every block once. Each device
    computes ``(N + M) / d`` embeddings and holds its ``x1`` share, two ``x2`` blocks (the
    one it combines and the one arriving) and its rows of ``K``: ``(N + 2M) / d`` rows'
    embeddings, so memory per device falls as 1/d. ``x1``, ``x2``: arrays or
    pytrees with a common leading axis. Returns ``K`` ``(N, M, ...)`` sharded along axis
    0 when ``d`` divides ``N``, else replicated.

    >>> import jax, jax.numpy as jnp
    >>> mesh = jax.make_mesh((1,), ("data",))
    >>> sharded_pairs(lambda a: 2 * a, lambda s, t: s @ t.T, jnp.eye(2), jnp.ones((3, 2)), mesh=mesh)
    Array([[4., 4., 4.],
           [4., 4., 4.]], dtype=float32)
    """
    axis = check(mesh, axis, False, where)
    _check_context(mesh, axis, where)
    rows = [_check_concrete_size(np.shape(jax.tree_util.tree_leaves(x)[0])[0], where, "the row count")
            for x in (x1, x2)]
    s1, s2 = (split_plan(n, mesh, axis) for n in rows)
    d, p2 = s1.devices, s2.per_device
    ring = [(k, (k - 1) % d) for k in range(d)]      # device k passes its block to k - 1

    def body(ops, a, b):
        state, block = embed(*ops, a), embed(*ops, b)
        shape = jax.eval_shape(combine, state, block)
        out = jnp.zeros((shape.shape[0], d * p2) + shape.shape[2:], shape.dtype)
        me = jax.lax.axis_index(axis)

        def step(j, carry):          # at step j device k holds the block of device k + j
            out, block = carry
            out = jax.lax.dynamic_update_slice_in_dim(out, combine(state, block), ((me + j) % d) * p2, axis=1)
            return out, jax.tree_util.tree_map(lambda x: jax.lax.ppermute(x, axis, ring), block)
        return jax.lax.fori_loop(0, d, step, (out, block))[0]

    def run(ops, a, b):
        a, b = _pad_rows(a, s1.per_device * d), _pad_rows(b, p2 * d)
        out = jax.shard_map(body, mesh=_auto(mesh), in_specs=(P(), P(axis), P(axis)), out_specs=P(axis),
                            check_vma=False)(ops, a, b)
        return _place([out[:rows[0], :rows[1]]], [0], mesh, axis, False, where)[0]

    return _jit_call(run, mesh, tuple(operands), x1, x2)


# --------------------------------------------------------------------------------------
# laplacian


def _laplacian_count(args: tuple, argnums: Any, method: str, num_samples: int | None,
                     devices: int, axis: str, where: str) -> tuple[int, Any]:
    """The number of first-order directions to split (the differentiated size ``D``, or
    ``num_samples``) and their dtype; refuses fewer directions than devices."""
    positions = _args.differentiable_positions(args, argnums, where)
    leaves = [jnp.asarray(x) if not isinstance(x, _args.ARRAY_TYPES) else x
              for p in positions for x in jax.tree_util.tree_leaves(args[p])]
    dim = sum(math.prod(np.shape(x)) for x in leaves)
    count, what = (dim, f"the {dim} first-order directions (one per differentiated input "
                        f"element)") if method == "exact" else (
        num_samples, f"num_samples={num_samples} random directions")
    if count < devices:
        raise ValueError(
            f"{where}: {what} cannot be split over the {devices} devices of mesh axis {axis!r} "
            f"(mesh=): every device needs at least one. Use a mesh axis with at most {count} "
            f"devices (mesh_axis=, or a smaller mesh){', or more num_samples' if method != 'exact' else ''}, "
            f"or drop mesh=.")
    return dim, jnp.result_type(*leaves)


def laplacian(func: Callable, args: tuple, *, argnums: Any, method: str, num_samples: int | None,
              key: Any, distribution: str, return_std: bool, mesh: Mesh,
              mesh_axis: str | None) -> Any:
    """``fl.laplacian(func, ...)(*args)`` with its first-order directions split over
    ``mesh``: device ``k`` carries its ``ceil(n / d)`` directions (the basis vectors
    ``e_i``, or its rows of the ``num_samples`` random ones drawn from ``key`` as on one
    device; zero directions pad the last device and add nothing) in one collapsed Taylor
    pass (``fl.diff_operator(func, factor=E_k)``, ``tr(E_k^T H E_k)``), and the partial
    sums are added across the devices (``psum``). The result is the full Laplacian,
    replicated. With ``return_std=True`` each device gives its directions' samples
    ``z^T H z`` one by one (a batch), gathered for the mean and standard error."""
    from ._operators import diff_operator  # lazily: operators.laplacian calls this function

    axis, where = _prologue("laplacian", func, mesh, mesh_axis, False)
    devices = int(mesh.shape[axis])
    dim, dtype = _laplacian_count(args, argnums, method, num_samples, devices, axis, where)
    count = dim if method == "exact" else num_samples
    per = split_plan(count, mesh, axis).per_device
    dynamic, rebuild = _split_dynamic((args, key))
    samples = method != "exact" and return_std

    def body(*ops):
        a, k = rebuild(list(ops))
        idx = jax.lax.axis_index(axis) * per + jnp.arange(per)
        if method == "exact":
            factor = (jnp.arange(dim)[:, None] == idx[None, :]).astype(dtype)
        else:
            draw = jax.random.rademacher if distribution == "rademacher" else jax.random.normal
            V = draw(k, (count, dim), dtype=dtype)
            factor = jnp.where(idx[None, :] < count, V[jnp.minimum(idx, count - 1)].T, 0).astype(dtype)
        op = lambda f: diff_operator(func, factor=f, argnums=argnums)(*a)  # noqa: E731
        if samples:
            return jax.vmap(lambda v: op(v[:, None]), in_axes=1)(factor)
        total = jax.tree_util.tree_map(lambda x: jax.lax.psum(x, axis), op(factor))
        return total if method == "exact" else jax.tree_util.tree_map(lambda x: x / count, total)

    def run(*ops):
        out = jax.shard_map(body, mesh=_auto(mesh), in_specs=(P(),) * len(ops),
                            out_specs=P(axis) if samples else P(), check_vma=False)(*ops)
        if not samples:
            return out
        out = jax.tree_util.tree_map(lambda s: s[:count], out)
        mean = jax.tree_util.tree_map(lambda s: jnp.mean(s, axis=0), out)
        return mean, jax.tree_util.tree_map(lambda s: jnp.std(s, axis=0, ddof=1) / math.sqrt(count), out)

    return _jit_call(run, mesh, *dynamic)
