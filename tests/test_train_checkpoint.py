"""fit's checkpoints: resume bitwise-exactly (also after SIGKILL in a real subprocess),
never load a partial checkpoint, keep the last good one on a non-finite loss, and
refuse (without writing) a directory that does not belong to this run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from functorch_lite import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The script a subprocess runs: a small MLP, a checkpoint at every dispatch (so most of
# the run is spent saving and a kill at a random moment usually lands inside a save).
SCRIPT = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np, optax
    from functorch_lite import train

    def mlp(params, x):
        h = jnp.tanh(x @ params["W1"] + params["b1"][None, :])
        return (h @ params["W2"])[:, 0]

    def loss(params, batch):
        x, y = batch
        return jnp.mean((mlp(params, x) - y) ** 2)

    rng = np.random.RandomState(0)
    x = rng.randn(64, 4).astype(np.float32)
    y = np.sin(x.sum(1)).astype(np.float32)
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"W1": jax.random.normal(k1, (4, 16)) / 2, "b1": jnp.zeros(16),
              "W2": jax.random.normal(k2, (16, 1)) / 4}
    out, ckpt_dir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    result = train.fit(loss, params, optax.adam(1e-2), (x, y), steps=steps, batch_size=16,
                       key=jax.random.key(42), steps_per_call=2, checkpoint_dir=ckpt_dir,
                       checkpoint_every=2, progress=False)
    np.savez(out, step=result.step, loss=result.history["loss"],
             **{k: np.asarray(v) for k, v in result.params.items()},
             **{"mu_" + k: np.asarray(v) for k, v in result.opt_state[0].mu.items()})
""")


def _run(script, *args, **popen_kwargs):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen_kwargs)


def _steps(path):
    return sorted(int(p) for p in os.listdir(path) if p.isdigit()) if os.path.isdir(path) else []


@pytest.mark.slow  # long: CI's slow step runs it
def test_sigkill_at_any_moment_then_resume_is_bitwise_equal(tmp_path):
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    steps = 60
    reference = _run(script, tmp_path / "ref.npz", tmp_path / "ref_ckpt", steps)
    ckpt = tmp_path / "ckpt"
    rng = np.random.RandomState(0)
    kills, progress = 0, [0]
    for _ in range(3):
        proc = _run(script, tmp_path / "out.npz", ckpt, steps)
        deadline = time.monotonic() + 120
        # wait until this run has saved a new checkpoint, then kill it at a random moment
        while time.monotonic() < deadline and proc.poll() is None:
            if _steps(ckpt) and _steps(ckpt)[-1] > progress[-1]:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.15))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate()
        progress.append(_steps(ckpt)[-1] if _steps(ckpt) else 0)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL
    assert kills >= 1, "the run finished before it could be killed; the test did not test"
    final = _run(script, tmp_path / "out.npz", ckpt, steps)
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err.decode()
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err.decode()
    got, want = np.load(tmp_path / "out.npz"), np.load(tmp_path / "ref.npz")
    assert int(got["step"]) == steps
    assert sorted(got.files) == sorted(want.files)
    for name in want.files:
        assert got[name].dtype == want[name].dtype
        assert got[name].tobytes() == want[name].tobytes(), name  # bitwise, not allclose
    assert progress == sorted(progress)  # each resumed run went on from the last checkpoint


# ---------------------------------------------------------------- in-process cases

def loss(params, batch):
    x, y = batch
    return jnp.mean((jnp.tanh(x @ params["W"]) @ params["v"] - y) ** 2)


@pytest.fixture
def data():
    rng = np.random.RandomState(1)
    x = rng.randn(48, 3).astype(np.float32)
    return x, np.cos(x[:, 0]).astype(np.float32)


def params0(width=5):
    return {"W": jax.random.normal(jax.random.key(0), (3, width)), "v": jnp.ones(width) / width}


KW = dict(batch_size=8, steps_per_call=2, checkpoint_every=4, progress=False)


def _bytes(tree):
    return [np.asarray(x).tobytes() for x in jax.tree.leaves(tree)]


