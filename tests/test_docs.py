"""The README and docs/ point at files that exist: a moved test or benchmark is not left
cited under its old name (the layout move left four such paths behind)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# a repository path as the documents cite it: `tests/x/y.py`, bench/z.py, docs/a.md, ...
CITED = re.compile(
    r"(?<![\w/.-])((?:tests|bench|docs|deployments|flows|tasks|cv|scanflow|schemas)"
    r"/[\w./-]*\w\.(?:py|md|yaml|yml|json|sh|toml))"
)


def cited_paths(text: str) -> set[str]:
    return set(CITED.findall(text))


def test_the_pattern_finds_cited_paths_and_nothing_else() -> None:
    text = "see `tests/system/test_x.py`, bench/pipeline.py and (docs/faults.md); not a/tests/b.py"
    assert cited_paths(text) == {
        "tests/system/test_x.py",
        "bench/pipeline.py",
        "docs/faults.md",
    }


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_path_a_document_cites_exists(document: Path) -> None:
    missing = sorted(p for p in cited_paths(document.read_text()) if not (ROOT / p).exists())
    assert not missing, f"{document.relative_to(ROOT)} cites paths that do not exist: {missing}"
