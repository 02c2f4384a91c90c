"""The operator examples run (small sizes) and do what they claim."""

from __future__ import annotations

import os
import runpy
import types

import numpy as np
import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")


def load(name):
    """The example's module namespace (run as a module, not as __main__)."""
    path = os.path.join(EXAMPLES, f"{name}.py")
    return types.SimpleNamespace(**runpy.run_path(path, run_name=f"example_{name}"))


@pytest.mark.slow   # 11 s: trains the example
def test_poisson_pinn_trains_and_plots_its_residual(tmp_path):
    pytest.importorskip("matplotlib")
    png = str(tmp_path / "poisson.png")
    out = load("poisson_pinn").main(steps=200, png=png, n_points=256, batch_size=64, progress=False)
    assert out["loss_last"] < 0.3 * out["loss_first"]
    assert np.isfinite(out["relative_l2_error"]) and out["relative_l2_error"] < 1.0
    with open(png, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_operators_cost_plot(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("folx")
    png = str(tmp_path / "cost.png")
    data = load("operators_cost").main(png, ds=(4, 8), reps=3)
    assert os.path.getsize(png) > 10_000
    assert set(data) == {4, 8} and data[8]["flops"]["ours"] < data[8]["flops"]["jax.hessian trace"]
