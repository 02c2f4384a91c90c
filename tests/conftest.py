"""Test configuration: strict JAX, float64 available per test, shared helpers."""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

# Strict dtype promotion (no implicit float32 + float64, int + float array, bf16 + f32,
# float + complex; Python scalars stay weakly typed) for the test modules below, whose tests
# and library paths were run under it. Modules not listed run with JAX's standard
# promotion: not run under strict promotion yet (add a module once it passes), or, for
# test_errors, its functions promote a float to complex on purpose (jnp.sum(x) * 1j) to
# reach the library's complex-output message.
STRICT_PROMOTION = {
    "test_check", "test_cli", "test_fidelity", "test_nn", "test_nn_chunking", "test_nn_conv",
    "test_nn_raw", "test_tour", "test_train", "test_train_errors", "test_transforms", "test_viz",
    "test_zero_overhead",
}




def pytest_configure(config):
    config.addinivalue_line("markers", "standard_promotion(reason): run this test with JAX's standard dtype "
                                       "promotion in a module of STRICT_PROMOTION (code not ours needs it)")


@pytest.fixture(autouse=True)
def _dtype_promotion(request):
    module = getattr(request, "module", None)
    name = getattr(module, "__name__", "").rpartition(".")[2]
    strict = name in STRICT_PROMOTION and request.node.get_closest_marker("standard_promotion") is None
    with jax.numpy_dtype_promotion("strict" if strict else "standard"):
        yield


def tree_allclose(a, b, *, rtol=1e-6, atol=1e-6) -> bool:
    """Same structure, and every pair of leaves allclose."""
    if jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b):
        return False
    return all(
        np.shape(x) == np.shape(y) and np.allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


def assert_tree_allclose(a, b, *, rtol=1e-6, atol=1e-6):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b), (
        jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert np.shape(x) == np.shape(y), (np.shape(x), np.shape(y))
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def keys_at_every_depth(tree):
    """Every dict's key list, depth first: order-sensitive, unlike tree equality."""
    if isinstance(tree, dict):
        return [list(tree)] + [k for v in tree.values() for k in keys_at_every_depth(v)]
    if isinstance(tree, (tuple, list)):
        return [k for v in tree for k in keys_at_every_depth(v)]
    return []


@pytest.fixture
def x64():
    """Run the test body with float64 enabled."""
    with jax.enable_x64(True):
        yield
