"""The graph builder: jaxprs of ``func`` and of its derivative turned into the nodes and
edges of a :class:`~functorch_lite._viz.ComputationGraph` (what is read from each
equation comes from :mod:`functorch_lite._jaxpr.graph`)."""

from __future__ import annotations

import collections
import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from .. import _args
from .._jaxpr import graph as jg
from ._collapse import dedupe, limit
from ._model import ComputationGraph, Edge, GraphSummary, Node

__all__ = ["graph"]


class _Builder:
    """Turns jaxprs into nodes and edges. ``env`` maps a jaxpr Var to the id of the node
    that produced it (or to a literal's text)."""

    def __init__(self, inline: bool):
        self.inline = inline
        self.nodes: dict[str, Node] = {}
        self.edges: list[Edge] = []
        self.ops = collections.Counter()  # per cluster, before collapsing
        self.tangent_nodes: set[str] = set()  # nodes that depend on a tangent input (fwd mode)

    def add(self, kind: str, label: str, shape: str, cluster: str, **kw: Any) -> str:
        nid = f"n{len(self.nodes)}"
        self.nodes[nid] = Node(nid, kind, label, shape, cluster, **kw)
        return nid

    def edge(self, src: str, dst: str) -> None:
        self.edges.append(Edge(src, dst))

    def sinks(self, srcs: Sequence[Any], outvars: Sequence[Any], labels: Sequence[str],
              kind: str, cluster: str) -> None:
        """One ``kind`` node per outvar (an output, a gradient, a tangent), fed by the node
        that computed it (no edge from a literal)."""
        for src, v, label in zip(srcs, outvars, labels):
            nid = self.add(kind, label, jg.aval_str(v.aval), cluster)
            if isinstance(src, str):
                self.edge(src, nid)

    def run(self, jaxpr: Any, consts: Sequence[Any], env: dict, cluster: str | Callable) -> list:
        """Add ``jaxpr``'s equations; ``env`` already maps its invars. Returns, per outvar,
        a node id or ``("lit", text)``."""
        for v in jaxpr.constvars[:len(consts)]:
            cl = cluster if isinstance(cluster, str) else "primal"
            env[v] = self.add("const", "const", jg.aval_str(v.aval), cl)
        for eqn in jaxpr.eqns:
            sources = [jg.read(env, v) for v in eqn.invars]
            sub = jg.inlined_call(eqn) if self.inline else None
            if sub is not None:
                outs = self.run(sub.jaxpr, sub.consts, dict(zip(sub.jaxpr.invars, sources)), cluster)
            else:
                nid = self.op(eqn, sources, cluster)
                outs = [nid] * len(eqn.outvars)
            for v, o in zip(eqn.outvars, outs):
                if not jg.is_dropped(v):
                    env[v] = o
        return [jg.read(env, v) for v in jaxpr.outvars]

    def op(self, eqn: Any, sources: list, cluster: str | Callable) -> str:
        """One op node for ``eqn`` (literal operands written into its label)."""
        node_srcs = [s for s in sources if isinstance(s, str)]
        lits = [s[1] for s in sources if not isinstance(s, str)]
        label = jg.op_label(eqn) + ("".join(f" {t}" for t in lits) if len(lits) <= 2 else " (consts)")
        cl = cluster(node_srcs) if callable(cluster) else cluster
        shape = ", ".join(jg.aval_str(v.aval) for v in eqn.outvars[:3]) + (
            ", ..." if len(eqn.outvars) > 3 else "")
        nid = self.add("op", label, shape, cl)
        self.ops[cl] += 1
        if cl == "tangent":
            self.tangent_nodes.add(nid)
        for s in dict.fromkeys(node_srcs):
            self.edge(s, nid)
        return nid

def _arg_names(func: Callable, nargs: int) -> list[str]:
    names = [f"args[{i}]" for i in range(nargs)]
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return names
    for i, p in enumerate(params[:nargs]):
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names[i] = p.name
        else:
            break
    return names


def _leaf_names(prefix: str, tree: Any) -> list[str]:
    paths, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [prefix + jax.tree_util.keystr(p) for p, _ in paths]



