"""``ComputationGraph.render``: pick the format from the suffix and the engine (Graphviz's
``dot`` program when it is on the PATH, else matplotlib), and write the file."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import TYPE_CHECKING

from .. import _args
from ._dot import to_dot

if TYPE_CHECKING:  # pragma: no cover
    from ._model import ComputationGraph

_FORMATS = ("dot", "gv", "svg", "png", "pdf")


def render(g: ComputationGraph, path: str | os.PathLike, *, engine: str = "auto",
           dpi: int = 110) -> str:
    """Write ``g``'s picture to ``path`` (see :meth:`ComputationGraph.render`)."""
    path = os.fspath(path)
    fmt = os.path.splitext(path)[1].lower().lstrip(".")
    if fmt not in _FORMATS:
        raise ValueError(f"ComputationGraph.render(path): unsupported suffix {fmt!r} in "
                         f"{path!r}; use .svg, .png, .pdf or .dot.")
    _args.check_choice(engine, ("auto", "dot", "matplotlib"), "ComputationGraph.render", "engine")
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    if fmt in ("dot", "gv"):
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(to_dot(g))
        return path
    dot = shutil.which("dot")
    if engine == "dot" and dot is None:
        raise RuntimeError("ComputationGraph.render(path, engine='dot'): the Graphviz `dot` "
                           "program is not on the PATH; install graphviz or use "
                           "engine='auto' for the matplotlib fallback.")
    if dot is not None and engine in ("auto", "dot"):
        subprocess.run([dot, f"-T{fmt}", f"-Gdpi={dpi}", "-o", path], input=to_dot(g),
                       text=True, check=True, capture_output=True)
        return path
    from ._matplotlib import draw

    draw(g, path, fmt, dpi)
    return path
