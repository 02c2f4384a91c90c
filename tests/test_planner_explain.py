"""explain(f, x, sparse=True): the sparse report beside the planner's dense plan."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import functorch_lite as fl


def _banded(x):            # a 49 x 50 bidiagonal Jacobian: 2 colors of columns
    return x[1:] * x[:-1]


def test_explain_sparse_shows_pattern_colorings_and_the_dense_plan(x64):
    x = jnp.linspace(0.1, 1.0, 50)
    r = fl.explain(_banded, x, sparse=True, xla=False)
    text = str(r)
    # the planner itself skips detection here (a small dense plan, below DETECT_MIN);
    # sparse=True detects and reports anyway
    assert r.chosen in ("fwd", "rev") and r.sparse and r.sparse in text
    assert "sparse Jacobian of _banded: 49 x 50, nnz 98" in text
    assert "dense forward (jacfwd)            50" in text
    assert "dense reverse (jacrev)            49" in text
    assert f"planner's dense plan: {r.chosen}" in text
    # the dense plan's row prices the mode it names (not the cheaper of fwd and rev)
    row = next(l for l in text.splitlines() if "planner's dense plan" in l).split()
    same = next(l for l in text.splitlines()
                if l.strip().startswith(f"dense {'forward' if r.chosen == 'fwd' else 'reverse'}")).split()
    assert row[-2:] == same[-2:]
    assert "columns colored (JVPs)             2" in text
    assert "rows colored (VJPs)                2" in text
    assert "###...." in text                           # the spy plot
    # without sparse=True the report has no sparse section
    assert "sparse Jacobian of" not in str(fl.explain(_banded, x, xla=False))
    # the plan explained is the one that runs
    np.testing.assert_allclose(np.asarray(fl.jacobian(_banded)(x)),
                               np.asarray(fl.jacobian(_banded, mode="rev")(x)), rtol=1e-12)


def test_explain_sparse_for_a_hessian(x64):
    r = fl.explain(lambda x: jnp.sum(x[1:] ** 2 * x[:-1]), jnp.ones(30), hessian=True,
                   sparse=True, xla=False)
    assert "sparse Hessian of" in r.sparse and "star coloring (HVPs)" in r.sparse
    assert "planner's dense plan: fwd-over-rev" in str(r)
    # a long label widens the column: passes and costs stay aligned
    table = [l for l in r.sparse.splitlines()[2:] if l.startswith("  ") and l.strip()][:6]
    ends = {len(l) for l in table[1:] if l.rstrip()[-1].isdigit()}
    assert len(ends) == 1, table
    assert table[0].index("passes") + len("passes") == table[1].index("30") + 2


def test_explain_sparse_bad_input():
    with pytest.raises(TypeError, match=r"explain\(_banded\): expected sparse to be True or False"):
        fl.explain(_banded, jnp.ones(5), sparse=1)
