"""A griffe extension (mkdocs.yml: mkdocstrings' ``extensions:``) that reads the library's
docstrings as the site should show them, without changing the docstrings themselves.

The docstrings are Google style with a few reStructuredText habits; MkDocs renders
Markdown, so before mkdocstrings parses a docstring this extension rewrites:

- doctest blocks (``>>>`` lines and their expected output, up to a blank line) into
  fenced ``pycon`` code blocks: Markdown would otherwise read ``>>>`` as nested quotes;
- ``.. math:: TEX`` directives (with indented continuation lines) into ``$$ TEX $$``
  display maths, which tools/mkdocs_hooks.py renders as MathML;
- Sphinx roles (``:func:`explain```, ``:class:`X```, ``:mod:`m```) into code spans;
- an ``Args:`` entry naming several parameters (``rtol, atol: ...``) into one entry per
  parameter (Google style names one per entry), so each is matched to the signature.

``transform`` is a plain function of text, tested by tests/test_docs_site.py.
"""

from __future__ import annotations

import re

try:  # griffe comes with the docs extra; transform() is usable without it
    import griffe
except ImportError:  # pragma: no cover - depends on the environment
    griffe = None

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc):`~?([^`]+)`")
_MATH = re.compile(r"^(\s*)\.\. math::\s*(.*)$")
_ARGS = re.compile(r"^(\s*)(?:Args|Arguments|Parameters|Keyword Args):\s*$")
_SEVERAL = re.compile(r"^(\s+)(\w+(?:\s*,\s*\w+)+):\s(.*)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def transform(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    args_indent = None                       # inside an Args: section, its indent
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if args_indent is not None and stripped and _indent(line) <= args_indent:
            args_indent = None
        if _ARGS.match(line):
            args_indent = _indent(line)
        several = _SEVERAL.match(line) if args_indent is not None else None
        if several:
            pad, names, rest = several.groups()
            out += [f"{pad}{name.strip()}: {rest}" for name in names.split(",")]
            i += 1
            continue
        math = _MATH.match(line)
        if math:
            base, first = _indent(line), math.group(2).strip()
            body = [first] if first else []
            i += 1
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
                if lines[i].strip():         # the directive's indented block
                    body.append(lines[i].strip())
                i += 1
            pad = " " * base
            out += ["", pad + "$$", *(pad + b for b in body), pad + "$$", ""]
            continue
        if stripped.startswith(">>>"):
            pad = line[: _indent(line)]
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][len(pad):] if lines[i].startswith(pad) else lines[i])
                i += 1
            out += [pad + "```pycon", *(pad + b for b in block), pad + "```"]
            continue
        out.append(_ROLE.sub(r"`\1`", line))
        i += 1
    return "\n".join(out)


if griffe is not None:
    class DocstringsForMarkdown(griffe.Extension):
        def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
            if obj.docstring is not None:
                obj.docstring.value = transform(obj.docstring.value)