@dataclasses.dataclass(frozen=True)
class _Call:
    """The call being drawn: the function, its arguments, which are differentiated, and
    the names of every argument leaf (``x``, ``params['W1']``) and differentiated leaf."""

    func: Callable
    args: tuple
    positions: tuple[int, ...]
    arg_names: list[str]
    diff_names: list[str]
    where: str

    def closed(self, all_args: tuple) -> Callable:
        """``(*diff) -> func(*all_args with the differentiated ones replaced)``."""
        call = _args.closed_over(self.func, all_args, self.positions)
        return lambda *diff: call(diff)

    def diff(self, all_args: tuple) -> tuple:
        return tuple(all_args[p] for p in self.positions)


def graph(func: Callable, *args: Any, argnums: _args.Argnums = 0, mode: str = "rev",
          max_nodes: int = 60, inline: bool = True) -> ComputationGraph:
    """The computation graph of ``func(*args)`` and of its derivative, for a picture.

    ``mode="rev"`` (default): the forward pass of ``jax.vjp`` (output and residuals) and
    the backward pass from (residuals, cotangent) to the input cotangents, as two
    clusters joined by the residual edges. ``mode="fwd"``: the JVP, primal and tangent
    ops, nothing stored. Differentiates ``args[argnums]`` (an int or tuple; pytrees
    welcome); the other arguments are inputs that are not differentiated.

    Graphs with more than ``max_nodes`` nodes are shown with chains of ops collapsed
    into one box, then, if still too big, with the rest of each cluster as one box
    ("... N more ops"); ``summary`` always counts the full graph.

    >>> import jax.numpy as jnp
    >>> g = graph(lambda x, W: jnp.tanh(x @ W), jnp.ones((2, 3)), jnp.ones((3, 4)))
    >>> "W" in [n.label for n in g.nodes if n.stored]   # dL/dx = dL/dy W^T needs W
    True
    >>> [n.label for n in g.nodes if n.kind == "grad"]
    ['grad x']
    """
    name = _args.func_name(func)
    where = f"graph({name})"
    _args.check_callable(func, where)
    mode = _args.check_choice(mode, ("rev", "fwd"), where, "mode")
    if not isinstance(max_nodes, int) or isinstance(max_nodes, bool) or max_nodes < 4:
        raise ValueError(f"{where}: max_nodes must be an int >= 4, got {max_nodes!r}.")
    positions = _args.differentiable_positions(args, argnums, where)   # also checks argnums
    args = tuple(args)
    argnames = _arg_names(func, len(args))
    call = _Call(func, args, positions,
                 [nm for i, a in enumerate(args) for nm in _leaf_names(argnames[i], a)],
                 [nm for p in positions for nm in _leaf_names(argnames[p], args[p])], where)
    primal = jax.make_jaxpr(func)(*args)
    b = _Builder(inline)
    counts, jaxprs = (_reverse if mode == "rev" else _forward)(b, call)
    summary = GraphSummary(name, mode, jg.count_ops(primal.jaxpr, inline), *counts)
    nodes, edges, collapsed = limit(list(b.nodes.values()), dedupe(b.edges), max_nodes)
    cluster_of = {n.id: n.cluster for n in nodes}
    edges = [dataclasses.replace(e, crossing=cluster_of[e.src] != cluster_of[e.dst]) for e in edges]
    return ComputationGraph(name, mode, nodes, edges, summary, {"primal": primal, **jaxprs}, collapsed)


