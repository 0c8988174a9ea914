"""The layout shows the architecture: production packages never import the simulator, the
benchmarks or tests.

actors/, gateway/ and storage/ run in production; simulator/ (the ACS stand-in and the local dev
stack) and bench/ (the benchmarks) may import them, never the other way round. Every import form
counts, lazy ones inside functions included; the dev commands reach ``rtvoice`` through entry
points instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = ("actors", "gateway", "storage")
FORBIDDEN = ("simulator", "bench", "tests")


def imported_modules(tree: ast.AST) -> set[str]:
    """Every absolute module an ``import`` or ``from ... import`` in ``tree`` names."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def production_modules() -> list[Path]:
    return sorted(path for package in PRODUCTION for path in (ROOT / package).rglob("*.py"))


def test_the_production_packages_are_all_there() -> None:
    for package in PRODUCTION:
        assert (ROOT / package / "__init__.py").is_file(), package
    assert len(production_modules()) > 3 * len(PRODUCTION)


@pytest.mark.parametrize("path", production_modules(), ids=lambda path: str(path.relative_to(ROOT)))
def test_production_modules_never_import_the_simulator_bench_or_tests(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = sorted(name for name in imported_modules(tree) if name.split(".")[0] in FORBIDDEN)
    assert not bad, f"{path.relative_to(ROOT)} imports {', '.join(bad)}"


def test_the_check_sees_every_import_form() -> None:
    source = (
        "import simulator.service\n"
        "from tests import helpers\n"
        "def f():\n"
        "    from simulator.devstack.local_stack import LocalStack\n"
        "from . import sibling\n"
    )
    assert imported_modules(ast.parse(source)) == {
        "simulator.service",
        "tests",
        "simulator.devstack.local_stack",
    }
