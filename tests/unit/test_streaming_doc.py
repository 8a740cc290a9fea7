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
