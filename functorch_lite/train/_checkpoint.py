"""Checkpoints that survive SIGKILL at any moment, kept by orbax-checkpoint.

Each checkpoint is a directory ``<checkpoint_dir>/<step>/`` with two items:
``state`` (params, optimizer state, step and the PRNG key's data, saved as a pytree of
arrays) and ``meta`` (JSON: the structure, shapes and dtypes of params and optimizer
state, the settings that determine the run (see ``_settings``), the loss history, a
SHA-256 of the state's bytes, and a SHA-256 of the metadata itself).

Atomicity is orbax's: a checkpoint is written into ``<step>.orbax-checkpoint-tmp-*``
and renamed to ``<step>`` only when every file of it is written; orbax lists only
finalized step directories, so a checkpoint cut off by a kill is never loaded, and it
is deleted when the next run opens the directory (``cleanup_tmp_directories``).
Saving is synchronous, so a checkpoint is complete on disk before training goes on.
The last two checkpoints are kept.

Integrity is checked here: on resume the newest checkpoint is read and verified (the
metadata's checksum, then the state's, besides orbax's own CRCs of the array chunks);
a damaged one is moved to ``<checkpoint_dir>/damaged/`` with a warning and the next
older one is tried. Older step directories that do not verify are what a kill during
orbax's deletion of an old checkpoint leaves; they are removed.

One directory belongs to one run at a time: ``fit`` holds an exclusive ``fcntl.flock``
on ``<checkpoint_dir>/.fit.lock`` while it runs. The OS drops the lock when the process
ends, however it ends (SIGKILL included), so a killed run never leaves it locked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from typing import Any

import jax
import numpy as np

from ._settings import diff

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS: no lock
    fcntl = None

__all__ = ["Checkpoints", "fingerprint", "state_digest"]

FORMAT = 2
LOCK_NAME = ".fit.lock"


def fingerprint(tree: Any) -> dict:
    """Structure, shapes and dtypes of ``tree``, as JSON-able data."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {
        "treedef": str(jax.tree_util.tree_structure(tree)),
        "leaves": [[jax.tree_util.keystr(p), list(np.shape(x)), str(np.dtype(x.dtype))] for p, x in leaves],
    }


def state_digest(state: Any) -> str:
    """SHA-256 of every leaf's dtype, shape and bytes, in tree order."""
    h = hashlib.sha256()
    for x in jax.tree_util.tree_leaves(state):
        a = np.ascontiguousarray(np.asarray(x))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _json_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _describe(fp: dict) -> str:
    return ", ".join(f"{name or 'root'}: {tuple(shape)} {dtype}" for name, shape, dtype in fp["leaves"]) or "no arrays"


def _release_files() -> None:
    """orbax/tensorstore can leave the files of a damaged checkpoint open when reading it
    fails; collect them now (closing them) rather than at some later garbage collection,
    where their ResourceWarnings would surface far from the cause."""
    import gc

    with warnings.catch_warnings():  # their unclosed files and never-awaited coroutines
        warnings.simplefilter("ignore", ResourceWarning)
        warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
        gc.collect()


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > 160:
        first = first[:157] + "..."
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


class Damaged(Exception):
    """A checkpoint that cannot be read or does not verify."""


# What a mismatched setting means and how to reproduce it; never an argument fit lacks.
_SETTING = {
    "data": ("the data", "pass the same data arrays (same shapes, same values)"),
    "batch_size": ("batch_size", "pass batch_size={saved}"),
    "accumulate": ("accumulate", "pass accumulate={saved}"),
    "steps_per_call": ("steps_per_call", "pass steps_per_call={saved}"),
    "key": ("the key", "pass the key of the interrupted run (jax.random.key_data(key) of it is {saved})"),
    "optimizer": ("the optimizer's settings", "pass the optimizer of the interrupted run"),
    "loss_fn": ("the loss function", "pass the loss function of the interrupted run"),
}


