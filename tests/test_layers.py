"""The packages form layers that only point down: no package imports one above it (deferred imports count)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Lowest first. A package may import only packages listed before it (and itself).
LAYERS = ["common", "datasources", "runtime", "evaluators", "training", "models", "compression", "spaces", "search"]


def imported_packages(package: str) -> dict[str, str]:
    """Project packages that ``package`` imports, each with the first place it does."""
    found: dict[str, str] = {}
    for file in sorted((REPO / package).rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                parts = name.split(".")
                if parts[0] == "udacisense" and len(parts) > 1 and parts[1] != package:
                    found.setdefault(parts[1], f"{file.relative_to(REPO)}:{node.lineno}")
    return found


def test_every_package_is_in_a_layer() -> None:
    packages = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file() and p.name != "tests"}
    assert packages == set(LAYERS)


def test_imports_only_point_down() -> None:
    upward = [f"{package} imports {target} ({where})"
              for rank, package in enumerate(LAYERS)
              for target, where in imported_packages(package).items()
              if target not in LAYERS[:rank]]
    assert not upward, "\n".join(upward)


def test_the_checker_sees_imports() -> None:
    # Guards the test above against passing vacuously (e.g. if the namespace were renamed).
    assert "common" in imported_packages("search") and "runtime" in imported_packages("compression")
