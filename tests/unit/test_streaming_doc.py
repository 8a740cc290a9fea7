"""docs/STREAMING.md and docs/PERFORMANCE.md point at real code: every `path: Symbol` and `path::test_name` must exist."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "STREAMING.md"
SYMBOL_REF = re.compile(r"`([\w./-]+\.py): ([A-Za-z_][\w.]*)`")
TEST_REF = re.compile(r"`([\w./-]+\.py)::(\w+)`")


def defined_names(path: Path) -> set[str]:
    """Top-level functions, classes and assignments, and Class.member for members of classes."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                for member in node.body:
                    if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        names.add(f"{node.name}.{member.name}")
                    elif isinstance(member, ast.AnnAssign) and isinstance(member.target, ast.Name):
                        names.add(f"{node.name}.{member.target.id}")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def references(text: str) -> list[tuple[str, str]]:
    return SYMBOL_REF.findall(text) + TEST_REF.findall(text)


def missing(text: str) -> list[str]:
    problems = []
    for path, symbol in references(text):
        file = REPO / path
        if not file.is_file():
            problems.append(f"{path}: no such file")
        elif symbol not in defined_names(file):
            problems.append(f"{path}: no {symbol}")
    return problems


def test_every_reference_in_streaming_md_exists():
    text = DOC.read_text()
    assert len(references(text)) >= 60, "the document lost its references"
    assert missing(text) == []


def test_the_checker_catches_a_stale_reference():
    assert missing("`services/coordinator/stream.py: Streams.on_delta`") == []
    assert missing("`services/coordinator/stream.py: Streams._no_such_method`")
    assert missing("`services/nowhere.py: thing`")
    assert missing("`tests/unit/test_codec.py::test_that_never_was`")


def test_every_reference_in_performance_md_exists():
    text = (REPO / "docs" / "PERFORMANCE.md").read_text()
    assert len(references(text)) >= 7, "the document lost its references"
    assert missing(text) == []


def test_every_reference_in_http_md_exists():
    text = (REPO / "docs" / "HTTP.md").read_text()
    assert len(references(text)) >= 2, "the document lost its references"
    assert missing(text) == []


LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def broken_links(page: Path) -> list[str]:
    problems = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # another site, or mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{page.name}: {target}: no such file")
        elif anchor and file.suffix == ".md":
            headings = re.findall(r"(?m)^#+ (.+)$", file.read_text())
            if anchor not in {slug(h) for h in headings}:
                problems.append(f"{page.name}: {target}: no such heading")
    return problems


def test_every_link_of_the_readme_and_the_docs_goes_somewhere():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    assert len(pages) >= 12
    assert [problem for page in pages for problem in broken_links(page)] == []
    assert broken_links(REPO / "docs" / "README.md") == [] and "TROUBLESHOOTING.md" in (REPO / "docs" / "README.md").read_text()


def test_the_link_checker_catches_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A page\n\n[here](#a-page) [there](nowhere.md) [gone](#no-heading) [web](https://example.com)\n")
    assert broken_links(page) == ["page.md: nowhere.md: no such file", "page.md: #no-heading: no such heading"]


def test_every_code_reference_in_any_doc_exists():
    for page in sorted((REPO / "docs").glob("*.md")):
        assert missing(page.read_text()) == [], page.name
