"""Fitting a big graph in a picture: chains of ops folded into one box, then the rest
of each cluster into one "... N more ops" box, until at most ``max_nodes`` remain."""

from __future__ import annotations

import collections

from ._model import Edge, Node

__all__ = ["limit", "dedupe"]


def dedupe(edges: list[Edge]) -> list[Edge]:
    return [e for e in dict.fromkeys(edges) if e.src != e.dst]


def limit(nodes: list[Node], edges: list[Edge], max_nodes: int) -> tuple[list[Node], list[Edge], int]:
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
            edges = dedupe([Edge(n.id if e.src == m.id else e.src, e.dst, e.crossing)
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
    edges = dedupe([Edge(drop.get(e.src, e.src), drop.get(e.dst, e.dst), e.crossing) for e in edges])
    return nodes, edges
