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

The package: ``_build`` (jaxprs to nodes and edges), ``_collapse`` (fitting
``max_nodes``), ``_model`` (the returned dataclasses), ``_style`` (colours, titles, box
text), and one file per renderer, ``_dot`` and ``_matplotlib`` (``_render`` picks).

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

from ._build import graph as graph
from ._model import ComputationGraph as ComputationGraph, Edge as Edge
from ._model import GraphSummary as GraphSummary, Node as Node

__all__ = ["ComputationGraph", "Edge", "GraphSummary", "Node", "graph"]
