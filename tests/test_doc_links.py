"""Every document a docstring, comment or doc cites exists in the repository.

The docs are the project's memory: a citation of a file that is not in the repository (a
design note kept elsewhere, a renamed page) sends the reader nowhere. Names of reports that
action-ray *writes* (``summary.md`` and friends) are outputs, not citations.
"""

from __future__ import annotations

import re
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
SOURCES = [*ROOT.glob("action_ray/**/*.py"), *ROOT.glob("action_ray/**/*.yaml"), *ROOT.glob("docs/*.md"),
           ROOT / "README.md", *ROOT.glob("cluster/*"), *ROOT.glob("datasets/**/*"), *ROOT.glob("scripts/*"),
           *ROOT.glob("tests/*.py")]
#: Reports the tools write into run and benchmark folders.
WRITTEN_REPORTS = {"summary.md", "results.md", "quality.md", "variants.md"}
CITATION = re.compile(r"(?<![\w/.-])((?:\.\./|[\w-]+/)*[\w-]+\.md)\b")


def cited_documents() -> list[tuple[Path, str]]:
    found = []
    for source in SOURCES:
        if source.is_file() and source.name != Path(__file__).name:
            text = source.read_text(errors="replace")
            found += [(source, name) for name in CITATION.findall(text)]
    return found


def resolves(source: Path, name: str) -> bool:
    if Path(name).name in WRITTEN_REPORTS:
        return True
    return any((base / name).exists() for base in (source.parent, ROOT, ROOT / "docs"))


def test_the_citation_pattern_finds_paths_and_bare_names():
    text = "see docs/tune.md, method.md §5 and ../acdc/README.md; not file.mdx"
    assert CITATION.findall(text) == ["docs/tune.md", "method.md", "../acdc/README.md"]


def test_every_cited_document_exists():
    cited = cited_documents()
    assert len(cited) > 50  # the pattern still finds the project's citations
    missing = sorted({f"{source.relative_to(ROOT)} cites {name}" for source, name in cited
                      if not resolves(source, name)})
    assert not missing, "\n".join(missing)


def sections_of(name: str) -> set[str]:
    doc = (ROOT / "docs" / f"{name}.md").read_text()
    return set(re.findall(r"^#+\s*§?\s*([0-9]+(?:\.[0-9]+)*)\.?\s", doc, flags=re.M))


def test_every_section_citation_points_at_a_section_that_exists():
    """``§4.4`` in code and docs means docs/method.md §4.4 unless ``ray-notes`` precedes it;
    the number must be a heading of that document (docs cite each other by number)."""
    known = {"method": sections_of("method"), "ray-notes": sections_of("ray-notes")}
    assert {"4.4", "8.1"} <= known["method"] and "3" in known["ray-notes"]
    bad = set()
    for source in SOURCES:
        if not source.is_file() or source.suffix not in (".py", ".md", ".yaml", "") or source.name in (
                "method.md", "ray-notes.md", "phantoms.md", Path(__file__).name):
            continue
        text = source.read_text(errors="replace")
        for match in re.finditer(r"§\s?([0-9]+(?:\.[0-9]+)*)", text):
            before = text[max(0, match.start() - 30):match.start()]
            doc = "ray-notes" if "ray-notes" in before else "method"
            if match.group(1) not in known[doc]:
                bad.add(f"{source.relative_to(ROOT)}: {doc} §{match.group(1)}")
    assert not bad, "\n".join(sorted(bad))
