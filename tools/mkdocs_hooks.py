"""MkDocs hooks of the documentation site (mkdocs.yml: ``hooks:``).

- Every public name has a reference entry: each name of ``functorch_lite.__all__`` (and
  each public name of the modules listed there, ``nn`` and ``train``) must appear as a
  ``::: functorch_lite.NAME`` line in a page under docs/reference/. A missing one is a
  warning, so ``mkdocs build --strict`` fails and says which entry to add where.
- Formulas become MathML at build time: ``pymdownx.arithmatex`` (generic mode) marks
  ``$...$`` and ``$$...$$``; this hook converts them with ``latex2mathml``, so the pages
  show maths without a script or a network connection (every current browser renders
  MathML Core). A formula it cannot convert is a warning, hence a failed strict build.

The helpers (``public_names``, ``reference_entries``) need neither mkdocs nor
latex2mathml: tests/test_docs_site.py imports them.
"""

from __future__ import annotations

import html
import importlib
import logging
import re
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference"
ENTRY = re.compile(r"^:::\s+(functorch_lite(?:\.\w+)+)\s*$", re.M)

# a logger under "mkdocs.": its warnings count for --strict
log = logging.getLogger("mkdocs.hooks.functorch_lite")


def _import_library():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import functorch_lite

    return functorch_lite


def _module_public(module: types.ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = sorted(k for k, v in vars(module).items()
                       if not k.startswith("_") and not isinstance(v, types.ModuleType))
    return list(names)


def public_names() -> list[str]:
    """The documented names, relative to ``functorch_lite``: ``__all__`` in order, each
    module followed by its own public names (``nn``, ``nn.linear``, ...)."""
    fl = _import_library()
    out = []
    for name in fl.__all__:
        out.append(name)
        obj = getattr(fl, name)
        if isinstance(obj, types.ModuleType):
            out.extend(f"{name}.{sub}" for sub in _module_public(obj))
    return out


def resolve(ident: str):
    """The object a ``::: IDENT`` entry documents, as griffe reads the path: the longest
    importable module prefix, then attributes (so ``functorch_lite._taylor`` is the
    *module* _taylor.py, and ``functorch_lite.taylor`` the function)."""
    _import_library()
    parts = ident.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def reference_entries(reference_dir: Path = REFERENCE) -> dict[str, str]:
    """``{identifier: page}`` for every ``::: functorch_lite.NAME`` line of the
    reference pages."""
    entries = {}
    for page in sorted(reference_dir.glob("*.md")):
        for ident in ENTRY.findall(page.read_text(encoding="utf-8")):
            entries.setdefault(ident, page.name)
    return entries


def entry_of(name: str, entries: dict[str, str] | None = None) -> str | None:
    """The identifier of the reference entry documenting public ``name`` (relative to
    functorch_lite), or None."""
    fl = _import_library()
    entries = reference_entries() if entries is None else entries
    target = fl
    for part in name.split("."):
        target = getattr(target, part)
    for ident in entries:
        if resolve(ident) is target:
            return ident
    return None


def missing_entries() -> list[str]:
    entries = reference_entries()
    return [n for n in public_names() if entry_of(n, entries) is None]


# --- hooks -------------------------------------------------------------------------

def on_config(config, **kwargs):
    # the checkout first on the path: the pages' executed code imports this tree's
    # functorch_lite (and tools.docs_pictures), whatever is installed
    _import_library()
    return config


def on_pre_build(config, **kwargs) -> None:
    for name in missing_entries():
        log.warning(f"functorch_lite.{name} is public (functorch_lite.__all__) but has no "
                    f"reference entry: add a line '::: functorch_lite.{name}' to the page "
                    f"of its area under docs/reference/")


_INLINE = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.S)
_BLOCK = re.compile(r'<div class="arithmatex">\\\[(.*?)\\\]</div>', re.S)


def to_mathml(page_html: str, where: str = "") -> str:
    """Replace arithmatex's generic wrappers by MathML (``<math>`` elements)."""
    from latex2mathml.converter import convert

    def replace(display: str):
        def sub(match: re.Match) -> str:
            tex = html.unescape(match.group(1)).strip()
            try:
                mathml = convert(tex, display=display)
            except Exception as exc:  # latex2mathml raises its own exception types
                log.warning(f"{where}: cannot render the formula {tex!r} as MathML: {exc}")
                return match.group(0)
            unknown = re.findall(r"\\[A-Za-z]+", re.sub(r"<[^>]*>", "", mathml))
            if unknown:
                log.warning(f"{where}: the formula {tex!r} uses {', '.join(unknown)}, "
                            f"which latex2mathml does not know")
            tag = "div" if display == "block" else "span"
            return f'<{tag} class="arithmatex">{mathml}</{tag}>'
        return sub

    page_html = _BLOCK.sub(replace("block"), page_html)
    return _INLINE.sub(replace("inline"), page_html)


def on_page_content(html_text: str, page, config, files, **kwargs) -> str:
    return to_mathml(html_text, page.file.src_uri)
