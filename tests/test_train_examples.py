"""The examples run and show what they claim."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def test_linear_regression_example_matches_least_squares(capsys):
    out = runpy.run_path(os.path.join(EXAMPLES, "linear_regression.py"))["main"](steps=300, progress=False)
    np.testing.assert_allclose(out["w"], out["w_star"], rtol=1e-5, atol=1e-5)
    assert "least squares" in capsys.readouterr().out


def test_train_mlp_example_learns_and_resumes(tmp_path):
    pytest.importorskip("matplotlib")
    main = runpy.run_path(os.path.join(EXAMPLES, "train_mlp.py"))["main"]
    ckpt, png = tmp_path / "ckpt", tmp_path / "loss.png"
    result = main(steps=400, checkpoint_dir=str(ckpt), png=str(png), progress=False)
    assert result.history["loss"][-50:].mean() < 0.2 * result.history["loss"][:50].mean()
    assert png.read_bytes()[:4] == b"\x89PNG"
    again = main(steps=400, checkpoint_dir=str(ckpt), progress=False)  # resumes at the end
    assert again.step == 400
    np.testing.assert_array_equal(again.history["loss"], result.history["loss"])


@pytest.mark.slow
def test_data_parallel_example():
    env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, "data_parallel.py"), "--steps", "30"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "4 devices" in proc.stdout
    diff = float(proc.stdout.rsplit("max |params difference| = ", 1)[1].split()[0])
    assert diff < 1e-5
