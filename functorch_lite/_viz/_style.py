"""How a :class:`~functorch_lite._viz.ComputationGraph` looks, for both renderers (DOT
and matplotlib): the title, the colours of nodes, clusters and edges, the cluster
titles and the text in each box.

>>> from functorch_lite._viz._model import Node
>>> node_text(Node("n0", "op", "sin", "f32[3]", "forward", stored=True))
'sin\\nf32[3]\\nstored'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ._model import ComputationGraph, Edge, Node

COLORS = {
    "input": "#d9ead3", "const": "#eeeeee", "op": "#ffffff", "output": "#cfe2f3",
    "cotangent": "#fff2cc", "grad": "#d9d2e9", "collapsed": "#f3f3f3", "stored": "#f6b26b",
    "tangent": "#fff2cc",
}
CLUSTER_TITLES = {
    "forward": "forward pass (computes the output and the residuals)",
    "backward": "backward pass (residuals, cotangent v -> v^T J)",
    "primal": "primal ops",
    "tangent": "tangent ops (J u, computed alongside; nothing stored)",
}
# the first and the second cluster's background, and the clusters' border
CLUSTER_FILLS = ("#f7f9fc", "#fbf7f0")
CLUSTER_BORDER = {"dot": "#999999", "matplotlib": "#aaaaaa"}
# edges: a residual (reverse mode), a primal value a tangent op reads (forward mode)
RESIDUAL_EDGE = {"color": "#e69138", "label": "stored", "fontcolor": "#b45f06"}
CROSSING_EDGE = {"color": "#999999"}
PLAIN_EDGE = {"color": "#444444"}
STORED_BORDER, BORDER = "#b45f06", "#555555"


def title(g: ComputationGraph) -> str:
    """``"f: computation graph, reverse mode (vjp)"``."""
    kind = "reverse mode (vjp)" if g.mode == "rev" else "forward mode (jvp)"
    return f"{g.name}: computation graph, {kind}"


def node_color(n: Node) -> str:
    """A residual is orange; otherwise the colour of the node's kind."""
    return COLORS["stored"] if n.stored else COLORS.get(n.kind, "#ffffff")


def edge_kind(e: Edge, mode: str) -> str:
    """``"residual"`` (reverse mode, across the clusters), ``"crossing"`` (forward mode,
    across) or ``"plain"``."""
    if not e.crossing:
        return "plain"
    return "residual" if mode == "rev" else "crossing"


def _clip(text: str, width: int | None) -> str:
    return text if width is None or len(text) <= width else text[:width - 2] + "…"


def node_text(n: Node, label_width: int | None = None, shape_width: int | None = None) -> str:
    """The label, the shape and "stored" for a residual, one per line; the label and
    the shape cut to ``label_width``/``shape_width`` characters when given."""
    shape = _clip(n.shape, shape_width)
    text = _clip(n.label, label_width) + (f"\n{shape}" if shape else "")
    return text + ("\nstored" if n.stored else "")
