"""The documentation site (mkdocs.yml, docs/, tools/mkdocs_hooks.py, tools/griffe_docstrings.py).

Default run (no docs dependencies needed): ``__all__`` lists the public names, every one
has an API reference entry, every page is in the nav, and the docstring rewriting that
the site applies is right.

``-m site`` (the docs step of .ci/run, after ``pip install -e ".[docs]"``, ``mkdocs build
--strict`` and ``bash tools/site_check.sh``): the MathML conversion, a strict build that
fails on a failing executed block, the search index listing every public name, and the
pages as headless Chromium rendered them (DOM dumps and screenshots).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import functorch_lite as fl
from tools import mkdocs_hooks as hooks
from tools.griffe_docstrings import transform

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SITE = ROOT / "site"
CHECK = Path(os.environ.get("SITE_CHECK_DIR", ROOT / "site_check"))


# ----------------------------------------------------------------- default run

def test_all_lists_every_public_name_and_only_existing_ones():
    ns: dict = {}
    exec("from functorch_lite import *", ns)
    assert all(name in ns for name in fl.__all__)
    assert len(set(fl.__all__)) == len(fl.__all__), "a name is listed twice in __all__"
    assert "clear_caches" in fl.__all__
    # every public function/class of the namespace is in __all__ (submodules such as
    # functorch_lite._transforms are implementation; nn and train are listed as modules)
    exported = {k for k, v in vars(fl).items()
                if not k.startswith("_") and not isinstance(v, types.ModuleType)}
    missing = exported - set(fl.__all__)
    assert not missing, f"public names missing from functorch_lite.__all__: {sorted(missing)}"


def test_public_names_include_the_modules_members():
    names = hooks.public_names()
    assert "nn" in names and "nn.linear" in names and "nn.layer_norm" in names
    assert "train" in names and "train.fit" in names and "train.plot_history" in names
    assert "grad" in names and "ComputationGraph" in names


def test_every_public_name_has_a_reference_entry():
    missing = hooks.missing_entries()
    assert not missing, (f"no '::: functorch_lite.NAME' entry under docs/reference/ for "
                         f"{missing}: add one to the page of its area")


def test_reference_entries_resolve_to_the_public_objects():
    entries = hooks.reference_entries()
    for ident in entries:
        assert hooks.resolve(ident) is not None, f"{ident} ({entries[ident]}) names nothing"
    # the function taylor is documented under its public name, not the private module's
    assert hooks.entry_of("taylor", entries) == "functorch_lite.taylor"
    assert hooks.resolve("functorch_lite.taylor") is fl.taylor
    assert hooks.resolve("functorch_lite._taylor") is not fl.taylor


def test_the_coverage_check_can_fail(tmp_path):
    (tmp_path / "a.md").write_text("::: functorch_lite.grad\n\n::: functorch_lite.nn.linear\n")
    entries = hooks.reference_entries(tmp_path)
    assert set(entries) == {"functorch_lite.grad", "functorch_lite.nn.linear"}
    assert hooks.entry_of("grad", entries) == "functorch_lite.grad"
    assert hooks.entry_of("vjp", entries) is None


def _nav_pages() -> list[str]:
    text = (ROOT / "mkdocs.yml").read_text()
    nav = text[text.index("\nnav:"):]
    nav = nav[: re.search(r"\n\S", nav[1:]).start() + 1]          # up to the next key
    return [m.group(1) for line in nav.splitlines()
            if not line.lstrip().startswith("#")
            for m in [re.search(r"([\w/.-]+\.md)\s*$", line)] if m]


def test_every_page_is_in_the_nav_and_every_nav_page_exists():
    nav = _nav_pages()
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert len(nav) == len(set(nav)), "a page is listed twice in mkdocs.yml's nav"
    not_in_nav = sorted(set(pages) - set(nav))
    assert not not_in_nav, f"pages missing from mkdocs.yml's nav: {not_in_nav}"
    absent = sorted(set(nav) - set(pages))
    assert not absent, f"mkdocs.yml's nav lists pages that do not exist: {absent}"
    for page in ("index.md", "porting.md", "cli.md", "transforms.md", "benchmarks.md",
                 "tutorials/per_sample_gradients.md", "reference/transforms.md"):
        assert page in nav


def test_tutorials_execute_their_code():
    for page in ("per_sample_gradients", "jacobians_hessians", "training", "pinn"):
        text = (DOCS / "tutorials" / f"{page}.md").read_text()
        assert text.count('```python exec="on"') >= 3, page
        assert "picture(" in text, f"{page}: no picture produced by the build"


def test_readme_names_the_docs_build_command():
    text = (ROOT / "README.md").read_text()
    assert 'pip install -e ".[docs]"' in text and "mkdocs build --strict" in text


def test_ci_builds_the_site_and_runs_the_browser_check_after_the_tests():
    ci = (ROOT / ".ci" / "run").read_text()
    steps = ["pytest -m slow", 'pip install -e ".[docs]"', "mkdocs build --strict",
             "apt-get update", "apt-get install -y chromium", "bash tools/site_check.sh site_check",
             "pytest -m site tests/test_docs_site.py"]
    positions = [ci.find(step) for step in steps]
    assert -1 not in positions, dict(zip(steps, positions))
    assert positions == sorted(positions), dict(zip(steps, positions))
    assert "set -euo pipefail" in ci
    for script in (ROOT / ".ci" / "run", ROOT / "tools" / "site_check.sh"):
        run = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr


def test_transform_fences_doctests_and_keeps_their_text():
    doc = textwrap.dedent("""\
        Gradient.

        >>> f(1)
        [['b', 'w']]
        >>> g(
        ...     2)
        3

        After.""")
    out = transform(doc)
    assert "```pycon\n>>> f(1)\n[['b', 'w']]\n>>> g(\n...     2)\n3\n```" in out
    assert out.startswith("Gradient.") and out.endswith("After.")


def test_transform_math_directive_and_roles():
    doc = "Text :func:`hvp` and :class:`~a.B`.\n\n.. math:: H v = \\frac{d}{dt} f\n   + g\n\nNext."
    out = transform(doc)
    assert "Text `hvp` and `a.B`." in out
    assert "$$\nH v = \\frac{d}{dt} f\n+ g\n$$" in out
    assert out.rstrip().endswith("Next.")


def test_transform_splits_args_naming_several_parameters():
    doc = "Args:\n  x: the input.\n  rtol, atol: tolerances.\n\nReturns:\n  a, b: not args."
    out = transform(doc).splitlines()
    assert "  rtol: tolerances." in out and "  atol: tolerances." in out
    assert "  a, b: not args." in out                  # only inside Args:


# ------------------------------------------------------------ -m site (docs CI step)

@pytest.mark.site
def test_formulas_become_mathml_and_unknown_commands_warn(caplog):
    html = hooks.to_mathml('<p>a <span class="arithmatex">\\(x^2 &lt; y\\)</span></p>'
                           '<div class="arithmatex">\\[\\frac{1}{2}\\]</div>')
    assert "<math" in html and "arithmatex\">\\(" not in html
    assert "<mfrac>" in html and 'display="block"' in html
    with caplog.at_level("WARNING", logger="mkdocs.hooks.functorch_lite"):
        hooks.to_mathml('<span class="arithmatex">\\(\\big\\vert_{t=0} + \\foo x\\)</span>', "page.md")
    assert "latex2mathml does not know" in caplog.text
    assert "\\vert" in caplog.text and "\\foo" in caplog.text


@pytest.mark.site
def test_a_failing_executed_block_fails_the_strict_build(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text(
        '# T\n\n```python exec="on"\nraise RuntimeError("tutorial broke")\n```\n')
    (tmp_path / "mkdocs.yml").write_text(
        "site_name: t\nstrict: true\nplugins:\n  - markdown-exec\n"
        "markdown_extensions:\n  - pymdownx.superfences\n")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "tutorial broke" in run.stdout + run.stderr
    # and the same page with working code builds
    (tmp_path / "docs" / "index.md").write_text('# T\n\n```python exec="on"\nprint("ok")\n```\n')
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr


def _built() -> None:
    if not (SITE / "search" / "search_index.json").exists():
        pytest.fail("site/ is not built: run `mkdocs build --strict` first")


@pytest.mark.site
def test_search_index_lists_every_public_name():
    _built()
    docs = json.loads((SITE / "search" / "search_index.json").read_text())["docs"]
    by_location = {d["location"]: d for d in docs}
    entries = hooks.reference_entries()
    for name in hooks.public_names():
        ident = hooks.entry_of(name, entries)
        page = entries[ident].removesuffix(".md")
        location = f"reference/{page}/#{ident}"
        assert location in by_location, f"{name}: {location} not in the search index"
        assert by_location[location]["title"].split()[0] == ident, by_location[location]
    # the tutorials' executed output is indexed too
    assert any("bitwise equal to the uninterrupted run: True" in d["text"] for d in docs)


@pytest.mark.site
def test_built_pages_have_their_pictures_and_maths():
    _built()
    for page, pictures in (("tutorials/per_sample_gradients", 1),
                           ("tutorials/jacobians_hessians", 3), ("tutorials/training", 1),
                           ("tutorials/pinn", 2), ("cli", 1)):
        html = (SITE / page / "index.html").read_text()
        assert html.count('src="data:image/png;base64,') >= pictures, page
        assert "Traceback" not in html, page
    higher = (SITE / "reference" / "higher" / "index.html").read_text()
    assert higher.count("<math") >= 6 and "\\frac" not in higher
    pinn = (SITE / "tutorials" / "pinn" / "index.html").read_text()
    assert "relative L2 error" in pinn and "Waiting for" not in pinn


def _dom(name: str) -> str:
    path = CHECK / f"{name}.html"
    if not path.exists():
        pytest.fail(f"{path} missing: run `bash tools/site_check.sh {CHECK}` first")
    return path.read_text()


def _h1(dom: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", h).replace("\u00b6", "").strip()
            for h in re.findall(r"<h1[^>]*>(.*?)</h1>", dom, re.S)]


@pytest.mark.site
@pytest.mark.parametrize("name, heading, ids", [
    ("index", "functorch_lite", ["a-first-example", "where-next"]),
    ("reference_transforms", "Transforms", ["functorch_lite.grad", "functorch_lite.vmap"]),
    ("reference_higher", "Higher order", ["functorch_lite.hessian", "functorch_lite.taylor"]),
])
def test_chromium_rendered_the_pages(name, heading, ids):
    dom = _dom(name)
    assert heading in _h1(dom), _h1(dom)
    for ident in ids:
        assert f'id="{ident}"' in dom, ident
    assert "md-search" in dom                          # Material's search box is there
    if name.startswith("reference"):
        assert "<math" in dom                          # formulas as MathML
        assert 'class="doc-signature' in dom or "doc-signature" in dom


@pytest.mark.site
@pytest.mark.parametrize("name", ["index", "reference_transforms", "reference_higher"])
def test_screenshots_show_a_page(name):
    from PIL import Image

    path = CHECK / f"{name}.png"
    if not path.exists():
        pytest.fail(f"{path} missing: run `bash tools/site_check.sh {CHECK}` first")
    with Image.open(path) as im:
        assert im.size[0] >= 1000 and im.size[1] >= 1000
        colours = im.convert("RGB").resize((320, 450)).getcolors(maxcolors=1 << 16)
    # a blank or error page has a handful of colours; a rendered page with text,
    # the header bar and highlighted code has hundreds
    assert colours is None or len(colours) > 100, len(colours)


def test_architecture_page_lists_exactly_the_package_files():
    """docs/architecture.md's file table matches the tree (one row per module)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    listed = set(re.findall(r"^\| `(functorch_lite/[^`]+\.py)` \|", text, flags=re.M))
    actual = {p.relative_to(ROOT).as_posix() for p in (ROOT / "functorch_lite").rglob("*.py")}
    assert listed == actual, (sorted(actual - listed), sorted(listed - actual))
