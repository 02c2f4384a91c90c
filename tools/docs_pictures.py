"""Pictures on the executed pages of the documentation site.

The tutorials' code (run by markdown-exec at build time) writes its pictures with the
library's own functions (``ComputationGraph.render``, ``Report.plot``,
``train.plot_history``) into a scratch folder; a hidden block then prints :func:`picture`,
the picture as an ``<img>`` with the PNG inlined (a ``data:`` URL), so the
picture is part of the built page and is made afresh by every build.
"""

from __future__ import annotations

import base64
import html
import tempfile
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]          # the checkout the site is built from


def scratch() -> Path:
    """A fresh folder for a page's pictures."""
    return Path(tempfile.mkdtemp(prefix="functorch_lite_docs_"))


def picture(path, alt: str, width: int | None = None) -> str:
    """``path`` (a PNG the page's code just wrote) as an inline ``<img>`` in a figure.
    (Returned, not printed: markdown-exec captures the page's own ``print`` only.)"""
    data = Path(path).read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"show({str(path)!r}): not a PNG file")
    style = f' width="{int(width)}"' if width else ""
    return (f'<figure class="fl-picture"><img alt="{html.escape(alt)}"{style} '
            f'src="data:image/png;base64,{base64.b64encode(data).decode()}">'
            f"<figcaption>{html.escape(alt)}</figcaption></figure>")