def _listing(path):
    """Every file of the checkpoints and its mtime (not the lock file each run rewrites)."""
    return sorted((os.path.relpath(os.path.join(d, f), path), os.stat(os.path.join(d, f)).st_mtime_ns)
                  for d, _, files in os.walk(path) for f in files if f != ".fit.lock")


def test_resume_in_process_is_bitwise_equal_and_keeps_history(data, tmp_path):
    full = train.fit(loss, params0(), optax.adam(1e-2), data, steps=20, checkpoint_dir=tmp_path / "a", **KW)
    part = train.fit(loss, params0(), optax.adam(1e-2), data, steps=12, checkpoint_dir=tmp_path / "b", **KW)
    assert part.step == 12
    resumed = train.fit(loss, params0(), optax.adam(1e-2), data, steps=20, checkpoint_dir=tmp_path / "b", **KW)
    assert resumed.step == 20
    assert _bytes(resumed.params) == _bytes(full.params)
    assert _bytes(resumed.opt_state) == _bytes(full.opt_state)
    np.testing.assert_array_equal(resumed.history["loss"], full.history["loss"])
    # a finished run called again does no work and returns the saved result
    again = train.fit(loss, params0(), optax.adam(1e-2), data, steps=20, checkpoint_dir=tmp_path / "b", **KW)
    assert again.step == 20 and _bytes(again.params) == _bytes(full.params)
    assert _steps(tmp_path / "b") == [16, 20]  # the last two are kept


def test_partial_checkpoint_is_never_loaded(data, tmp_path):
    full = train.fit(loss, params0(), optax.adam(1e-2), data, steps=16, **{**KW, "checkpoint_every": None})
    ckpt = tmp_path / "ckpt"
    train.fit(loss, params0(), optax.adam(1e-2), data, steps=8, checkpoint_dir=ckpt, **KW)
    # what a kill in the middle of saving step 12 leaves: orbax's temporary directory
    partial = ckpt / "12.orbax-checkpoint-tmp"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\0" * 10)
    resumed = train.fit(loss, params0(), optax.adam(1e-2), data, steps=16, checkpoint_dir=ckpt, **KW)
    assert _bytes(resumed.params) == _bytes(full.params)
    assert not partial.exists()  # cleaned up when the directory was opened


def test_non_finite_loss_keeps_last_good_checkpoint(data, tmp_path):
    x, y = data
    batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 48, 8)] * 2
    bad = batches[9][0].copy()
    bad[0, 0] = np.nan
    poisoned = batches[:9] + [(bad, batches[9][1])] + batches[10:]
    ckpt = tmp_path / "ckpt"
    with pytest.raises(FloatingPointError, match=r"at step 9; training stopped\. The last checkpoint \(step 8\)"):
        train.fit(loss, params0(), optax.sgd(0.1), poisoned, steps=12, checkpoint_dir=ckpt, **KW)
    assert _steps(ckpt) == [4, 8]
    # the kept checkpoint is good: resuming on clean data equals a clean run
    clean = train.fit(loss, params0(), optax.sgd(0.1), batches, steps=12, **{**KW, "checkpoint_every": None})
    resumed = train.fit(loss, params0(), optax.sgd(0.1), batches, steps=12, checkpoint_dir=ckpt, **KW)
    assert _bytes(resumed.params) == _bytes(clean.params)


