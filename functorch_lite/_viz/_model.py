"""What :func:`functorch_lite._viz.graph` returns: nodes, edges, the summary counts and
the graph itself (drawn by the renderers in ``_dot`` and ``_matplotlib``)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from .. import _cost

__all__ = ["ComputationGraph", "Edge", "GraphSummary", "Node"]


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
    >>> from functorch_lite._viz import graph
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

    def to_dot(self) -> str:
        """Graphviz DOT text: two clusters, residuals filled orange and labelled
        "stored", the residual edges dashed from the forward into the backward cluster."""
        from ._dot import to_dot

        return to_dot(self)

    def render(self, path: str | os.PathLike, *, engine: str = "auto", dpi: int = 110) -> str:
        """Write the picture to ``path`` and return it.

        The format comes from the suffix: ``.dot`` (the DOT text), ``.svg``, ``.png`` or
        ``.pdf``. ``engine="auto"`` uses Graphviz's ``dot`` program when it is on the
        PATH, else matplotlib (needs the ``plot`` extra); ``"dot"`` or ``"matplotlib"``
        force one.
        """
        from ._render import render

        return render(self, path, engine=engine, dpi=dpi)
