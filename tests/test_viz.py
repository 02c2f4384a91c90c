"""viz.graph: the split of reverse mode into forward (+ residuals) and backward, the
residuals, forward mode, pytrees, collapsing, and the pictures (DOT text, matplotlib
fallback, Graphviz when installed)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np
import pytest

import functorch_lite as fl
from functorch_lite._viz import ComputationGraph, graph

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def chain(x, W1, W2, W3):
    return W3 @ jnp.tanh(W2 @ jnp.tanh(W1 @ x))


@pytest.fixture
def chain_args():
    r = np.random.default_rng(0)
    return tuple(jnp.asarray(r.normal(size=s), dtype=jnp.float32) for s in [(8,), (6, 8), (4, 6), (2, 4)])


def mlp(params, x):
    h = jax.nn.relu(x @ params["W1"] + params["b1"][None, :])
    return jnp.mean((h @ params["W2"] + params["b2"][None, :]) ** 2)


@pytest.fixture
def mlp_args():
    r = np.random.default_rng(1)
    params = {k: jnp.asarray(r.normal(size=s), dtype=jnp.float32)
              for k, s in [("W1", (3, 8)), ("b1", (8,)), ("W2", (8, 2)), ("b2", (2,))]}
    return params, jnp.asarray(r.normal(size=(5, 3)), dtype=jnp.float32)


def test_split_jaxprs_recompute_the_vjp(chain_args):
    # forward jaxpr -> (out, residuals); backward jaxpr (residuals, v) -> v^T J: their
    # composition must be the VJP, so the picture shows the program that really runs
    g = graph(chain, *chain_args)
    v = jnp.asarray([0.3, -1.2], dtype=jnp.float32)
    fwd = jcore.jaxpr_as_fun(g.jaxprs["forward"])(*chain_args)
    out, residuals = fwd[0], fwd[1:]
    (got,) = jcore.jaxpr_as_fun(g.jaxprs["backward"])(*residuals, v)
    np.testing.assert_allclose(out, chain(*chain_args), rtol=1e-6)
    np.testing.assert_allclose(got, fl.vjp(lambda x: chain(x, *chain_args[1:]), chain_args[0])[1](v)[0],
                               rtol=1e-6)


def test_residuals_are_the_leaves_of_vjp_fn(chain_args):
    g = graph(chain, *chain_args)
    leaves = jax.tree_util.tree_leaves(jax.vjp(lambda x: chain(x, *chain_args[1:]), chain_args[0])[1])
    s = g.summary
    assert s.residuals == len(leaves)
    assert s.residual_bytes == sum(leaf.nbytes for leaf in leaves)
    # the weights are stored (dL/dh = W^T g needs them): inputs kept by reference
    stored = [n for n in g.nodes if n.stored]
    assert {"W2", "W3"} <= {n.label for n in stored}
    assert s.stored_inputs == sum(n.kind == "input" for n in stored)
    assert len(stored) == s.residuals
    assert sum(n.nbytes for n in stored) == s.residual_bytes


def test_clusters_and_residual_edges(chain_args):
    g = graph(chain, *chain_args)
    by_id = {n.id: n for n in g.nodes}
    assert {n.cluster for n in g.nodes} == {"forward", "backward"}
    crossing = [e for e in g.edges if e.crossing]
    assert crossing
    for e in crossing:  # residual edges go from a stored forward value into the backward pass
        assert by_id[e.src].cluster == "forward" and by_id[e.src].stored
        assert by_id[e.dst].cluster == "backward"
    assert {n.id for n in g.nodes if n.stored} == {e.src for e in crossing}
    assert [n.label for n in g.nodes if n.kind == "grad"] == ["grad x"]
    assert [n.label for n in g.nodes if n.kind == "cotangent"] == ["cotangent v"]
    assert g.summary.forward_ops == sum(n.kind == "op" for n in g.nodes if n.cluster == "forward")
    assert g.summary.backward_ops == sum(n.kind == "op" for n in g.nodes if n.cluster == "backward")
    # primal ops: dot_general, tanh, dot_general, tanh, dot_general
    assert g.summary.primal_ops == 5
    assert g.summary.forward_ops >= g.summary.primal_ops


def test_forward_mode_stores_nothing(chain_args):
    g = graph(chain, *chain_args, mode="fwd")
    assert g.mode == "fwd" and g.summary.residuals == 0 and g.summary.residual_bytes == 0
    assert not any(n.stored for n in g.nodes)
    assert {n.cluster for n in g.nodes} == {"primal", "tangent"}
    assert [n.label for n in g.nodes if n.kind == "tangent"] == ["tangent u x", "J u"]
    # every tangent op reads a tangent value; every primal op reads none
    by_id = {n.id: n for n in g.nodes}
    for n in g.nodes:
        if n.kind == "op":
            srcs = [by_id[e.src] for e in g.edges if e.dst == n.id]
            assert any(s.cluster == "tangent" for s in srcs) == (n.cluster == "tangent")
    assert "forward mode" in str(g) and "nothing stored" in str(g)


def test_pytree_inputs_outputs_and_tuple_argnums(mlp_args):
    params, x = mlp_args
    g = graph(mlp, params, x)
    grads = [n.label for n in g.nodes if n.kind == "grad"]
    assert grads == ["grad params['W1']", "grad params['W2']", "grad params['b1']", "grad params['b2']"]
    g2 = graph(lambda p, x: {"loss": mlp(p, x), "mean": jnp.mean(x)}, params, x, argnums=(0, 1))
    assert [n.label for n in g2.nodes if n.kind == "output"] == ["out['loss']", "out['mean']"]
    assert [n.label for n in g2.nodes if n.kind == "cotangent"] == ["cotangent v['loss']", "cotangent v['mean']"]
    assert sum(n.kind == "grad" for n in g2.nodes) == 5
    # relu is a custom_jvp: one opaque node, named
    assert any(n.label == "custom_jvp_call(relu)" for n in g.nodes)


def test_jit_calls_are_inlined_and_loops_stay_one_node():
    g = graph(lambda x: jnp.linalg.norm(jnp.sin(x)), jnp.ones(3))
    assert not any(n.label in ("jit", "pjit") for n in g.nodes)
    assert any(n.label == "sqrt" for n in g.nodes)
    g2 = graph(lambda x: jax.lax.fori_loop(0, 3, lambda i, c: jnp.sin(c), x).sum(), jnp.ones(3))
    assert any(n.label.startswith(("scan", "while")) for n in g2.nodes)  # a loop: one box


def test_dot_text(chain_args):
    g = graph(chain, *chain_args)
    dot = g.to_dot()
    assert dot.startswith('digraph "computation graph" {') and dot.rstrip().endswith("}")
    assert dot.count("{") == dot.count("}")
    assert "subgraph cluster_forward" in dot and "subgraph cluster_backward" in dot
    assert len(re.findall(r"^  n\d+ -> n\d+", dot, flags=re.M)) == len(g.edges)
    assert dot.count('label="stored"') == sum(e.crossing for e in g.edges)
    for n in g.nodes:
        assert re.search(rf"^    {n.id} \[label=", dot, flags=re.M)
    assert dot.count("\\nstored") == g.summary.residuals


def _check_picture(path, fmt):
    data = Path(path).read_bytes()
    if fmt == "png":
        assert data.startswith(PNG_MAGIC)
        assert len(data) > 5000
    else:
        assert b"<svg" in data[:5000]


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_matplotlib_fallback(tmp_path, chain_args, fmt):
    g = graph(chain, *chain_args)
    path = g.render(tmp_path / f"g.{fmt}", engine="matplotlib")
    _check_picture(path, fmt)


def test_auto_engine_always_draws(tmp_path, mlp_args, monkeypatch):
    # without Graphviz on the PATH, "auto" falls back to matplotlib
    monkeypatch.setattr(shutil, "which", lambda name: None)
    g = graph(mlp, *mlp_args, mode="fwd")
    _check_picture(g.render(tmp_path / "sub" / "g.png"), "png")
    with pytest.raises(RuntimeError, match=r"render\(path, engine='dot'\): the Graphviz `dot` program"):
        g.render(tmp_path / "g.svg", engine="dot")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed")
@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_graphviz_engine(tmp_path, chain_args, fmt):
    g = graph(chain, *chain_args)
    _check_picture(g.render(tmp_path / f"g.{fmt}", engine="dot"), fmt)


def test_render_dot_file(tmp_path, chain_args):
    g = graph(chain, *chain_args)
    path = g.render(tmp_path / "g.dot")
    assert Path(path).read_text() == g.to_dot()


def test_max_nodes_collapses_but_counts_everything(tmp_path):
    def deep(x):
        for k in range(25):
            x = jnp.sin(x) * (1.0 + k)
        return jnp.sum(x)

    x = jnp.ones(3)
    full = graph(deep, x, max_nodes=10_000)
    small = graph(deep, x, max_nodes=20)
    assert len(small.nodes) <= 20 < len(full.nodes)
    assert small.summary == full.summary
    assert small.collapsed == len(full.nodes) - len(small.nodes)
    assert sum(n.count for n in small.nodes if n.kind in ("op", "collapsed")) == \
        full.summary.forward_ops + full.summary.backward_ops
    ids = {n.id for n in small.nodes}
    assert all(e.src in ids and e.dst in ids for e in small.edges)
    _check_picture(small.render(tmp_path / "small.png", engine="matplotlib"), "png")


def test_errors(tmp_path):
    f = lambda x: jnp.sum(x)  # noqa: E731
    with pytest.raises(ValueError, match=r"graph\(<lambda>\).*mode"):
        graph(f, jnp.ones(2), mode="backward")
    with pytest.raises(ValueError, match=r"graph\(<lambda>\): max_nodes must be an int >= 4"):
        graph(f, jnp.ones(2), max_nodes=2)
    with pytest.raises(TypeError, match=r"graph"):
        graph(3, jnp.ones(2))
    with pytest.raises((TypeError, ValueError), match=r"graph\(<lambda>\)"):
        graph(f, jnp.arange(3))  # integers cannot be differentiated
    g = graph(f, jnp.ones(2))
    with pytest.raises(ValueError, match=r"render\(path\): unsupported suffix 'jpg'"):
        g.render(tmp_path / "g.jpg")
    with pytest.raises(ValueError, match=r"engine"):
        g.render(tmp_path / "g.png", engine="tikz")
    assert isinstance(g, ComputationGraph)
