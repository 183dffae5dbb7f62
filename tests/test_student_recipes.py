"""The student recipes benchmark's table, and the report's account of what the measured recipes contributed."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import REPO
from udacisense.models.students import StudentsConfig
from udacisense.search.report.sections import _recipe_lines

VAL_IMAGES, TEST_IMAGES = 2000, 10000


def _script():
    spec = importlib.util.spec_from_file_location("student_recipes", REPO / "scripts" / "student_recipes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_report_shows_what_each_measured_student_recipe_contributed(tmp_path) -> None:
    recipes = _script()
    generator = torch.Generator().manual_seed(3)
    baseline = {split: torch.rand(n, generator=generator) < 0.55 for split, n in (("val", VAL_IMAGES), ("test", TEST_IMAGES))}
    settings = dataclasses.asdict(StudentsConfig())
    longer = baseline["test"] | (torch.arange(TEST_IMAGES) % 20 == 0)  # right on ~2 points more test images
    results = [{"recipe": "study", "settings": settings, "train_minutes": 7.0, "val_correct": baseline["val"],
                "test_correct": baseline["test"]},
               {"recipe": "long", "settings": {**settings, "epochs": 160}, "train_minutes": 15.0,
                "val_correct": baseline["val"], "test_correct": longer}]
    run_dir = tmp_path / "run"
    recipes.write_results(run_dir / "student_recipes", results, baseline, 0.5, "lean")
    inputs = SimpleNamespace(chosen=SimpleNamespace(trial=SimpleNamespace(params={"student_width": 0.5})),
                             study=SimpleNamespace(students=StudentsConfig(epochs=160), baseline=SimpleNamespace(epochs=40),
                                                   run_dir=run_dir))
    lines = "\n".join(_recipe_lines(inputs))  # type: ignore[arg-type]
    assert "160 epochs" in lines and "width-0.5 lean" in lines
    long_row = next(line for line in lines.splitlines() if line.startswith("| long |"))
    gain = float(long_row.split("|")[6].split()[0])
    assert gain == pytest.approx(100 * float((longer.float() - baseline["test"].float()).mean()), abs=0.05)
    # No recipe measured, or no student in the pick: nothing claimed.
    assert "not run for this study" in "\n".join(_recipe_lines(SimpleNamespace(
        chosen=inputs.chosen, study=SimpleNamespace(students=StudentsConfig(), baseline=SimpleNamespace(epochs=40),
                                                    run_dir=tmp_path / "none"))))  # type: ignore[arg-type]
    assert _recipe_lines(SimpleNamespace(chosen=SimpleNamespace(trial=SimpleNamespace(params={})), study=None)) == []  # type: ignore[arg-type]


def test_a_recipe_is_a_name_and_settings_of_the_students_table() -> None:
    recipes = _script()
    recipe = recipes.Recipe.parse("long-mixup:epochs=160,mixup=0.4")
    assert recipe.name == "long-mixup" and recipe.changes == {"epochs": 160, "mixup": 0.4}
    assert recipe.applied(StudentsConfig()).epochs == 160 and recipes.Recipe.parse("study").changes == {}
    for bad in ("x:widht=2", "x:mixup=lots", ":epochs=3"):
        with pytest.raises(recipes.UserError):
            recipes.Recipe.parse(bad)
