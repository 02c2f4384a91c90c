"""Pictures of a function's computation graph: the forward ops, the backward ops reverse
mode adds, and the residuals it stores between them.

``graph(func, *args)`` reads only public JAX: ``jax.make_jaxpr`` of

- the forward function (``primal_ops``: what ``func`` alone costs);
- reverse mode, split in two like the tape of any reverse-mode system:
  (a) the forward pass, which computes the output *and the residuals* (the leaves of the
  ``vjp_fn`` that ``jax.vjp`` returns are exactly what it keeps for later), and
  (b) the backward pass, which maps (residuals, cotangent ``v``) to ``v^T J``;
- or, with ``mode="fwd"``, the JVP: primal and tangent ops interleaved, nothing stored.

Nodes are primitives with their output shapes, edges are data flow; the residuals are
the forward nodes whose values cross into the backward cluster (filled orange, "stored").
Calls to ``jit``-compiled helpers (``jnp.linalg.norm`` is one) are inlined; other
higher-order primitives (``custom_jvp_call``, ``while``, ``cond``, ``scan``) stay one node.

>>> import jax.numpy as jnp
>>> g = graph(lambda x: jnp.sum(jnp.tanh(x) ** 2), jnp.ones(3))
>>> g.summary.primal_ops, g.summary.residuals > 0
(3, True)
>>> graph(lambda x: jnp.sum(jnp.tanh(x) ** 2), jnp.ones(3), mode="fwd").summary.residuals
0
>>> print(g.to_dot().splitlines()[0])
digraph "computation graph" {

``g.render("graph.svg")`` draws it: with Graphviz's ``dot`` program when installed, else
with matplotlib (a layered layout), so a picture is always produced.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import math
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core as jcore
import numpy as np

from . import _args, _cost
from ._draw import CLUSTER_TITLES as _CLUSTER_TITLES, COLORS as _COLORS

__all__ = ["ComputationGraph", "Edge", "GraphSummary", "Node", "graph"]

_INLINE = ("jit", "pjit", "closed_call", "core_call")


@dataclasses.dataclass(frozen=True)
class Node:
    """One box of the picture.

    ``kind`` is ``input``, ``const``, ``op``, ``output``, ``cotangent`` (the ``v`` fed to
    the backward pass), ``grad`` (an input's cotangent ``v^T J``), ``tangent`` (a JVP's
    tangent input or output) or ``collapsed`` (several ops shown as one, see
    ``max_nodes``). ``stored`` marks a residual; ``nbytes`` is its size.
    """

    id: str
    kind: str
    label: str
    shape: str
    cluster: str
    stored: bool = False
    nbytes: int = 0
    count: int = 1


@dataclasses.dataclass(frozen=True)
class Edge:
    """Data flow ``src -> dst``; ``crossing`` when it joins the two clusters (a residual
    in reverse mode, a primal value used at once by a tangent op in forward mode)."""

    src: str
    dst: str
    crossing: bool = False


@dataclasses.dataclass(frozen=True)
class GraphSummary:
    """Counts read from the jaxprs (before any collapsing for the picture).

    ``primal_ops``: primitives of ``func`` alone. Reverse mode: ``forward_ops`` (the
    forward pass that also computes the residuals), ``backward_ops``, ``residuals`` and
    ``residual_bytes`` (what is kept between the passes), of which ``stored_inputs`` /
    ``stored_input_bytes`` are the inputs themselves (kept by reference, no new memory).
    Forward mode: ``forward_ops`` are the primal ops, ``backward_ops`` the tangent ops, and
    nothing is stored.
    """

    name: str
    mode: str
    primal_ops: int
    forward_ops: int
    backward_ops: int
    residuals: int
    residual_bytes: int
    stored_inputs: int
    stored_input_bytes: int

    def __str__(self) -> str:
        if self.mode == "fwd":
            return (f"graph({self.name}), forward mode (jvp): {self.primal_ops} primal ops; "
                    f"the JVP runs {self.forward_ops} primal + {self.backward_ops} tangent ops "
                    f"in one pass; nothing stored")
        extra = self.forward_ops - self.primal_ops
        kept = (f", of which {self.stored_inputs} input{'' if self.stored_inputs == 1 else 's'}: "
                f"{_cost.format_bytes(self.stored_input_bytes, sep=' ')}"
                if self.stored_inputs else "")
        return (f"graph({self.name}), reverse mode (vjp): {self.primal_ops} primal ops; "
                f"forward pass {self.forward_ops} ops ({extra:+d} for the backward's sake), "
                f"backward pass {self.backward_ops} ops; {self.residuals} "
                f"residual{'' if self.residuals == 1 else 's'} stored "
                f"({_cost.format_bytes(self.residual_bytes, sep=' ')}{kept})")


def _short_dtype(dtype: Any) -> str:
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return "bool"
    if dt.name == "bfloat16":
        return "bf16"
    return f"{dt.kind if dt.kind != 'c' else 'c'}{8 * dt.itemsize}"


def _aval_str(aval: Any) -> str:
    shape = getattr(aval, "shape", None)
    dtype = getattr(aval, "dtype", None)
    if shape is None or dtype is None:
        return str(aval)
    try:
        dt = _short_dtype(dtype)
    except TypeError:  # float0 and other extended dtypes
        dt = str(dtype)
    return f"{dt}[{','.join(map(str, shape))}]"


def _aval_bytes(aval: Any) -> int:
    try:
        return int(math.prod(aval.shape) * np.dtype(aval.dtype).itemsize)
    except TypeError:
        return 0


def _literal_str(lit: Any) -> str:
    val = np.asarray(lit.val)
    if val.ndim == 0:
        v = val.item()
        return f"{v:g}" if isinstance(v, float) else str(v)
    return f"const{_aval_str(lit.aval)}"


def _op_label(eqn: Any) -> str:
    name = eqn.primitive.name
    params = eqn.params
    if name == "integer_pow":
        return f"integer_pow y={params.get('y')}"
    if name.startswith("reduce_") and "axes" in params:
        return f"{name} axes={tuple(params['axes'])}"
    if name in ("custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr", "custom_lin"):
        sub = params.get("name")
        if sub is None:
            for key in ("call_jaxpr", "fun_jaxpr"):
                j = params.get(key)
                dbg = getattr(getattr(j, "jaxpr", j), "debug_info", None)
                sub = getattr(dbg, "func_name", None) if dbg is not None else None
                if sub:
                    break
        return f"{name}({sub})" if sub else name
    if name == "custom_lin":  # the JVP of a custom_vjp function: only its transpose can run
        return "custom_lin (custom_vjp: reverse only)"
    if name in ("while", "cond", "scan"):
        return f"{name} (not expanded)"
    if name == "convert_element_type":
        return f"convert {_short_dtype(params['new_dtype'])}" if "new_dtype" in params else name
    return name


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
            nid = self.add(kind, label, _aval_str(v.aval), cluster)
            if isinstance(src, str):
                self.edge(src, nid)

    def run(self, jaxpr: Any, consts: Sequence[Any], env: dict, cluster: str | Callable) -> list:
        """Add ``jaxpr``'s equations; ``env`` already maps its invars. Returns, per outvar,
        a node id or ``("lit", text)``."""
        for v in jaxpr.constvars[:len(consts)]:
            cl = cluster if isinstance(cluster, str) else "primal"
            env[v] = self.add("const", "const", _aval_str(v.aval), cl)
        for eqn in jaxpr.eqns:
            sources = [self.read(env, v) for v in eqn.invars]
            sub = eqn.params.get("jaxpr") if eqn.primitive.name in _INLINE else None
            if self.inline and sub is not None and hasattr(sub, "jaxpr"):
                inner = dict(zip(sub.jaxpr.invars, sources))
                outs = self.run(sub.jaxpr, sub.consts, inner, cluster)
                for v, o in zip(eqn.outvars, outs):
                    if not isinstance(v, jcore.DropVar):
                        env[v] = o
                continue
            node_srcs = [s for s in sources if isinstance(s, str)]
            lits = [s[1] for s in sources if not isinstance(s, str)]
            label = _op_label(eqn) + ("".join(f" {t}" for t in lits) if len(lits) <= 2 else " (consts)")
            if callable(cluster):
                cl = cluster(node_srcs)
            else:
                cl = cluster
            shape = ", ".join(_aval_str(v.aval) for v in eqn.outvars[:3]) + (
                ", ..." if len(eqn.outvars) > 3 else "")
            nid = self.add("op", label, shape, cl)
            self.ops[cl] += 1
            if cl == "tangent":
                self.tangent_nodes.add(nid)
            for s in dict.fromkeys(node_srcs):
                self.edge(s, nid)
            for v in eqn.outvars:
                if not isinstance(v, jcore.DropVar):
                    env[v] = nid
        return [self.read(env, v) for v in jaxpr.outvars]

    @staticmethod
    def read(env: dict, v: Any) -> Any:
        if isinstance(v, jcore.Literal):
            return ("lit", _literal_str(v))
        return env[v]


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


def _count_ops(jaxpr: Any, inline: bool) -> int:
    """Primitives of ``jaxpr``, counting inside jit calls (``inline``) and inside the
    primal function of custom_jvp / custom_vjp calls (what runs without differentiation)."""
    n = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        sub = eqn.params.get("jaxpr") if name in _INLINE else None
        if name in ("custom_jvp_call", "custom_vjp_call"):
            sub = eqn.params.get("call_jaxpr")
        if inline and sub is not None and hasattr(sub, "jaxpr"):
            n += _count_ops(sub.jaxpr, inline)
        else:
            n += 1
    return n


@dataclasses.dataclass
class ComputationGraph:
    """The graph of one function at given argument shapes; see :func:`graph`.

    Attributes:
      name, mode: the function's name and ``"rev"`` or ``"fwd"``.
      nodes, edges: what is drawn (after collapsing to ``max_nodes``).
      summary: :class:`GraphSummary` of the full graph.
      jaxprs: the ``ClosedJaxpr`` s it was read from: ``primal`` and ``forward`` +
        ``backward`` (reverse mode) or ``jvp`` (forward mode).

    >>> import jax.numpy as jnp
    >>> g = graph(lambda x: jnp.sin(x) * 2.0, jnp.ones(3))
    >>> isinstance(g, ComputationGraph), g.mode
    (True, 'rev')
    """

    name: str
    mode: str
    nodes: list[Node]
    edges: list[Edge]
    summary: GraphSummary
    jaxprs: dict[str, Any]
    collapsed: int = 0

    def __str__(self) -> str:
        return str(self.summary)

    @property
    def clusters(self) -> tuple[str, str]:
        return ("forward", "backward") if self.mode == "rev" else ("primal", "tangent")

    def _title(self) -> str:
        kind = "reverse mode (vjp)" if self.mode == "rev" else "forward mode (jvp)"
        return f"{self.name}: computation graph, {kind}"

    def to_dot(self) -> str:
        """Graphviz DOT text: two clusters, residuals filled orange and labelled
        "stored", the residual edges dashed from the forward into the backward cluster."""
        lines = ['digraph "computation graph" {', "  rankdir=LR;", "  compound=true;",
                 f'  label="{_dot_escape(self._title())}\\n{_dot_escape(str(self.summary))}";',
                 '  labelloc="t"; fontname="Helvetica";',
                 '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
                 '  edge [fontname="Helvetica", fontsize=9];']
        for k, cl in enumerate(self.clusters):
            lines.append(f"  subgraph cluster_{cl} {{")
            lines.append(f'    label="{_dot_escape(_CLUSTER_TITLES[cl])}"; style="rounded,filled"; '
                         f'fillcolor="{"#f7f9fc" if k == 0 else "#fbf7f0"}"; color="#999999";')
            for n in self.nodes:
                if n.cluster == cl:
                    lines.append(f"    {n.id} [{_dot_node_attrs(n)}];")
            lines.append("  }")
        for e in self.edges:
            if e.crossing and self.mode == "rev":
                attrs = ' [color="#e69138", style=dashed, penwidth=1.5, label="stored", fontcolor="#b45f06"]'
            elif e.crossing:
                attrs = ' [color="#999999", style=dotted]'
            else:
                attrs = ""
            lines.append(f"  {e.src} -> {e.dst}{attrs};")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def render(self, path: str | os.PathLike, *, engine: str = "auto", dpi: int = 110) -> str:
        """Write the picture to ``path`` and return it.

        The format comes from the suffix: ``.dot`` (the DOT text), ``.svg``, ``.png`` or
        ``.pdf``. ``engine="auto"`` uses Graphviz's ``dot`` program when it is on the
        PATH, else matplotlib (needs the ``plot`` extra); ``"dot"`` or ``"matplotlib"``
        force one.
        """
        path = os.fspath(path)
        fmt = os.path.splitext(path)[1].lower().lstrip(".")
        if fmt not in ("dot", "gv", "svg", "png", "pdf"):
            raise ValueError(f"ComputationGraph.render(path): unsupported suffix {fmt!r} in "
                             f"{path!r}; use .svg, .png, .pdf or .dot.")
        _args.check_choice(engine, ("auto", "dot", "matplotlib"), "ComputationGraph.render", "engine")
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        if fmt in ("dot", "gv"):
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(self.to_dot())
            return path
        dot = shutil.which("dot")
        if engine == "dot" and dot is None:
            raise RuntimeError("ComputationGraph.render(path, engine='dot'): the Graphviz `dot` "
                               "program is not on the PATH; install graphviz or use "
                               "engine='auto' for the matplotlib fallback.")
        if dot is not None and engine in ("auto", "dot"):
            subprocess.run([dot, f"-T{fmt}", f"-Gdpi={dpi}", "-o", path], input=self.to_dot(),
                           text=True, check=True, capture_output=True)
            return path
        from ._draw import draw_matplotlib

        draw_matplotlib(self, path, fmt, dpi)
        return path


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _node_text(n: Node) -> str:
    text = n.label if not n.shape else f"{n.label}\n{n.shape}"
    if n.stored:
        text += "\nstored"
    return text


def _dot_node_attrs(n: Node) -> str:
    color = _COLORS["stored"] if n.stored else _COLORS.get(n.kind, "#ffffff")
    shape = {"input": "box", "const": "box", "output": "box", "cotangent": "box", "grad": "box",
             "tangent": "box", "collapsed": "box3d"}.get(n.kind, "box")
    style = '"rounded,filled,bold"' if n.stored else '"rounded,filled"'
    label = _dot_escape(_node_text(n)).replace("\n", "\\n")
    return f'label="{label}", fillcolor="{color}", shape={shape}, style={style}'


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
    where = f"graph({_args.func_name(func)})"
    _args.check_callable(func, where)
    mode = _args.check_choice(mode, ("rev", "fwd"), where, "mode")
    if not isinstance(max_nodes, int) or isinstance(max_nodes, bool) or max_nodes < 4:
        raise ValueError(f"{where}: max_nodes must be an int >= 4, got {max_nodes!r}.")
    positions = _args.differentiable_positions(args, argnums, where)   # also checks argnums
    args = tuple(args)
    name = _args.func_name(func)
    argnames = _arg_names(func, len(args))

    def call_with(all_args, diff):
        return func(*_args.replace_args(all_args, positions, diff))

    primal = jax.make_jaxpr(func)(*args)
    primal_ops = _count_ops(primal.jaxpr, inline)

    b = _Builder(inline)
    in_env: dict = {}
    arg_leaves_names = [nm for i, a in enumerate(args) for nm in _leaf_names(argnames[i], a)]
    diff_names = [nm for p in positions for nm in _leaf_names(argnames[p], args[p])]

    if mode == "rev":
        box: dict = {}

        def forward(*all_args):
            out, vjp_fn = jax.vjp(lambda *d: call_with(all_args, d), *[all_args[p] for p in positions])
            leaves, box["treedef"] = jax.tree_util.tree_flatten(vjp_fn)
            return out, leaves

        fwd_jaxpr, (out_shape, res_shapes) = jax.make_jaxpr(forward, return_shape=True)(*args)
        _args.check_inexact_output(out_shape, where)

        def backward(residuals, cotangent):
            return jax.tree_util.tree_unflatten(box["treedef"], residuals)(cotangent)

        bwd_jaxpr = jax.make_jaxpr(backward)(res_shapes, out_shape)
        jf, jb = fwd_jaxpr.jaxpr, bwd_jaxpr.jaxpr
        input_ids = []
        for v, nm in zip(jf.invars, arg_leaves_names):
            input_ids.append(b.add("input", nm, _aval_str(v.aval), "forward"))
            in_env[v] = input_ids[-1]
        outs = b.run(jf, fwd_jaxpr.consts, in_env, "forward")
        n_out = len(jax.tree_util.tree_leaves(out_shape))
        b.sinks(outs[:n_out], jf.outvars[:n_out], _leaf_names("out", out_shape), "output", "forward")
        # residuals: the forward values the backward pass reads
        res_srcs, seen, res_bytes, stored_inputs, stored_input_bytes = [], set(), 0, 0, 0
        for src, v in zip(outs[n_out:], jf.outvars[n_out:]):
            if not isinstance(src, str):
                src = b.add("const", f"const {src[1]}", _aval_str(v.aval), "forward")
            res_srcs.append(src)
            if src in seen:
                continue
            seen.add(src)
            nbytes = _aval_bytes(v.aval)
            res_bytes += nbytes
            if b.nodes[src].kind == "input":
                stored_inputs += 1
                stored_input_bytes += nbytes
            b.nodes[src] = dataclasses.replace(b.nodes[src], stored=True, nbytes=nbytes)
        n_res = len(res_srcs)
        bwd_env: dict = dict(zip(jb.invars[:n_res], res_srcs))
        ct_names = _leaf_names("v", out_shape)
        for v, nm in zip(jb.invars[n_res:], ct_names):
            bwd_env[v] = b.add("cotangent", f"cotangent {nm}", _aval_str(v.aval), "backward")
        grads = b.run(jb, bwd_jaxpr.consts, bwd_env, "backward")
        b.sinks(grads, jb.outvars, [f"grad {nm}" for nm in diff_names], "grad", "backward")
        summary = GraphSummary(name, "rev", primal_ops, b.ops["forward"], b.ops["backward"],
                               len(seen), res_bytes, stored_inputs, stored_input_bytes)
        jaxprs = {"primal": primal, "forward": fwd_jaxpr, "backward": bwd_jaxpr}
    else:
        from .transforms import jvp as _jvp

        def tangent_run(all_args, tangents):
            return _jvp(lambda *d: call_with(all_args, d), tuple(all_args[p] for p in positions),
                        tuple(tangents))

        tangents = tuple(jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(np.shape(a), _args.tangent_dtype(jax.numpy.result_type(a))),
            args[p]) for p in positions)
        jvp_jaxpr, (out_shape, _) = jax.make_jaxpr(tangent_run, return_shape=True)(args, tangents)
        jj = jvp_jaxpr.jaxpr
        n_args = len(arg_leaves_names)
        for v, nm in zip(jj.invars[:n_args], arg_leaves_names):
            in_env[v] = b.add("input", nm, _aval_str(v.aval), "primal")
        for v, nm in zip(jj.invars[n_args:], diff_names):
            in_env[v] = b.add("tangent", f"tangent u {nm}", _aval_str(v.aval), "tangent")
            b.tangent_nodes.add(in_env[v])

        def classify(srcs: list[str]) -> str:
            return "tangent" if any(s in b.tangent_nodes for s in srcs) else "primal"

        outs = b.run(jj, jvp_jaxpr.consts, in_env, classify)
        n_out = len(jax.tree_util.tree_leaves(out_shape))
        b.sinks(outs[:n_out], jj.outvars[:n_out], _leaf_names("out", out_shape), "output", "primal")
        b.sinks(outs[n_out:], jj.outvars[n_out:], _leaf_names("J u", out_shape), "tangent", "tangent")
        summary = GraphSummary(name, "fwd", primal_ops, b.ops["primal"], b.ops["tangent"], 0, 0, 0, 0)
        jaxprs = {"primal": primal, "jvp": jvp_jaxpr}

    nodes, edges, collapsed = _limit(list(b.nodes.values()), _dedupe(b.edges), max_nodes)
    cluster_of = {n.id: n.cluster for n in nodes}
    edges = [dataclasses.replace(e, crossing=cluster_of[e.src] != cluster_of[e.dst]) for e in edges]
    return ComputationGraph(name, mode, nodes, edges, summary, jaxprs, collapsed)


def _dedupe(edges: list[Edge]) -> list[Edge]:
    return [e for e in dict.fromkeys(edges) if e.src != e.dst]


def _limit(nodes: list[Node], edges: list[Edge], max_nodes: int) -> tuple[list[Node], list[Edge], int]:
    """Collapse the graph to at most ``max_nodes`` nodes (see :func:`graph`). Returns the
    nodes, the edges and how many op nodes were folded away."""
    if len(nodes) <= max_nodes:
        return nodes, edges, 0
    before = len(nodes)
    # 1. chains: an op whose only consumer is an op whose only producer it is
    while len(nodes) > max_nodes:
        by_id = {n.id: n for n in nodes}
        outs, ins = collections.defaultdict(list), collections.defaultdict(list)
        for e in edges:
            outs[e.src].append(e.dst)
            ins[e.dst].append(e.src)
        merged = False
        for n in nodes:
            if n.kind not in ("op", "collapsed") or len(outs[n.id]) != 1:
                continue
            m = by_id[outs[n.id][0]]
            if m.kind not in ("op", "collapsed") or ins[m.id] != [n.id] or m.cluster != n.cluster:
                continue
            first = n.label.split(" → ")[0].split(" … ")[0]
            last = m.label.split(" → ")[-1].split(" … ")[-1]
            count = n.count + m.count
            label = f"{first} → {last}" if count == 2 else f"{first} … {last}"
            new = Node(n.id, "collapsed", label, f"{count} ops · {m.shape}", n.cluster,
                       stored=m.stored, nbytes=m.nbytes, count=count)
            nodes = [new if x.id == n.id else x for x in nodes if x.id != m.id]
            edges = _dedupe([Edge(n.id if e.src == m.id else e.src, e.dst, e.crossing)
                             for e in edges if not (e.src == n.id and e.dst == m.id)])
            merged = True
            break
        if not merged:
            break
    # 2. keep the first ops of each cluster (jaxpr order is topological) and fold the
    #    rest, with the constants only they read, into one box per cluster: no cycle
    per = max_nodes
    while len(nodes) > max_nodes and per > 1:
        fixed = sum(n.kind not in ("op", "collapsed", "const") for n in nodes)
        clusters = list(dict.fromkeys(n.cluster for n in nodes if n.kind in ("op", "collapsed")))
        per = min(per - 1, max(1, (max_nodes - fixed) // max(1, len(clusters)) - 1))
        trial_nodes, trial_edges = _truncate(nodes, edges, per)
        if len(trial_nodes) <= max_nodes or per == 1:
            nodes, edges = trial_nodes, trial_edges
    folded = before - len(nodes)
    return nodes, edges, folded


def _truncate(nodes: list[Node], edges: list[Edge], per: int) -> tuple[list[Node], list[Edge]]:
    """Keep ``per`` op boxes per cluster; the later ops, and the constants that feed no
    kept node of their cluster, become one "... N more ops" box per cluster."""
    cluster_of = {n.id: n.cluster for n in nodes}
    consumers = collections.defaultdict(set)
    for e in edges:
        consumers[e.src].add(e.dst)
    drop: dict[str, str] = {}
    extra: list[Node] = []
    for cl in dict.fromkeys(n.cluster for n in nodes):
        ops = [n for n in nodes if n.cluster == cl and n.kind in ("op", "collapsed")]
        rest = ops[per:]
        if not rest:
            continue
        kept = {n.id for n in nodes if n.cluster == cl} - {n.id for n in rest}
        consts = [n for n in nodes if n.cluster == cl and n.kind == "const"
                  and not any(d in kept and cluster_of[d] == cl for d in consumers[n.id])]
        kept -= {n.id for n in consts}
        folded = rest + consts
        hidden = sum(n.count for n in rest)
        stored = [n for n in folded if n.stored]
        box = Node(f"{cl}_more", "collapsed", f"… {hidden} more ops",
                   f"incl. {len(stored)} residuals" if stored else "", cl, stored=bool(stored),
                   nbytes=sum(n.nbytes for n in stored), count=hidden)
        extra.append(box)
        for n in folded:
            drop[n.id] = box.id
    nodes = [n for n in nodes if n.id not in drop] + extra
    edges = _dedupe([Edge(drop.get(e.src, e.src), drop.get(e.dst, e.dst), e.crossing) for e in edges])
    return nodes, edges
