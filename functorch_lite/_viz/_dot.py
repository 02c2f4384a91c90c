"""The DOT renderer: a :class:`~functorch_lite._viz.ComputationGraph` as Graphviz text
(two clusters, residuals filled orange and labelled "stored", the residual edges dashed
from the forward into the backward cluster)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _style

if TYPE_CHECKING:  # pragma: no cover
    from ._model import ComputationGraph, Edge, Node

_SHAPES = {"collapsed": "box3d"}


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _node_attrs(n: Node) -> str:
    shape = _SHAPES.get(n.kind, "box")
    style = '"rounded,filled,bold"' if n.stored else '"rounded,filled"'
    label = _escape(_style.node_text(n)).replace("\n", "\\n")
    return f'label="{label}", fillcolor="{_style.node_color(n)}", shape={shape}, style={style}'


def _edge_attrs(e: Edge, mode: str) -> str:
    kind = _style.edge_kind(e, mode)
    if kind == "residual":
        s = _style.RESIDUAL_EDGE
        return (f' [color="{s["color"]}", style=dashed, penwidth=1.5, label="{s["label"]}", '
                f'fontcolor="{s["fontcolor"]}"]')
    if kind == "crossing":
        return f' [color="{_style.CROSSING_EDGE["color"]}", style=dotted]'
    return ""


def to_dot(g: ComputationGraph) -> str:
    """Graphviz DOT text of ``g``."""
    lines = ['digraph "computation graph" {', "  rankdir=LR;", "  compound=true;",
             f'  label="{_escape(_style.title(g))}\\n{_escape(str(g.summary))}";',
             '  labelloc="t"; fontname="Helvetica";',
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=9];']
    for k, cl in enumerate(g.clusters):
        lines.append(f"  subgraph cluster_{cl} {{")
        lines.append(f'    label="{_escape(_style.CLUSTER_TITLES[cl])}"; style="rounded,filled"; '
                     f'fillcolor="{_style.CLUSTER_FILLS[min(k, 1)]}"; '
                     f'color="{_style.CLUSTER_BORDER["dot"]}";')
        for n in g.nodes:
            if n.cluster == cl:
                lines.append(f"    {n.id} [{_node_attrs(n)}];")
        lines.append("  }")
    for e in g.edges:
        lines.append(f"  {e.src} -> {e.dst}{_edge_attrs(e, g.mode)};")
    lines.append("}")
    return "\n".join(lines) + "\n"
