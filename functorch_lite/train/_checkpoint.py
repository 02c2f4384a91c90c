"""Checkpoints that survive SIGKILL at any moment, kept by orbax-checkpoint.

Each checkpoint is a directory ``<checkpoint_dir>/<step>/`` with two items:
``state`` (params, optimizer state, step and the PRNG key's data, saved as a pytree of
arrays) and ``meta`` (JSON: the structure, shapes and dtypes of params and optimizer
state, the settings that decide which batches each step sees, and the loss history).

Atomicity is orbax's: a checkpoint is written into ``<step>.orbax-checkpoint-tmp-*``
and renamed to ``<step>`` only when every file of it is written (and
``commit_success.txt`` marks it); orbax lists only finalized step directories, so a
checkpoint cut off by a kill is never loaded, and it is deleted when the next run
opens the directory (``cleanup_tmp_directories``). Saving is synchronous, so a
checkpoint is complete on disk before training goes on. The last two checkpoints are
kept.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

__all__ = ["Checkpoints", "fingerprint"]

FORMAT = 1


def fingerprint(tree: Any) -> dict:
    """Structure, shapes and dtypes of ``tree``, as JSON-able data."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {
        "treedef": str(jax.tree_util.tree_structure(tree)),
        "leaves": [[jax.tree_util.keystr(p), list(np.shape(x)), str(np.dtype(x.dtype))] for p, x in leaves],
    }


def _describe(fp: dict) -> str:
    return ", ".join(f"{name or 'root'}: {tuple(shape)} {dtype}" for name, shape, dtype in fp["leaves"]) or "no arrays"


class Checkpoints:
    """An orbax ``CheckpointManager`` over ``directory``, with fit's compatibility checks."""

    def __init__(self, directory: Any, where: str):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.where = where
        try:
            path = os.path.abspath(os.fspath(directory))
        except TypeError:
            raise TypeError(f"{where}: checkpoint_dir must be a path (str or os.PathLike), got "
                            f"{type(directory).__name__}.") from None
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"{where}: checkpoint_dir={path!r} exists and is not a directory.")
        self.path = path
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=False,
            preservation_policy=ocp.checkpoint_managers.LatestN(2),
            create=True,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(path, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def read_meta(self, step: int) -> dict:
        args = self._ocp.args.Composite(meta=self._ocp.args.JsonRestore())
        return dict(self.manager.restore(step, args=args)["meta"])

    def check_compatible(self, step: int, meta: dict, expected: dict) -> None:
        """Raise (before anything is written) if the checkpoint cannot continue this run."""
        where, path = self.where, self.path
        if meta.get("format") != FORMAT:
            raise ValueError(f"{where}: checkpoint_dir={path!r} holds a checkpoint (step {step}) that "
                             "fit did not write; use a new checkpoint_dir.")
        for name in ("params", "opt_state"):
            if meta[name] != expected[name]:
                raise ValueError(
                    f"{where}: checkpoint_dir={path!r} was written for {name} with a different "
                    f"structure: saved [{_describe(meta[name])}], this call [{_describe(expected[name])}]. "
                    "Nothing was overwritten; pass the matching params and optimizer, or a new checkpoint_dir."
                )
        for name, value in expected["config"].items():
            saved = meta["config"].get(name)
            if saved != value:
                raise ValueError(
                    f"{where}: checkpoint_dir={path!r} was written with {name}={saved!r}, this call "
                    f"has {name}={value!r}; a resumed run must see the same batches. Call fit with "
                    f"{name}={saved!r}, or use a new checkpoint_dir. Nothing was overwritten."
                )

    def restore_state(self, step: int, like: Any) -> Any:
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
        args = self._ocp.args.Composite(state=self._ocp.args.StandardRestore(abstract))
        return self.manager.restore(step, args=args)["state"]

    def save(self, step: int, state: Any, meta: dict) -> None:
        args = self._ocp.args.Composite(
            state=self._ocp.args.StandardSave(state),
            meta=self._ocp.args.JsonSave({**meta, "format": FORMAT, "step": step}),
        )
        self.manager.save(step, args=args, force=True)
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
