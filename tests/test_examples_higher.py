"""The higher-order examples run (small sizes) and do what they claim."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_higher_order_example_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    path, errors = load("higher_order").main(str(tmp_path), orders=(1, 3, 7))
    assert os.path.getsize(path) > 10_000
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    # inside the radius of convergence, a higher order is closer to f
    assert errors[7] < errors[3] < errors[1]


def test_newton_cg_example_converges(capsys):
    history = load("newton_cg").main(n=200, samples=100, steps=5)
    losses = [h[0] for h in history]
    grads = [h[1] for h in history]
    assert all(b <= a + 1e-6 for a, b in zip(losses, losses[1:]))
    assert grads[-1] < 1e-3 * grads[0]                 # quadratic convergence, H never formed
    assert "never formed" in capsys.readouterr().out
    assert np.isfinite(losses[-1])
