"""The shape a newcomer relies on: service/ and batch/ modules and functions that fit on a screen or a few, and docs
whose relative links lead somewhere. (The layers themselves are import-linter's contract in pyproject.toml.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
SERVICE = [*sorted((ROOT / "service").rglob("*.py")), *sorted((ROOT / "batch").rglob("*.py"))]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


@pytest.mark.parametrize("module", SERVICE, ids=lambda p: str(p.relative_to(ROOT)))
def test_service_module_and_its_functions_stay_small(module):
    text = module.read_text()
    assert text.count("\n") <= MAX_MODULE_LINES, f"{module.name}: split it (at most {MAX_MODULE_LINES} lines)"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{module.name}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # links in code blocks are examples
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = [target for target in relative_links(page) if not (page.parent / target.split("#")[0]).exists()]
    assert not broken, f"{page.relative_to(ROOT)}: links to nothing: {broken}"


def test_the_link_check_reads_links():
    """Guards the check above: a page with links gives them, so an empty result is not a silent pass."""
    assert "docs/architecture.md" in relative_links(ROOT / "README.md")
