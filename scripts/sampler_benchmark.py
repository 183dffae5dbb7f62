"""Benchmark: samplers at equal budget, several independent searches per sampler.

    .venv/bin/python scripts/sampler_benchmark.py --study studies/cifar10-offline.toml \
        --n-trials 24 --repeats 3 --samplers nsga2 tpe random [--n-jobs K] [--summary-only]

Each (sampler, repeat) is its own study (``<name>-<sampler>-<repeat>``) on the same baseline (its
checkpoint is copied, not retrained). Every search process draws its own sampler seed (recorded in
each trial's ``sampler_seed``), so no two searches share a first generation. The score is the
hypervolume of the trials that reach the accuracy floor (what a user can ship) among the first N
finished trials of each search, N the smallest number any search finished: a search cut short still
compares fairly. Prints mean ± sd per sampler and the ratio of each mean to random's.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from dataclasses import dataclass

import optuna

from udacisense.common.errors import UserError
from udacisense.common.logs import quiet_libraries
from udacisense.search.budget import finished_in_budget
from udacisense.search.hypervolume import hypervolume_of_first
from udacisense.search.records import records
from udacisense.search.runner import run_search
from udacisense.search.storage import open_study
from udacisense.search.study import load_study
from udacisense.search.workspace import open_workspace

SAMPLERS = ("nsga2", "tpe", "random", "nsga3")


@dataclass(frozen=True)
class Arm:
    sampler: str
    repeat: int
    overrides: dict[str, object]

    @property
    def label(self) -> str:
        return f"{self.sampler} #{self.repeat}"


def arms(base_name: str, samplers: list[str], repeats: int, n_trials: int | None) -> list[Arm]:
    budget = {"search.n_trials": n_trials} if n_trials else {}
    return [Arm(sampler, repeat, {**budget, "name": f"{base_name}-{sampler}-{repeat}", "search.sampler": sampler})
            for repeat in range(repeats) for sampler in samplers]  # interleaved: load drifts hit every sampler alike


def run_arm(study_path: str, arm: Arm, n_jobs: int | None) -> None:
    base = load_study(study_path)
    # Same baseline for every arm: its checkpoint is reused because its settings key matches.
    shutil.copytree(base.run_dir / "baseline", load_study(study_path, arm.overrides).run_dir / "baseline", dirs_exist_ok=True)
    run_search(study_path, n_jobs=n_jobs, overrides=arm.overrides, progress=True)


def arm_trials(study_path: str, arm: Arm) -> list[optuna.trial.FrozenTrial]:
    try:
        return open_study(load_study(study_path, arm.overrides), create=False).get_trials()
    except UserError:  # an arm not run yet (summary of a partial benchmark): no storage or no study
        return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/cifar10-offline.toml")
    parser.add_argument("--n-trials", type=int, help="budget of every search (default: the study's)")
    parser.add_argument("--repeats", type=int, default=3, help="independent searches per sampler")
    parser.add_argument("--samplers", nargs="+", default=["nsga2", "tpe", "random"], choices=SAMPLERS)
    parser.add_argument("--n-jobs", type=int, help="workers per search (default: one per core)")
    parser.add_argument("--summary-only", action="store_true", help="summarise the searches as they are; run none")
    args = parser.parse_args(argv)
    if "random" not in args.samplers:
        parser.error("--samplers must include random: it is the yardstick the others are compared with")
    quiet_libraries()
    base = load_study(args.study)
    workspace = open_workspace(base, progress=not args.summary_only)  # trains the shared baseline once if needed
    floor = workspace.profile.val_top1 - base.targets.max_accuracy_drop
    planned = arms(base.name, args.samplers, args.repeats, args.n_trials)
    if not args.summary_only:
        for arm in planned:
            print(f"\n=== {arm.label}: {arm.overrides['name']}", flush=True)
            run_arm(args.study, arm, args.n_jobs)
    searched = [(arm, found) for arm in planned if (found := arm_trials(args.study, arm))]
    if not searched:
        print("no search of this benchmark has run yet: run it without --summary-only")
        return 1
    common = min(len(finished_in_budget(found)) for _, found in searched)
    print(f"\nhypervolume of the trials reaching the accuracy floor {floor:.3f}, first {common} finished trials of each search")
    print(f"{'sampler':<8} {'searches':>8} {'hypervolume mean ± sd':>24} {'x random':>9} {'meet targets':>13}  seeds")
    by_sampler: dict[str, list[list[optuna.trial.FrozenTrial]]] = {}
    for arm, found in searched:
        by_sampler.setdefault(arm.sampler, []).append(found)
    scores = {sampler: [hypervolume_of_first(found, common, floor) for found in runs] for sampler, runs in by_sampler.items()}
    random_mean = statistics.mean(scores.get("random", [0.0]))
    for sampler, values in scores.items():
        mean = statistics.mean(values)
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        ratio = f"{mean / random_mean:.2f}" if random_mean > 0 else "n/a"
        meets = [sum(1 for r in records(finished_in_budget(found)[:common]) if r.meets_targets)
                 for found in by_sampler[sampler]]
        seeds = {r.sampler_seed for found in by_sampler[sampler] for r in records(found)} - {None}
        print(f"{sampler:<8} {len(values):>8} {mean:>14.4f} ± {sd:<7.4f} {ratio:>9} {statistics.mean(meets):>13.1f}  "
              f"{len(seeds)} distinct")
    return 0


if __name__ == "__main__":
    sys.exit(main())
