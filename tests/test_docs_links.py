"""README.md and docs/*.md point only at things that exist: every relative link (and its
#anchor) resolves, and every repository path they name, in backticks or in a code block, is
in the repository. README stays a short page that starts with the two commands."""

from __future__ import annotations

import glob
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200

# Top-level names that are made at run time, never part of the repository: a path under them
# in the docs (models/fashion/1, .venv/bin/python) is an example. examples/ is committed
# (scripts/example_images.py), so the images the docs send must exist.
RUN_TIME = {".git", ".venv", "models", "artifacts", "reports", "runs", "build",
            "dist", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
# Paths inside the repository's folders that a command writes when it runs (gitignored).
WRITTEN_BY_COMMANDS = {
    "bench/work/",  # make bench / make bench-quality: bundles and scratch files
}
TOP = sorted(p.name for p in ROOT.iterdir() if p.name not in RUN_TIME)
# A repository path: a top-level name, then a path. Placeholders (<name>, ${VARIANT}) and
# globs are allowed; the check needs something to match them.
PATH = re.compile(r"(?<![\w./@$-])((?:" + "|".join(re.escape(n) for n in TOP)
                  + r")(?![\w.-])(?:/(?:\{[^{}\s]*\}|[^\s`'\"()\[\];,|{}])*)?)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`([^`\n]+)`")


def _ids(pages: list[Path]) -> list[str]:
    return [p.relative_to(ROOT).as_posix() for p in pages]


def _prose(text: str) -> str:
    """``text`` without its fenced code blocks."""
    return FENCE.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _prose(page.read_text(encoding="utf-8")),
                              flags=re.MULTILINE):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        anchors.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return anchors


def _expand(path: str) -> list[str]:
    """``path`` as globs: {a,b} alternatives expanded, placeholders matched by *."""
    match = re.search(r"\{([^{}]*,[^{}]*)\}", path)
    if match:
        return [g for alternative in match.group(1).split(",")
                for g in _expand(path[:match.start()] + alternative + path[match.end():])]
    return [re.sub(r"<[^>]*>|\$\{\w+\}|\$\w+", "*", path)]


def _exists(path: str) -> bool:
    if any(path.startswith(prefix) for prefix in WRITTEN_BY_COMMANDS):
        return True
    return all(glob.glob(str(ROOT / pattern)) for pattern in _expand(path))


def _repository_paths(text: str) -> set[str]:
    spans = INLINE_CODE.findall(_prose(text)) + FENCE.findall(text)
    return {path for span in spans for path in PATH.findall(span)}


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_relative_links_resolve(page: Path) -> None:
    for target in LINK.findall(_prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{target} (from {page.name})"
        if anchor:
            assert anchor in _anchors(linked), f"{target}: no heading gives #{anchor}"


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_repository_paths_named_exist(page: Path) -> None:
    named = _repository_paths(page.read_text(encoding="utf-8"))
    assert named, page  # the pattern finds the paths at all
    missing = sorted(p for p in named if not _exists(p))
    assert not missing, f"{page.name} names paths that are not in the repository: {missing}"


def test_the_path_check_catches_a_missing_path() -> None:
    text = ("`training/cli.py` and `bench/probes/gone.py`, `docs/{bundle,nothere}.md`, "
            "`requirements/serve-${VARIANT}.txt`\n```sh\npython bench/neighbors_gone.py\n```\n")
    named = _repository_paths(text)
    assert named == {"training/cli.py", "bench/probes/gone.py", "docs/{bundle,nothere}.md",
                     "requirements/serve-${VARIANT}.txt", "bench/neighbors_gone.py"}
    assert sorted(p for p in named if not _exists(p)) == [
        "bench/neighbors_gone.py", "bench/probes/gone.py", "docs/{bundle,nothere}.md"]


def test_anchors_follow_github() -> None:
    assert _slug("Data sources (`--dataset`)") == "data-sources---dataset"
    assert _slug("How the K = 20 recipe was reached") == "how-the-k--20-recipe-was-reached"


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


def test_readme_starts_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = FENCE.search(text)
    assert first_block is not None
    assert "\n## " not in text[:first_block.start()]  # before any section
    commands = [line.split()[0:2] for line in first_block.group(0).splitlines()[1:-1]
                if line.startswith("make")]
    assert commands == [["make", "run"], ["make", "test"]]


def test_every_docs_page_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in readme, page.name
