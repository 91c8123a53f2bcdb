"""What ships points only at what ships: no references to files outside the repository.

The package (every file under tl_neuronkinds/, HTML and JavaScript strings included), the
README, the tutorials and docs/ must cite the paper's sections or the docs/ pages, never a
design note, a ticket or a workspace path a user does not have.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: What a shipped file must not name: the workspace's notes, its folder, tickets by number.
FORBIDDEN = re.compile(
    r"(?-i:\b(?:SPEC|API|DESIGN|STYLE)\.md\b)"  # the workspace's notes (docs/api.md is ours)
    r"|\.\./shared\b|\bshared/(?:data|SPEC|API|DESIGN|STYLE|design|hooks|papers)\b"
    r"|\bissues? #?\d+"  # a ticket by number
    r"|\bTrust §"
    r"|(?-i:\(SPEC\b|\bSPEC(?: |:|'s|’s))",  # SPEC "Terms", SPEC's m, (SPEC; ...)
    re.IGNORECASE,
)


def shipped_files() -> list[Path]:
    """Every text file that ships or documents what ships."""
    files = [ROOT / "README.md"]
    for folder in ("tl_neuronkinds", "tutorials", "docs"):
        files += sorted(p for p in (ROOT / folder).rglob("*") if p.is_file())
    return [p for p in files if p.is_file() and "__pycache__" not in p.parts]


def offences(path: Path) -> list[str]:
    """``file:line: text`` for each forbidden reference in ``path`` (none in binary files)."""
    data = path.read_bytes()
    if b"\0" in data:
        return []
    text = data.decode("utf-8", errors="replace")
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return [
        f"{name}:{number}: {line.strip()[:120]}"
        for number, line in enumerate(text.splitlines(), 1)
        if FORBIDDEN.search(line)
    ]


def test_no_references_outside_the_repository() -> None:
    files = shipped_files()
    assert ROOT / "tl_neuronkinds" / "__init__.py" in files
    found = [offence for path in files for offence in offences(path)]
    assert not found, "references to files outside the repository:\n" + "\n".join(found)


#: A citation of a docs page, with the heading it names where it names one:
#: ``docs/kinds.md, "The n-gram cap"`` (straight or curly quotes, a line break allowed).
CITATION = re.compile(r'docs/([\w-]+\.md)(?:,?\s*\(?["“]([^"”\n]+)["”])?')


def headings(page: Path) -> set[str]:
    """The headings of a Markdown page, as written after the ``#``s."""
    lines = page.read_text(encoding="utf-8").splitlines()
    return {line.lstrip("#").strip() for line in lines if line.startswith("#")}


def broken_citations(path: Path) -> list[str]:
    """``file:line: citation`` for each docs page or heading ``path`` cites that does not exist."""
    data = path.read_bytes()
    if b"\0" in data:
        return []
    text = data.decode("utf-8", errors="replace")
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    broken = []
    for match in CITATION.finditer(text):
        page, heading = ROOT / "docs" / match[1], match[2]
        if not page.is_file() or (heading is not None and heading not in headings(page)):
            line = text.count("\n", 0, match.start()) + 1
            broken.append(f"{name}:{line}: {match[0]!r}")
    return broken


def test_cited_docs_pages_and_headings_exist() -> None:
    found = [broken for path in shipped_files() for broken in broken_citations(path)]
    assert not found, "citations of docs pages or headings that do not exist:\n" + "\n".join(found)


def test_a_broken_citation_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "module.py"
    path.write_text(
        'a (docs/kinds.md, "The n-gram cap")\nb (docs/kinds.md,\n  "No such heading")\n'
        "c docs/nowhere.md\n",
        encoding="utf-8",
    )
    assert broken_citations(path) == [
        f"{path}:2: 'docs/kinds.md,\\n  \"No such heading\"'",
        f"{path}:4: 'docs/nowhere.md'",
    ]


@pytest.mark.parametrize(
    "line",
    [
        'the n-gram cap (SPEC.md, "The n-gram cap")',
        "columns as in API.md",
        'DESIGN.md, "Rules of the house"',
        'a CDN (STYLE.md, "Leave behind")',
        "see ../shared/SPEC.md",
        "need no second pass (issue 8, §2)",
        "too little to trust (Trust §2)",
        'no folding (SPEC "Terms")',
        "SPEC's m = 8",
        "(SPEC; Voita et al.)",
    ],
)
def test_each_kind_of_reference_is_caught(tmp_path: Path, line: str) -> None:
    path = tmp_path / "page.md"
    path.write_text(f"first line\n{line}\nlast line\n", encoding="utf-8")
    assert offences(path) == [f"{path}:2: {line}"]


@pytest.mark.parametrize(
    "line",
    [
        'the n-gram cap (docs/kinds.md, "The n-gram cap")',
        "Voita et al. 2024, §5.2",
        '      "SPEC": 7816,',  # a token in a tokenizer's vocabulary
        "SPECIAL_TOKENS",
        "the issue of scale",
        "- [API reference](api.md): every public function and class.",
    ],
)
def test_what_may_stay_is_not_caught(tmp_path: Path, line: str) -> None:
    path = tmp_path / "page.md"
    path.write_text(line + "\n", encoding="utf-8")
    assert offences(path) == []
