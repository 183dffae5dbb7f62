"""Benchmark: what closes the gap between a shelf student and its teacher, measured on the same images.

    .venv/bin/python scripts/student_recipes.py --study studies/cifar10-offline.toml --student 0.5 lean \
        --recipe study --recipe ema:weight_average=0.998 --recipe mixup:mixup=0.4,alpha=1.0 [--jobs 2]

Each ``--recipe NAME[:setting=value,...]`` distils the student from the study's trained baseline with the
study's ``[students]`` table changed by those settings (``epochs``, ``alpha``, ``temperature``, ``mixup``,
``weight_average``; see ``models.students.StudentsConfig``), on the search's training images, and scores it
on the validation and test splits. Printed and written to runs/<study>/student_recipes/recipes.{csv,json}:
each recipe's top-1 with its 95% (Wilson) interval, its test drop against the baseline and its test gain over
the first recipe, both paired on the same images (95% Newcombe intervals), and its CPU-minutes. Students are
kept per recipe under runs/<study>/student_recipes/<name>/, so a rerun scores them without training again.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from joblib import Parallel, delayed

from udacisense.common.errors import UserError
from udacisense.common.files import write_json, write_text
from udacisense.common.logs import quiet_libraries
from udacisense.evaluators.accuracy import correct_predictions, predict_logits
from udacisense.evaluators.evidence import split_evidence
from udacisense.evaluators.intervals import paired_comparison
from udacisense.models.students import StudentArchitecture, StudentsConfig
from udacisense.search.study.config import StudyConfig, load_study
from udacisense.search.study.workspace import Workspace, open_workspace

SETTINGS = tuple(field.name for field in dataclasses.fields(StudentsConfig))


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    changes: dict[str, float]

    @classmethod
    def parse(cls, text: str) -> Recipe:
        name, _, settings = text.partition(":")
        changes: dict[str, float] = {}
        for item in filter(None, settings.split(",")):
            key, equals, value = item.partition("=")
            if not equals or key not in SETTINGS:
                raise UserError(f"`--recipe {text}`: `{item}` is not a setting=value of the [students] table.",
                                f"use NAME:setting=value,... with settings among {', '.join(SETTINGS)}.")
            try:
                changes[key] = int(value) if key == "epochs" else float(value)
            except ValueError:
                raise UserError(f"`--recipe {text}`: `{value}` is not a number.", f"give `{key}` a number.") from None
        if not name or "/" in name:
            raise UserError(f"`--recipe {text}` has no usable name.", "start it with a name, e.g. `ema:weight_average=0.998`.")
        return cls(name, changes)

    def applied(self, study: StudentsConfig) -> StudentsConfig:
        return dataclasses.replace(study, **self.changes)  # type: ignore[arg-type]


def _correct(workspace: Workspace, model: torch.nn.Module, split: str) -> torch.Tensor:
    logits, labels = predict_logits(model, workspace.data.loader(split))
    return correct_predictions(logits, labels)


def _distil_and_score(config: StudyConfig, recipe: Recipe, width: float, architecture: StudentArchitecture) -> dict[str, Any]:
    # One thread a recipe: --jobs recipes train side by side, one a core.
    torch.set_num_threads(1)
    quiet_libraries()
    workspace = open_workspace(config, progress=False)
    # The study's own recipe is its own shelf's: a student the search distilled already is scored, not retrained.
    directory = config.run_dir / "student_recipes" / recipe.name if recipe.changes else workspace.students.directory
    shelf = dataclasses.replace(workspace.students, recipe=recipe.applied(workspace.students.recipe),
                                directory=directory, _loaded={}, _seconds={})
    student = shelf.student(width, architecture)
    return {"recipe": recipe.name, "settings": dataclasses.asdict(shelf.recipe),
            "train_minutes": (shelf.train_seconds(width, architecture) or 0.0) / 60,
            "val_correct": _correct(workspace, student, "val"), "test_correct": _correct(workspace, student, "test")}


def _rows(results: list[dict[str, Any]], baseline: dict[str, torch.Tensor]) -> pd.DataFrame:
    first = results[0]["test_correct"]
    rows = []
    for result in results:
        val, test = (split_evidence(result[f"{s}_correct"], baseline[s]) for s in ("val", "test"))
        gain = paired_comparison(first, result["test_correct"])
        rows.append({"recipe": result["recipe"], **{k: result["settings"][k] for k in SETTINGS},
                     "val_top1": val.top1, "test_top1": test.top1, "test_top1_ci95": list(test.top1_ci95),
                     "test_drop": test.drop, "test_drop_ci95": list(test.drop_ci95),
                     "test_gain_over_first": -gain.difference, "test_gain_ci95": [-gain.interval[1], -gain.interval[0]],
                     "train_minutes": result["train_minutes"]})
    return pd.DataFrame(rows)


def write_results(out: Path, results: list[dict[str, Any]], baseline: dict[str, torch.Tensor], width: float,
                  architecture: str) -> pd.DataFrame:
    """The recipes' table, written to ``out``/recipes.{csv,json} (what the report's chosen-pipeline section reads)."""
    table = _rows(results, baseline)
    write_text(out / "recipes.csv", table.to_csv(index=False))
    write_json(out / "recipes.json", {"student": {"width": width, "architecture": architecture},
                                      "baseline": {s: float(c.float().mean()) for s, c in baseline.items()},
                                      "rows": table.to_dict(orient="records")})
    return table


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def _interval(pair: list[float]) -> str:
    return f"[{_points(pair[0])}, {_points(pair[1])}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--student", nargs=2, metavar=("WIDTH", "ARCHITECTURE"), default=["0.5", "lean"])
    parser.add_argument("--recipe", action="append", required=True, help="NAME[:setting=value,...]; the first is the reference")
    parser.add_argument("--jobs", type=int, default=2, help="recipes distilled at once (one core each)")
    args = parser.parse_args(argv)
    try:
        recipes = [Recipe.parse(text) for text in args.recipe]
        if len({r.name for r in recipes}) < len(recipes):
            raise UserError("Two `--recipe`s share a name.", "name each recipe once.")
        if args.student[1] not in ("standard", "lean"):
            raise UserError(f"Unknown student architecture `{args.student[1]}`.", "use `standard` or `lean`.")
        width = float(args.student[0])
        config = load_study(args.study)
        for recipe in recipes:
            recipe.applied(config.students)  # a bad value fails here, before any training
    except (UserError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    workspace = open_workspace(config, progress=True)  # trains the baseline once, before the recipes share it
    baseline = {split: _correct(workspace, workspace.baseline.model, split) for split in ("val", "test")}
    results = Parallel(n_jobs=min(args.jobs, len(recipes)))(
        delayed(_distil_and_score)(config, recipe, width, args.student[1]) for recipe in recipes)
    table = write_results(config.run_dir / "student_recipes", results, baseline, width, args.student[1])
    out = config.run_dir / "student_recipes"
    print(f"student width {width:g} {args.student[1]}; baseline val {baseline['val'].float().mean():.3f}, "
          f"test {baseline['test'].float().mean():.3f} ({baseline['test'].numel()} images)")
    print(f"{'recipe':<14} {'val':>6} {'test':>6}  {'test drop [95%]':<22} {f'gain over {recipes[0].name} [95%]':<26} CPU-min")
    for row in table.to_dict(orient="records"):
        print(f"{row['recipe']:<14} {row['val_top1']:6.3f} {row['test_top1']:6.3f}  "
              f"{_points(row['test_drop']):>5} {_interval(row['test_drop_ci95']):<16} "
              f"{_points(row['test_gain_over_first']):>5} {_interval(row['test_gain_ci95']):<20} {row['train_minutes']:6.1f}")
    print("points; drop: baseline minus student, gain: student minus the first recipe's, both paired on the same test images.")
    print(f"wrote {out / 'recipes.csv'}, {out / 'recipes.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
