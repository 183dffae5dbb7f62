"""The packages form layers that only point down: no package imports one above it (deferred imports count)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Lowest first. A package may import only packages listed before it (and itself).
LAYERS = ["common", "datasources", "runtime", "evaluators", "training", "models", "compression", "spaces", "search"]
# search's rooms are layers too, lowest first; search/cli.py sits on all of them.
SEARCH_ROOMS = ["study", "trial", "workers", "results", "report"]
# What a newcomer can read at a glance: rooms of a few modules, modules of a few screens.
MAX_ROOM_MODULES, MAX_MODULE_LINES = 9, 450


def imported_packages(package: str, namespace: tuple[str, ...] = ("udacisense",)) -> dict[str, str]:
    """Packages of ``namespace`` that the folder ``package`` (below the namespace's folder) imports, each with
    the first place it does."""
    found: dict[str, str] = {}
    folder = REPO.joinpath(*namespace[1:], package)
    for file in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                parts = tuple(name.split("."))
                inside = parts[len(namespace):]
                if parts[:len(namespace)] == namespace and inside and inside[0] != package:
                    found.setdefault(inside[0], f"{file.relative_to(REPO)}:{node.lineno}")
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


def test_search_modules_live_in_rooms_that_only_point_down() -> None:
    loose = {p.name for p in (REPO / "search").glob("*.py")} - {"__init__.py", "cli.py"}
    rooms = {p.name for p in (REPO / "search").iterdir() if (p / "__init__.py").is_file()}
    assert not loose and rooms == set(SEARCH_ROOMS)
    upward = [f"search.{room} imports search.{target} ({where})"
              for rank, room in enumerate(SEARCH_ROOMS)
              for target, where in imported_packages(room, ("udacisense", "search")).items()
              if target in SEARCH_ROOMS and target not in SEARCH_ROOMS[:rank]]
    assert not upward, "\n".join(upward)
    assert "study" in imported_packages("trial", ("udacisense", "search"))  # the checker sees sub-package imports


def test_search_rooms_and_modules_stay_small() -> None:
    crowded = {room: n for room in SEARCH_ROOMS
               if (n := len([p for p in (REPO / "search" / room).glob("*.py") if p.name != "__init__.py"])) > MAX_ROOM_MODULES}
    long = {str(p.relative_to(REPO)): n for p in (REPO / "search").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not crowded and not long, (crowded, long)
