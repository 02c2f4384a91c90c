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

Several CPU devices in one process (``--xla_force_host_platform_device_count=n``) run
their collectives in process: each simulated device is a thread, and an all-reduce is a
rendezvous of those threads. XLA aborts the whole process (a check failure in
``AwaitAndLogIfStuck`` under ``InProcessCommunicator::AllReduce``) when the last thread
arrives too late: it warns after ``--xla_cpu_collective_call_warn_stuck_timeout_seconds``
(default 20) and terminates ``--xla_cpu_collective_call_terminate_timeout_seconds``
(default 40) later: on a loaded machine, with more device threads than cores, a thread
that the OS does not schedule for that long kills the training run. The flag is read
once, when JAX starts its CPU backend, so it cannot be raised from inside ``fit``:
:func:`check_cpu_collectives` refuses such a mesh up front unless ``XLA_FLAGS`` carries
a terminate timeout of at least :data:`MIN_CPU_COLLECTIVE_TIMEOUT` seconds, and
:func:`cpu_device_flags` gives the flags to set before JAX starts.
"""

from __future__ import annotations

from typing import Any

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["Placement", "cpu_device_flags", "check_cpu_collectives", "MIN_CPU_COLLECTIVE_TIMEOUT"]

TERMINATE_FLAG = "--xla_cpu_collective_call_terminate_timeout_seconds"
WARN_FLAG = "--xla_cpu_collective_call_warn_stuck_timeout_seconds"
#: The smallest terminate timeout (seconds) ``fit`` accepts for in-process CPU collectives:
#: no scheduling delay of a loaded machine comes near it, and a real deadlock still ends.
MIN_CPU_COLLECTIVE_TIMEOUT = 600
_RECOMMENDED_TIMEOUT = 3600


def cpu_device_flags(devices: int, timeout: int = _RECOMMENDED_TIMEOUT) -> str:
    """``XLA_FLAGS`` for ``devices`` simulated CPU devices whose collectives survive a
    loaded machine: set it before JAX starts (before the first ``jax.devices()``).

    >>> cpu_device_flags(4)
    '--xla_force_host_platform_device_count=4 --xla_cpu_collective_call_terminate_timeout_seconds=3600 --xla_cpu_collective_call_warn_stuck_timeout_seconds=600'
    """
    return (f"--xla_force_host_platform_device_count={int(devices)} {TERMINATE_FLAG}={int(timeout)} "
            f"{WARN_FLAG}={max(20, int(timeout) // 6)}")


def _flag_value(flags: str, name: str) -> int | None:
    found = re.findall(re.escape(name) + r"=(-?\d+)", flags)
    return int(found[-1]) if found else None


def check_cpu_collectives(mesh: Mesh, where: str) -> None:
    """Refuse a mesh with several CPU devices in this process unless ``XLA_FLAGS`` sets
    the in-process collective terminate timeout to at least
    :data:`MIN_CPU_COLLECTIVE_TIMEOUT` seconds (XLA's default, 40 s, aborts the process
    when a loaded machine delays one device thread that long). ``XLA_FLAGS`` is read as
    it is now; JAX read it when its backend started, so set it before that."""
    here = jax.process_index()
    local_cpu = [d for d in mesh.devices.flat if d.process_index == here and d.platform == "cpu"]
    if len(local_cpu) < 2:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    timeout = _flag_value(flags, TERMINATE_FLAG)
    if timeout is not None and timeout >= MIN_CPU_COLLECTIVE_TIMEOUT:
        return
    have = "XLA's default of 40 s" if timeout is None else f"{timeout} s"
    raise ValueError(
        f"{where}: the mesh puts {len(local_cpu)} CPU devices in this process, whose all-reduce "
        f"is a rendezvous of {len(local_cpu)} threads that XLA aborts (a check failure in "
        f"AwaitAndLogIfStuck) when one thread arrives {TERMINATE_FLAG[2:]} seconds "
        f"after the stuck warning ({have}); a loaded machine can delay a thread that long and kill the run. Set, "
        f"before JAX starts: XLA_FLAGS='{cpu_device_flags(len(local_cpu))}' "
        f"(functorch_lite.train.cpu_device_flags({len(local_cpu)}); any timeout >= "
        f"{MIN_CPU_COLLECTIVE_TIMEOUT} s is accepted), or train on one device (mesh=None).")


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
        check_cpu_collectives(mesh, where)
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