def test_incompatible_checkpoint_dir_is_refused_and_untouched(data, tmp_path):
    ckpt = tmp_path / "ckpt"
    train.fit(loss, params0(), optax.adam(1e-2), data, steps=8, checkpoint_dir=ckpt, **KW)
    before = _listing(ckpt)
    with pytest.raises(ValueError, match=r"written for params with a different structure: saved "
                                         r"\[\['W'\]: \(3, 5\) float32.*this call \[\['W'\]: \(3, 6\)"):
        train.fit(loss, params0(6), optax.adam(1e-2), data, steps=16, checkpoint_dir=ckpt, **KW)
    with pytest.raises(ValueError, match=r"written for opt_state with a different structure"):
        train.fit(loss, params0(), optax.sgd(1e-2, momentum=0.9), data, steps=16, checkpoint_dir=ckpt, **KW)
    with pytest.raises(ValueError, match=r"a run with a different batch_size \(saved 8, this call 16\).*"
                                         r"To continue that run, pass batch_size=8\..*resume=\"force\""):
        train.fit(loss, params0(), optax.adam(1e-2), data, steps=16, checkpoint_dir=ckpt, **{**KW, "batch_size": 16})
    with pytest.raises(ValueError, match=r"a run with a different key \(saved \[0, 0\], this call \[0, 3\]\).*"
                                         r"pass the key of the interrupted run \(jax.random.key_data\(key\) of it is \[0, 0\]\)"):
        train.fit(loss, params0(), optax.adam(1e-2), data, steps=16, checkpoint_dir=ckpt, key=3, **KW)
    with pytest.raises(ValueError, match=r"already holds checkpoints \(latest step 8\) and resume=False"):
        train.fit(loss, params0(), optax.adam(1e-2), data, steps=16, checkpoint_dir=ckpt, resume=False, **KW)
    with pytest.raises(ValueError, match=r"is already at step 8, beyond steps=4"):
        train.fit(loss, params0(), optax.adam(1e-2), data, steps=4, checkpoint_dir=ckpt, **KW)
    assert _listing(ckpt) == before


def test_checkpoint_settings_are_checked(data, tmp_path):
    with pytest.raises(ValueError, match=r"checkpoint_every=3 must be a multiple of steps_per_call=2"):
        train.fit(loss, params0(), optax.sgd(0.1), data, steps=8, checkpoint_dir=tmp_path, **{**KW, "checkpoint_every": 3})
    with pytest.raises(ValueError, match=r"checkpoint_every=4 needs a checkpoint_dir"):
        train.fit(loss, params0(), optax.sgd(0.1), data, steps=8, **KW)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"exists and is not a directory"):
        train.fit(loss, params0(), optax.sgd(0.1), data, steps=8, checkpoint_dir=tmp_path / "file", **KW)
    with pytest.raises(TypeError, match=r"checkpoint_dir must be a path"):
        train.fit(loss, params0(), optax.sgd(0.1), data, steps=8, checkpoint_dir=3.5, **KW)


def test_non_finite_gradient_with_finite_loss_is_never_saved(data, tmp_path):
    """0 * sqrt(|w|) is 0 at w = 0 but its gradient is 0 * inf = nan: the loss stays finite
    for that step, the parameters do not."""
    def sneaky(params, batch):
        return loss(params, batch) + 0.0 * jnp.sqrt(jnp.abs(params["v"][0]))

    p = params0()
    p["v"] = p["v"].at[0].set(0.0)
    ckpt = tmp_path / "ckpt"
    kw = {**KW, "steps_per_call": 1, "checkpoint_every": 1}
    with pytest.raises(FloatingPointError, match=r"became non-finite in steps 0\.\.0 although the loss was "
                                                 r"finite .* No checkpoint was written"):
        train.fit(sneaky, p, optax.sgd(0.1), data, steps=8, checkpoint_dir=ckpt, **kw)
    assert _steps(ckpt) == []


def test_half_deleted_old_checkpoint_is_ignored(data, tmp_path):
    """A kill while orbax deletes an old checkpoint (only the last two are kept) leaves a
    half-deleted step directory; the run resumes from the newest one regardless."""
    import shutil

    ckpt = tmp_path / "ckpt"
    train.fit(loss, params0(), optax.adam(1e-2), data, steps=8, checkpoint_dir=ckpt, **KW)
    assert _steps(ckpt) == [4, 8]
    shutil.rmtree(ckpt / "4" / "state")
    (ckpt / "4" / "_CHECKPOINT_METADATA").unlink()
    full = train.fit(loss, params0(), optax.adam(1e-2), data, steps=16, **{**KW, "checkpoint_every": None})
    resumed = train.fit(loss, params0(), optax.adam(1e-2), data, steps=16, checkpoint_dir=ckpt, **KW)
    assert _bytes(resumed.params) == _bytes(full.params)
    assert _steps(ckpt) == [12, 16]
