"""The tour's machinery, in-process: checks that can fail (NaN, shapes, structure), stop
registration, a raising stop, pictures without any drawing library."""

from __future__ import annotations

import io
import shutil
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from functorch_lite._cli import tour


@pytest.fixture
def ctx(tmp_path):
    return tour.TourContext(tmp_path, stream=io.StringIO())


def test_check_fails_on_nan_shape_structure_and_error(ctx):
    assert ctx.check("equal", jnp.ones(3), np.ones(3))
    assert not ctx.check("nan is not 0", jnp.asarray([np.nan]), np.zeros(1), atol=0)
    assert not ctx.check("shape", jnp.ones(3), np.ones(4))
    assert not ctx.check("structure", (jnp.ones(1),), [np.ones(1)])
    assert not ctx.check("off by 1e-3", 1.001, 1.0)
    assert not ctx.check_true("false", False, "because")
    assert [c.passed for c in ctx.checks] == [True, False, False, False, False, False]
    report = ctx.stream.getvalue()
    assert "[ok  ] equal" in report and report.count("[FAIL]") == 5


@pytest.fixture
def scratch_stops(monkeypatch):
    monkeypatch.setattr(tour, "STOPS", [])
    return tour.STOPS


def test_stop_registration_and_a_raising_stop(scratch_stops, tmp_path):
    @tour.stop("a", "first")
    def _a(ctx):
        ctx.check("one", 1.0, 1.0)

    @tour.stop("b", "raises")
    def _b(ctx):
        raise RuntimeError("boom")

    @tour.stop("a", "first, replaced")
    def _a2(ctx):
        ctx.check("two", 2.0, 2.0)
        ctx.save("x.txt", lambda p: open(p, "w").close())

    assert [(s.key, s.title) for s in tour.STOPS] == [("a", "first, replaced"), ("b", "raises")]
    out = io.StringIO()
    result = tour.run_tour(tmp_path, stream=out)
    assert not result.ok and result.passed == 1 and len(result.checks) == 2
    assert result.checks[1].what == "stop 'b' ran" and "RuntimeError: boom" in result.checks[1].detail
    assert result.pictures == [tmp_path / "x.txt"] and (tmp_path / "x.txt").exists()
    assert out.getvalue().rstrip().splitlines()[-1].startswith(f"tour: 1/2 checks passed, pictures in {tmp_path}")
    only = tour.run_tour(tmp_path, only=["a"], stream=io.StringIO())
    assert only.ok and len(only.checks) == 1


def test_picture_without_graphviz_or_matplotlib_writes_dot(ctx, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # import fails
    g = ctx.picture("g", lambda x: jnp.sum(jnp.sin(x)), jnp.ones(3))
    assert ctx.pictures == [ctx.out / "g.dot"]
    assert (ctx.out / "g.dot").read_text() == g.to_dot()
    assert "wrote the DOT text instead" in ctx.stream.getvalue()
