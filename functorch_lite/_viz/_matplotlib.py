"""The matplotlib renderer of a :class:`functorch_lite._viz.ComputationGraph`, for when
Graphviz's ``dot`` program is not installed: a layered layout (x = topological depth,
y = slot in the layer, ordered by the predecessors' mean slot), boxes and arrows in the
colours of :mod:`._style`. matplotlib is imported only when drawing, on the Agg canvas
(no display).
"""

from __future__ import annotations

import collections
import textwrap
from typing import TYPE_CHECKING

from . import _style

if TYPE_CHECKING:  # pragma: no cover
    from ._model import ComputationGraph

def _layout(g: ComputationGraph) -> dict[str, tuple[float, float]]:
    """Layered layout: x = topological depth (longest path), y = slot within the layer,
    ordered by the mean slot of the predecessors. Reverse mode draws the backward pass
    right to left under the forward pass, so each gradient ends under its input."""
    by_id = {n.id: n for n in g.nodes}
    first, second = g.clusters
    preds = collections.defaultdict(list)
    for e in g.edges:
        if g.mode == "rev" and e.crossing:
            continue  # residual edges do not order the layers
        preds[e.dst].append(e.src)
    depth: dict[str, int] = {}

    order = _toposort([n.id for n in g.nodes], preds)
    for nid in order:
        depth[nid] = 1 + max((depth.get(p, 0) for p in preds[nid]), default=-1)
    if g.mode == "rev":
        dmax = max([depth[n.id] for n in g.nodes], default=0)
        for n in g.nodes:
            if n.cluster == second:
                depth[n.id] = dmax - depth[n.id]
    layers: dict[tuple[str, int], list[str]] = collections.defaultdict(list)
    for nid in order:
        layers[(by_id[nid].cluster, depth[nid])].append(nid)
    slot: dict[str, float] = {}
    for key in sorted(layers, key=lambda k: (k[0] != first, k[1] if g.mode == "fwd" or k[0] == first else -k[1])):
        ids = layers[key]
        first_seen = {nid: float(i) for i, nid in enumerate(ids)}

        def bary(nid: str) -> float:
            ps = [slot[p] for p in preds[nid] if p in slot]
            return sum(ps) / len(ps) if ps else first_seen[nid]

        ids.sort(key=bary)
        for i, nid in enumerate(ids):
            slot[nid] = float(i)
    height = {cl: max([len(v) for k, v in layers.items() if k[0] == cl], default=0) for cl in (first, second)}
    pos = {}
    for (cl, d), ids in layers.items():
        off = (len(ids) - 1) / 2.0
        for i, nid in enumerate(ids):
            y = -(i - off)
            if cl == first:
                y += (height[second] + 1) / 2.0 + height[first] / 2.0 + 0.6
            pos[nid] = (d * 2.0, y * 1.0)
    return pos


def _toposort(ids: list[str], preds: dict[str, list[str]]) -> list[str]:
    succ = collections.defaultdict(list)
    indeg = {i: 0 for i in ids}
    for d, ps in preds.items():
        for p in ps:
            if p in indeg and d in indeg:
                succ[p].append(d)
                indeg[d] += 1
    queue = collections.deque(i for i in ids if indeg[i] == 0)
    out = []
    while queue:
        i = queue.popleft()
        out.append(i)
        for d in succ[i]:
            indeg[d] -= 1
            if indeg[d] == 0:
                queue.append(d)
    out.extend(i for i in ids if i not in set(out))  # cycles cannot happen; be safe
    return out


_W, _H = 1.7, 0.78  # a box's width and height, in layout units


def _import():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("ComputationGraph.render needs Graphviz's `dot` program or matplotlib "
                          "(pip install 'functorch-lite[plot]').") from exc
    return FigureCanvasAgg, Figure, FancyArrowPatch, FancyBboxPatch


