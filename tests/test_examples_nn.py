"""The nn examples run (small sizes) and check what they claim."""

from __future__ import annotations

import importlib.util
import pathlib

import jax
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_linear_layer_derivation():
    assert load("linear_layer_derivation").main(verbose=False) < 1e-8


def test_per_sample_grads():
    grads = load("per_sample_grads").main(batch=8, sizes=(5, 7, 1), verbose=False)
    assert [g.shape for g in jax.tree_util.tree_leaves(grads)][:2] == [(8, 7), (8, 7)]


@pytest.mark.slow
def test_per_sample_grads_full_size():
    load("per_sample_grads").main(verbose=False)