class Checkpoints:
    """An orbax ``CheckpointManager`` over ``directory``, locked for this process, with
    fit's verification, fallback and compatibility checks."""

    def __init__(self, directory: Any, where: str):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.where = where
        self._lock = None
        self.manager = None
        try:
            path = os.path.abspath(os.fspath(directory))
        except TypeError:
            raise TypeError(f"{where}: checkpoint_dir must be a path (str or os.PathLike), got "
                            f"{type(directory).__name__}.") from None
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"{where}: checkpoint_dir={path!r} exists and is not a directory.")
        self.path = path
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise ValueError(f"{where}: checkpoint_dir={path!r} cannot be created ({_reason(e)}); "
                             "choose a directory you can write to. No step was run.") from None
        self._acquire()
        try:
            self._check_writable()
            options = ocp.CheckpointManagerOptions(
                enable_async_checkpointing=False,
                preservation_policy=ocp.checkpoint_managers.LatestN(2),
                create=True,
                cleanup_tmp_directories=True,
            )
            self.manager = ocp.CheckpointManager(path, options=options)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ lock, writability

    def _acquire(self) -> None:
        where, path = self.where, self.path
        lock_path = os.path.join(path, LOCK_NAME)
        try:
            f = open(lock_path, "a+")
        except OSError as e:
            raise ValueError(f"{where}: checkpoint_dir={path!r} is not writable ({_reason(e)}); "
                             "choose a directory you can write to. No step was run.") from None
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.seek(0)
                holder = f.read().strip()
                f.close()
                who = f" (process {holder})" if holder.isdigit() else ""
                raise ValueError(
                    f"{where}: checkpoint_dir={path!r} is in use by another fit{who}; two runs on "
                    "one directory would overwrite each other's checkpoints. Wait for that run to "
                    "finish, or give this one its own checkpoint_dir. Nothing was written."
                ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock = f

    def _check_writable(self) -> None:
        probe = os.path.join(self.path, f".fit-write-test-{os.getpid()}")
        try:
            with open(probe, "wb") as f:
                f.write(b"ok")
            os.remove(probe)
        except OSError as e:
            raise ValueError(f"{self.where}: checkpoint_dir={self.path!r} is not writable "
                             f"({_reason(e)}); choose a directory you can write to. No step was run.") from None

    # ------------------------------------------------------------ reading

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def read_meta(self, step: int) -> dict:
        """The verified metadata of ``step``; raises :class:`Damaged`."""
        args = self._ocp.args.Composite(meta=self._ocp.args.JsonRestore())
        try:
            meta = dict(self.manager.restore(step, args=args)["meta"])
        except Exception as e:
            _release_files()
            raise Damaged(f"its metadata cannot be read ({_reason(e)})") from None
        if meta.get("checksum") != _json_digest(meta):
            raise Damaged("its metadata does not match its checksum" if "checksum" in meta
                          else "its metadata has no checksum (not written by this version of fit)")
        if meta.get("format") != FORMAT or meta.get("step") != step:
            raise Damaged(f"its metadata is of format {meta.get('format')!r} for step "
                          f"{meta.get('step')!r}, not format {FORMAT} for step {step}")
        return meta

    def restore_state(self, step: int, like: Any, meta: dict) -> Any:
        """The verified state of ``step``; raises :class:`Damaged`."""
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
        args = self._ocp.args.Composite(state=self._ocp.args.StandardRestore(abstract))
        try:
            state = self.manager.restore(step, args=args)["state"]
        except Exception as e:
            _release_files()
            raise Damaged(f"its arrays cannot be read ({_reason(e)})") from None
        if state_digest(state) != meta.get("state_sha256"):
            raise Damaged("its arrays do not match their checksum")
        if int(state["step"]) != step or len(meta["history"]["loss"]) != step:
            raise Damaged("its saved step or loss history disagrees with its step number")
        return state

    def check_compatible(self, step: int, meta: dict, expected: dict, force: bool) -> None:
        """Raise (before anything is written) if the checkpoint cannot continue this run."""
        where, path = self.where, self.path
        for name in ("params", "opt_state"):
            if meta[name] != expected[name]:
                raise ValueError(
                    f"{where}: checkpoint_dir={path!r} was written for {name} with a different "
                    f"structure: saved [{_describe(meta[name])}], this call [{_describe(expected[name])}]. "
                    "Nothing was overwritten; pass the matching params and optimizer, or a new checkpoint_dir."
                )
        if force:
            return
        for name, value in expected["config"].items():
            saved = meta["config"].get(name)
            if saved == value:
                continue
            what, fix = _SETTING.get(name, (name, "pass the setting of the interrupted run"))
            if isinstance(value, dict) and isinstance(saved, dict):
                change = diff(saved, value)
            else:
                change = f"saved {saved!r}, this call {value!r}"
            raise ValueError(
                f"{where}: checkpoint_dir={path!r} holds step {step} of a run with a different "
                f"{name} ({change}); resuming would silently continue another run. Nothing was "
                f"overwritten. To continue that run, {fix.format(saved=saved)}. To start afresh, "
                f"use a new checkpoint_dir (or delete {path!r}). To continue it with {what} "
                "changed on purpose, pass resume=\"force\"."
            )

    def resume_point(self, steps: int, like: Any, expected: dict, force: bool) -> tuple[int, Any, dict] | None:
        """``(step, state, meta)`` of the newest checkpoint that verifies, or None for an
        empty directory. Damaged newer ones are moved aside with a warning; unverifiable
        older ones (leftovers of an interrupted deletion) are removed."""
        where, path = self.where, self.path
        all_steps = self.steps()
        bad: list[tuple[int, str]] = []
        found = None
        for step in reversed(all_steps):
            try:
                meta = self.read_meta(step)
            except Damaged as e:
                bad.append((step, str(e)))
                continue
            self.check_compatible(step, meta, expected, force)
            if step > steps:
                raise ValueError(f"{where}: checkpoint_dir={path!r} is already at step {step}, "
                                 f"beyond steps={steps}; pass steps >= {step}.")
            try:
                state = self.restore_state(step, like, meta)
            except Damaged as e:
                bad.append((step, str(e)))
                continue
            found = (step, state, meta)
            break
        if found is None:
            if bad:
                listed = "; ".join(f"step {s}: {r}" for s, r in bad)
                raise ValueError(
                    f"{where}: checkpoint_dir={path!r} holds checkpoints of steps "
                    f"{sorted(s for s, _ in bad)} but none of them is intact ({listed}). Nothing was "
                    "changed; move that directory away (or delete it) to start afresh, or pass a new "
                    "checkpoint_dir."
                )
            return None
        good = found[0]
        for step, reason in bad:
            dest = self._move_aside(step)
            warnings.warn(
                f"{where}: the checkpoint of step {step} in {path!r} is damaged ({reason}); it was "
                f"moved to {dest!r} and the run resumes from step {good}, the newest intact checkpoint.",
                RuntimeWarning, stacklevel=4)
        layout = self._layout(good)
        for step in all_steps:
            if step < good and not self._intact_enough(step, layout):
                shutil.rmtree(os.path.join(path, str(step)), ignore_errors=True)
        self.manager.reload()
        return found

    def _layout(self, step: int) -> tuple[set, set]:
        """The files every checkpoint has (relative paths), and the directories of its
        content-addressed files (hex names, which differ between checkpoints)."""
        root = os.path.join(self.path, str(step))
        named, hashed = set(), set()
        for d, _, files in os.walk(root):
            rel = os.path.relpath(d, root)
            for f in files:
                if len(f) >= 16 and all(c in "0123456789abcdef" for c in f):
                    hashed.add(rel)
                else:
                    named.add(os.path.join(rel, f))
        return named, hashed

    def _intact_enough(self, step: int, layout: tuple[set, set]) -> bool:
        """A cheap check of an older step (no arrays read): does it hold every file the
        newest intact checkpoint has, and verified metadata? A kill during orbax's
        deletion of it leaves some files gone."""
        named, hashed = self._layout(step)
        if not (layout[0] <= named and layout[1] <= hashed):
            return False
        try:
            self.read_meta(step)
        except Damaged:
            return False
        return True

    def _move_aside(self, step: int) -> str:
        base = os.path.join(self.path, "damaged")
        os.makedirs(base, exist_ok=True)
        dest, i = os.path.join(base, f"step-{step}"), 1
        while os.path.exists(dest):
            i += 1
            dest = os.path.join(base, f"step-{step}.{i}")
        os.rename(os.path.join(self.path, str(step)), dest)
        return dest

    # ------------------------------------------------------------ writing

    def save(self, step: int, state: Any, meta: dict) -> None:
        meta = json.loads(json.dumps({**meta, "format": FORMAT, "step": step,
                                      "state_sha256": state_digest(state)}))
        meta["checksum"] = _json_digest(meta)
        args = self._ocp.args.Composite(
            state=self._ocp.args.StandardSave(state),
            meta=self._ocp.args.JsonSave(meta),
        )
        self.manager.save(step, args=args, force=True)
        self.manager.wait_until_finished()

    def close(self) -> None:
        if self.manager is not None:
            self.manager.close()
            self.manager = None
        if self._lock is not None:
            if fcntl is not None:
                fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