def _reverse(b: _Builder, call: _Call) -> tuple[tuple, dict]:
    """Reverse mode: the forward pass of ``jax.vjp`` (the output and the residuals, the
    leaves of ``vjp_fn``) and the backward pass (residuals, cotangent) -> ``v^T J``.
    Returns the summary's counts and the two jaxprs."""
    def forward(*all_args):
        return jax.vjp(call.closed(all_args), *call.diff(all_args))   # (out, vjp_fn)

    fwd_jaxpr, (out_shape, vjp_shape) = jax.make_jaxpr(forward, return_shape=True)(*call.args)
    _args.check_inexact_output(out_shape, call.where)
    res_shapes, vjp_tree = jax.tree_util.tree_flatten(vjp_shape)

    def backward(residuals, cotangent):
        return jax.tree_util.tree_unflatten(vjp_tree, residuals)(cotangent)

    bwd_jaxpr = jax.make_jaxpr(backward)(res_shapes, out_shape)
    jf, jb = fwd_jaxpr.jaxpr, bwd_jaxpr.jaxpr
    in_env = {v: b.add("input", nm, jg.aval_str(v.aval), "forward")
              for v, nm in zip(jf.invars, call.arg_names)}
    outs = b.run(jf, fwd_jaxpr.consts, in_env, "forward")
    n_out = len(jax.tree_util.tree_leaves(out_shape))
    b.sinks(outs[:n_out], jf.outvars[:n_out], _leaf_names("out", out_shape), "output", "forward")
    res_srcs, stored = _mark_residuals(b, outs[n_out:], jf.outvars[n_out:])
    bwd_env: dict = dict(zip(jb.invars[:len(res_srcs)], res_srcs))
    for v, nm in zip(jb.invars[len(res_srcs):], _leaf_names("v", out_shape)):
        bwd_env[v] = b.add("cotangent", f"cotangent {nm}", jg.aval_str(v.aval), "backward")
    grads = b.run(jb, bwd_jaxpr.consts, bwd_env, "backward")
    b.sinks(grads, jb.outvars, [f"grad {nm}" for nm in call.diff_names], "grad", "backward")
    return (b.ops["forward"], b.ops["backward"], *stored), {"forward": fwd_jaxpr, "backward": bwd_jaxpr}


def _mark_residuals(b: _Builder, srcs: list, outvars: list) -> tuple[list[str], tuple]:
    """Mark the forward values the backward pass reads as stored (a literal residual
    gets a const node). Returns their node ids and (residuals, bytes, of which inputs,
    their bytes)."""
    res_srcs, seen, res_bytes, stored_inputs, stored_input_bytes = [], set(), 0, 0, 0
    for src, v in zip(srcs, outvars):
        if not isinstance(src, str):
            src = b.add("const", f"const {src[1]}", jg.aval_str(v.aval), "forward")
        res_srcs.append(src)
        if src in seen:
            continue
        seen.add(src)
        nbytes = jg.aval_bytes(v.aval)
        res_bytes += nbytes
        if b.nodes[src].kind == "input":
            stored_inputs += 1
            stored_input_bytes += nbytes
        b.nodes[src] = dataclasses.replace(b.nodes[src], stored=True, nbytes=nbytes)
    return res_srcs, (len(seen), res_bytes, stored_inputs, stored_input_bytes)


def _forward(b: _Builder, call: _Call) -> tuple[tuple, dict]:
    """Forward mode: the JVP, primal and tangent ops interleaved, nothing stored."""
    from .._transforms import jvp

    def tangent_run(all_args, tangents):
        return jvp(call.closed(all_args), call.diff(all_args), tuple(tangents))

    tangents = tuple(jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a), _args.tangent_dtype(jax.numpy.result_type(a))),
        call.args[p]) for p in call.positions)
    jvp_jaxpr, (out_shape, _) = jax.make_jaxpr(tangent_run, return_shape=True)(call.args, tangents)
    jj = jvp_jaxpr.jaxpr
    n_args = len(call.arg_names)
    in_env: dict = {}
    for v, nm in zip(jj.invars[:n_args], call.arg_names):
        in_env[v] = b.add("input", nm, jg.aval_str(v.aval), "primal")
    for v, nm in zip(jj.invars[n_args:], call.diff_names):
        in_env[v] = b.add("tangent", f"tangent u {nm}", jg.aval_str(v.aval), "tangent")
        b.tangent_nodes.add(in_env[v])

    def classify(srcs: list[str]) -> str:
        return "tangent" if any(s in b.tangent_nodes for s in srcs) else "primal"

    outs = b.run(jj, jvp_jaxpr.consts, in_env, classify)
    n_out = len(jax.tree_util.tree_leaves(out_shape))
    b.sinks(outs[:n_out], jj.outvars[:n_out], _leaf_names("out", out_shape), "output", "primal")
    b.sinks(outs[n_out:], jj.outvars[n_out:], _leaf_names("J u", out_shape), "tangent", "tangent")
    return (b.ops["primal"], b.ops["tangent"], 0, 0, 0, 0), {"jvp": jvp_jaxpr}
