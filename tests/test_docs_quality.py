"""docs/quality.md's table is the clustering-quality benchmark's results, rendered by
bench/quality.py's own markdown (scripts/docs_quality.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.by_path import load_module

ROOT = Path(__file__).resolve().parents[1]
docs_quality = load_module(ROOT / "scripts" / "docs_quality.py", "docs_quality_script")


def test_the_page_holds_the_results_table() -> None:
    """Fails when bench/results/quality.json changed and the page was not regenerated:
    run `.venv/bin/python scripts/docs_quality.py`."""
    page = docs_quality.DOC.read_text(encoding="utf-8")
    assert docs_quality.render(page, docs_quality.table()) == page
    assert docs_quality.main(["--check"]) == 0


def test_the_table_is_the_one_the_benchmark_wrote() -> None:
    # quality.json and quality.md are written together by one full run: the page's table
    # (from the JSON) is the benchmark's own markdown file.
    written = (ROOT / "bench" / "results" / "quality.md").read_text(encoding="utf-8")
    assert docs_quality.table().strip() == written.strip()


def test_every_row_of_the_results_is_on_the_page() -> None:
    summary = json.loads(docs_quality.RESULTS.read_text(encoding="utf-8"))["summary"]
    page = docs_quality.DOC.read_text(encoding="utf-8")
    table = page[page.index(docs_quality.BEGIN):page.index(docs_quality.END)]
    assert summary
    for row in summary:
        assert f"| {row['recipe']} |" in table, row["recipe"]


def test_a_stale_page_is_reported_and_rewritten(tmp_path: Path) -> None:
    results = tmp_path / "quality.json"
    summary = json.loads(docs_quality.RESULTS.read_text(encoding="utf-8"))["summary"][:2]
    results.write_text(json.dumps({"rows": [], "summary": summary}), encoding="utf-8")
    doc = tmp_path / "quality.md"
    doc.write_text(f"# Q\n\nbefore\n\n{docs_quality.BEGIN}\n| old |\n{docs_quality.END}\n\nafter\n",
                   encoding="utf-8")
    args = ["--doc", str(doc), "--results", str(results)]
    assert docs_quality.main([*args, "--check"]) == 1
    assert "| old |" in doc.read_text(encoding="utf-8")  # --check changes nothing
    assert docs_quality.main(args) == 0
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# Q\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert "| old |" not in text and f"| {summary[1]['recipe']} |" in text
    assert docs_quality.main([*args, "--check"]) == 0


@pytest.mark.parametrize("page", [
    "no markers at all\n",
    f"{docs_quality.END}\n{docs_quality.BEGIN}\n",
    f"{docs_quality.BEGIN}\n{docs_quality.BEGIN}\n{docs_quality.END}\n",
])
def test_markers_must_be_there_once_and_in_order(page: str) -> None:
    with pytest.raises(docs_quality.MarkerError):
        docs_quality.render(page, "| table |")
