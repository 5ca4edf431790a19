"""The README and docs/: default-run tables that are reports/results.md's, for every model of the pipeline;
a README a newcomer can read through (at most 250 lines); links that resolve."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml

from toydata import cells

ROOT = Path(__file__).resolve().parents[1]


def _tables():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "docs" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_are_the_committed_report():
    tables = _tables()
    readme = (ROOT / "README.md").read_text()
    results = (ROOT / "reports" / "results.md").read_text()
    assert tables.BLOCK.search(readme), "README.md has no <!-- results.md: Table N --> block"
    for page in tables.PAGES:
        text = page.read_text()
        assert tables.sync(text, results) == text, f"{page.name} is stale: run .venv/bin/python docs/readme_tables.py"
    models = list(yaml.safe_load((ROOT / "params.yaml").read_text())["models"])
    table1 = cells(tables.report_table(results, 1))
    for m in models:
        assert f"| {m} |" in table1 or f"| **{m}** |" in table1, f"{m} is missing from Table 1"


def test_sync_replaces_a_stale_block_and_fails_on_a_missing_table():
    tables = _tables()
    results = (
        "# Results\n\n**Table 1.** caption\n\n| Model | AUC |\n|---|---|\n| **a** | 0.9 |\n| b | 0.8 |\n\n"
        "The model selected on validation ROC-AUC is **a**.\n\n"
        "**Table 2.** ext\n\n| Model | x |\n|---|---|\n| a | 1 |\n"
    )
    stale = "intro\n<!-- results.md: Table 1 -->\n| old |\n<!-- /results.md -->\nend\n"
    new = tables.sync(stale, results)
    assert "| old |" not in new and "| **a** | 0.9 |\n| b | 0.8 |\n\nThe model selected" in new
    assert new.startswith("intro\n") and new.endswith("<!-- /results.md -->\nend\n")
    assert "| a | 1 |" in tables.sync("<!-- results.md: Table 2 -->\n<!-- /results.md -->", results)
    try:
        tables.report_table(results, 3)
    except ValueError as exc:
        assert "Table 3" in str(exc)
    else:
        raise AssertionError("a missing table must be an error")


LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def test_the_readme_is_short_and_every_link_of_the_docs_resolves():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in _anchors(dest)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken
    linked = set(LINK.findall((ROOT / "README.md").read_text()))
    assert all(f"docs/{p.name}" in linked for p in (ROOT / "docs").glob("*.md")), "a docs page the README omits"
