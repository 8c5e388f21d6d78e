"""The documentation without mkdocs: every page is in the site's navigation (or a linked run table), every relative link
and anchor resolves, every API-reference target exists, the README stays a quick start of at most 10 KB with the two
set-up commands, and every raw run table says when and how it was measured. CI also runs `mkdocs build --strict`."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
SETUP_COMMANDS = (  # CI and users rely on these two lines, exactly
    "pip install -e . && yolo-plugins benchmark",
    'pip install -e ".[test]" && python -m pytest -q -n 2 --dist loadgroup',
)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


class _Loader(yaml.SafeLoader):
    """mkdocs.yml with its ``!!python/name:`` tags read as plain strings."""


_Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: suffix)


def mkdocs_config() -> dict:
    return yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_Loader)


def nav_pages(nav) -> list[str]:
    """Every page file named in mkdocs.yml's nav, in order."""
    out = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out += nav_pages(value) if isinstance(value, list) else [value]
    return out


def doc_files() -> list[str]:
    """Every Markdown page of the site, relative to docs/ (the excluded helper folder aside)."""
    return sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if p.relative_to(DOCS).parts[0] != "_ext")


def slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension (mkdocs) gives a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # link text only
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m.group(2)) for m in re.finditer(r"^(#{1,6})\s+(.+?)\s*#*$", text, re.MULTILINE)}


def links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans
    return [a or b for a, b in LINK.findall(text)]


def test_nav_pages_exist_and_every_page_is_reachable():
    cfg = mkdocs_config()
    nav = nav_pages(cfg["nav"])
    files = doc_files()
    assert sorted(set(nav)) == sorted(nav), "a page is twice in the nav"
    missing = [p for p in nav if not (DOCS / p).is_file()]
    assert not missing, f"pages in mkdocs.yml's nav without a file: {missing}"
    patterns = [p.strip() for p in cfg.get("not_in_nav", "").splitlines() if p.strip()]
    outside = [f for f in files if f not in nav]
    unlisted = [f for f in outside if not any(fnmatch.fnmatch(f, p) for p in patterns)]
    assert not unlisted, f"docs pages neither in the nav nor in not_in_nav: {unlisted}"
    linked = {
        (page.parent / target.partition("#")[0]).resolve()
        for page in DOCS.rglob("*.md")
        for target in links(page)
        if target.partition("#")[0].endswith(".md")
    }
    orphans = [f for f in outside if (DOCS / f).resolve() not in linked]
    assert not orphans, f"pages outside the nav that no page links to: {orphans}"


@pytest.mark.parametrize("page", [README, ROOT / "CHANGELOG.md", *sorted(DOCS.rglob("*.md"))], ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(page):
    bad = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading with that anchor")
    assert not bad, f"{page.relative_to(ROOT)}: {bad}"


def test_api_reference_targets_exist():
    """Each ``::: yolo_plugins.x.y`` names a module of the package (or an object in one)."""
    targets = [m for p in DOCS.rglob("*.md") for m in re.findall(r"^:::\s+(\S+)", p.read_text(), re.MULTILINE)]
    assert targets, "no API reference found"
    missing = []
    for t in targets:
        parts = t.split(".")
        found = any(
            (ROOT.joinpath(*parts[:i]).with_suffix(".py")).is_file()
            or (ROOT.joinpath(*parts[:i]) / "__init__.py").is_file()
            for i in range(len(parts), 0, -1)
        )
        if not found or parts[0] != "yolo_plugins":
            missing.append(t)
    assert not missing, f"API reference targets that are not package modules: {missing}"


def test_snippet_includes_exist():
    includes = [m for p in DOCS.rglob("*.md") for m in re.findall(r'^--8<--\s+"([^"]+)"', p.read_text(), re.MULTILINE)]
    assert "CHANGELOG.md" in includes
    assert all((ROOT / f).is_file() for f in includes), includes


def test_readme_is_a_quick_start():
    text = README.read_text()
    size = len(text.encode())
    assert size <= 10_000, f"README.md is {size} bytes: keep it a quick start (at most 10 KB), move detail into docs/"
    blocks = re.findall(r"```bash\n(.*?)```", text, re.DOTALL)
    for command in SETUP_COMMANDS:
        assert any(command in b.splitlines() for b in blocks), f"README lost its set-up command: {command}"
    assert not re.search(r"\bsession", text, re.IGNORECASE), "development wording in the README"
    assert "docs/index.md" in text


def test_run_tables_say_when_and_how():
    """Raw run tables (linked from Speed and Benchmark) carry their date and the command that reproduces them."""
    tables = sorted((DOCS / "speed").glob("*.md")) + [DOCS / "benchmark" / "results.md"]
    for page in tables:
        head = page.read_text().split("|", 1)[0]
        assert re.search(r"\b20\d\d-\d\d-\d\d\b", head), f"{page.name}: no date before the table"
        assert re.search(r"```bash\n(python scripts/|yolo-plugins )", head), f"{page.name}: no command before the table"


def test_rst_roles_become_markdown():
    """The API reference's docstring conversion (needs griffe: the `docs` extra)."""
    import importlib.util

    pytest.importorskip("griffe")
    spec = importlib.util.spec_from_file_location("rst_roles", DOCS / "_ext" / "rst_roles.py")
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    out = m.convert("See :func:`~yolo_plugins.nn.backbone.create_backbone` and :mod:`yolo_plugins.weights`.")
    assert '<autoref identifier="yolo_plugins.nn.backbone.create_backbone" optional><code>create_backbone</code>' in out
    assert "<code>yolo_plugins.weights</code>" in out and ":func:" not in out
    table = "Classes:\n\n====  =====\nid    name\n====  =====\n0     disc\n1     ring\n====  =====\n"
    assert "| id | name |\n| --- | --- |\n| 0 | disc |\n| 1 | ring |" in m.convert(table)
