"""Where arrays live: one device, or data parallelism over a ``jax.sharding.Mesh``.

Data parallelism here is JAX's own sharding, no hand-written collectives: parameters
and optimizer state are *replicated* (``PartitionSpec()``), each batch is *sharded*
along its leading axis over the mesh's data axis (``PartitionSpec(data_axis)``), and
``jax.jit`` inserts the all-reduce that sums the per-device gradient contributions.
The result equals one device's up to float round-off (the summation order differs).

Both kinds of mesh axis work: ``jax.make_mesh`` in current JAX builds *explicit* axes
(sharding is part of each array's type; a batch is moved onto its sharding with
``jax.sharding.reshard``), while *auto* axes leave it to the compiler (a
``with_sharding_constraint`` hint).

On several hosts (``jax.distributed.initialize()`` first), every process runs the same
``fit`` call; batches from an iterable are each process's *local* rows, assembled into
one global batch with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["Placement"]


@jax.jit
def _copy(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), tree)


class Placement:
    """Replicated parameters, batches sharded over ``data_axis`` (or one device)."""

    def __init__(self, mesh: Mesh | None, data_axis: str, where: str):
        self.mesh = mesh
        self.axis = data_axis
        if mesh is None:
            self.devices = 1
            return
        if not isinstance(mesh, Mesh):
            raise TypeError(
                f"{where}: mesh must be a jax.sharding.Mesh (e.g. jax.make_mesh((n,), "
                f"('data',))) or None, got {type(mesh).__name__}."
            )
        if not isinstance(data_axis, str) or data_axis not in mesh.axis_names:
            raise ValueError(
                f"{where}: the mesh has axes {tuple(mesh.axis_names)} but no axis named "
                f"{data_axis!r} to shard batches over; pass data_axis= one of them, or build "
                f"the mesh with it, e.g. jax.make_mesh((n,), ({data_axis!r},))."
            )
        self.devices = int(mesh.shape[data_axis])
        kind = dict(zip(mesh.axis_names, mesh.axis_types))[data_axis]
        self.explicit = kind == jax.sharding.AxisType.Explicit
        self.replicated = NamedSharding(mesh, P())

    def batch_sharding(self, leading: int) -> NamedSharding:
        """Sharding of an array whose axis ``leading`` is the batch axis."""
        return NamedSharding(self.mesh, P(*([None] * leading), self.axis))

    def replicate(self, tree: Any) -> Any:
        """Fresh copies of ``tree``'s arrays (safe to donate), replicated over the mesh."""
        copies = _copy(tree)  # one compiled copy of every leaf, not one dispatch per leaf
        if self.mesh is None:
            return copies
        return jax.device_put(copies, self.replicated)

    def put(self, tree: Any) -> Any:
        """Host (or device) arrays onto the device(s), replicated; no copy when already there."""
        if self.mesh is None:
            return jax.tree_util.tree_map(jnp.asarray, tree)
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_process_local_data(self.replicated, np.asarray(x))
            if not isinstance(x, jax.Array) else jax.device_put(x, self.replicated), tree)

    def put_batch(self, tree: Any, leading: int = 0) -> Any:
        """A batch (each process's local rows) onto the devices, sharded along axis ``leading``."""
        if self.mesh is None:
            return jax.tree_util.tree_map(jnp.asarray, tree)
        sharding = self.batch_sharding(leading)
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)

    def constrain(self, tree: Any, leading: int = 0) -> Any:
        """Inside jit: shard ``tree``'s axis ``leading`` over the data axis."""
        if self.mesh is None:
            return tree
        sharding = self.batch_sharding(leading)
        if self.explicit:
            return jax.tree_util.tree_map(lambda x: jax.sharding.reshard(x, sharding), tree)
        return jax.lax.with_sharding_constraint(tree, sharding)

    def take_rows(self, x: jax.Array, idx: jax.Array) -> jax.Array:
        """Inside jit: ``x[idx]`` from replicated ``x``, sharded over the data axis; each
        device gathers only its own rows."""
        if self.mesh is None:
            return x[idx]
        if self.explicit:
            return x.at[jax.sharding.reshard(idx, self.batch_sharding(0))].get(
                out_sharding=self.batch_sharding(0))
        return self.constrain(x[self.constrain(idx)])