def draw(g: ComputationGraph, path: str, fmt: str, dpi: int) -> None:
    """Draw ``g`` to ``path`` in format ``fmt`` (png, svg, pdf)."""
    FigureCanvasAgg, Figure, FancyArrowPatch, FancyBboxPatch = _import()
    pos = _layout(g)
    xs = [p[0] for p in pos.values()] or [0.0]
    ys = [p[1] for p in pos.values()] or [0.0]
    x0, x1 = min(xs) - 1.3, max(xs) + 1.3
    y0, y1 = min(ys) - 1.0, max(ys) + 1.3
    fig_w = max(6.0, 0.78 * (x1 - x0))
    summary = textwrap.fill(str(g.summary), width=max(60, int(fig_w * 15)))
    head = 0.45 + 0.16 * (summary.count("\n") + 1)  # inches above the drawing
    fig_h = max(3.5, 0.72 * (y1 - y0)) + head
    fig = Figure(figsize=(fig_w, fig_h))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.01, 0.01, 0.98, 1 - 0.01 - head / fig_h))
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.axis("off")
    fig.text(0.5, 1 - 0.08 / fig_h, _style.title(g), ha="center", va="top", fontsize=11)
    fig.text(0.5, 1 - 0.36 / fig_h, summary, ha="center", va="top", fontsize=7.5, color="#444444")
    _clusters(ax, g, pos, FancyBboxPatch)
    for e in g.edges:
        start, end, style = _edge_geometry(pos[e.src], pos[e.dst], _style.edge_kind(e, g.mode))
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=8, zorder=1, **style))
    _boxes(ax, g, pos, FancyBboxPatch)
    fig.savefig(path, format=fmt, dpi=dpi)


def _clusters(ax, g: ComputationGraph, pos: dict, FancyBboxPatch) -> None:
    """Each cluster's rounded background and title."""
    for k, cl in enumerate(g.clusters):
        pts = [pos[n.id] for n in g.nodes if n.cluster == cl]
        if not pts:
            continue
        cx0 = min(p[0] for p in pts) - _W / 2 - 0.25
        cx1 = max(p[0] for p in pts) + _W / 2 + 0.25
        cy0 = min(p[1] for p in pts) - _H / 2 - 0.45
        cy1 = max(p[1] for p in pts) + _H / 2 + 0.45
        ax.add_patch(FancyBboxPatch((cx0, cy0), cx1 - cx0, cy1 - cy0, boxstyle="round,pad=0.05",
                                    facecolor=_style.CLUSTER_FILLS[min(k, 1)],
                                    edgecolor=_style.CLUSTER_BORDER["matplotlib"], lw=0.8, zorder=0))
        ax.text(cx0 + 0.1, cy1 - 0.08, _style.CLUSTER_TITLES[cl], fontsize=7, va="top", color="#555555")


def _edge_geometry(src: tuple, dst: tuple, kind: str) -> tuple[tuple, tuple, dict]:
    """An arrow's start, end and style: from the side of one box to the other's, an
    arc over the boxes for a long edge along a row."""
    (sx, sy), (dx, dy) = src, dst
    w, h = _W, _H
    forward = dx >= sx
    if abs(dx - sx) < 1e-9:
        start, end = (sx, sy - h / 2 if dy < sy else sy + h / 2), (dx, dy + h / 2 if dy < sy else dy - h / 2)
    else:
        start = (sx + (w / 2 if forward else -w / 2), sy)
        end = (dx - (w / 2 if forward else -w / 2), dy)
    plain = _style.PLAIN_EDGE["color"]
    if kind == "residual":
        style = dict(color=_style.RESIDUAL_EDGE["color"], linestyle="--", lw=1.2, connectionstyle="arc3,rad=0.15")
    elif kind == "crossing":
        style = dict(color=_style.CROSSING_EDGE["color"], linestyle=":", lw=1.0, connectionstyle="arc3,rad=0.1")
    elif abs(dx - sx) > 2.5 and abs(dy - sy) < 0.5:  # a long edge along a row: arc over the boxes
        side = h / 2 if forward else -h / 2
        start, end = (sx + w / 4, sy + side), (dx - w / 4, dy + side)
        rad = -min(0.2, 1.6 / abs(end[0] - start[0]))  # the arc rises at most ~0.4 boxes
        style = dict(color=plain, lw=0.9, connectionstyle=f"arc3,rad={rad:.3f}")
    else:
        style = dict(color=plain, lw=0.9, connectionstyle="arc3,rad=0.0")
    return start, end, style


def _boxes(ax, g: ComputationGraph, pos: dict, FancyBboxPatch) -> None:
    """One rounded box per node, its text inside; residuals bold with an orange border."""
    by_id = {n.id: n for n in g.nodes}
    for nid, (x, y) in pos.items():
        n = by_id[nid]
        ax.add_patch(FancyBboxPatch((x - _W / 2, y - _H / 2), _W, _H, boxstyle="round,pad=0.02",
                                    facecolor=_style.node_color(n),
                                    edgecolor=_style.STORED_BORDER if n.stored else _style.BORDER,
                                    lw=1.4 if n.stored else 0.7, zorder=2))
        ax.text(x, y, _style.node_text(n, label_width=24, shape_width=26), ha="center", va="center",
                fontsize=6.3, zorder=3, fontweight="bold" if n.stored else "normal")
