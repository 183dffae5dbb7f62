"""Benchmark: searches side by side, several independent searches per arm, at equal budget or equal wall time.

    .venv/bin/python scripts/sampler_benchmark.py --study studies/cifar10-offline.toml \
        --n-trials 24 --repeats 3 --arms nsga2 tpe random [--n-jobs K] [--summary-only]
    .venv/bin/python scripts/sampler_benchmark.py --study studies/screening-benchmark.toml \
        --minutes 6 --repeats 3 --arms study random

An arm is a sampler alone (``nsga2``, ``tpe``, ``random``, ``nsga3``: screening and halving off, no portfolio, every
trained candidate lowered and measured) or ``study``: the study's own ``[search]`` (its sampler, screening,
halving and portfolio), what ``udacisense search`` runs. Each (arm, repeat) is its own study
(``<name>-<arm>-<repeat>``) on the same baseline (copied, not retrained). With ``--n-trials`` the arms also share
the students, distilled once before them: an equal trial budget compares sampling, not distilling. With
``--minutes`` each search distils its own in its time (and probes, opening trials first, in it), as
``udacisense search`` does from a user's trained model: which students to distil, and when, is part of what the
``study`` arm is compared on (un-probed arms distil every student their space lists, in order, while their other
workers run trials that need none). Every search process
draws its own sampler seed (recorded in each trial's ``sampler_seed``), so no two searches share a first
generation. The score is the hypervolume of the measured trials that reach the accuracy floor (what a user
can ship): with ``--n-trials``, among the first N finished trials of each search, N the smallest number any
search finished (a search cut short still compares fairly); with ``--minutes``, of everything each search
measured in that wall time. Two reference points: the study's (accuracy from 0, ratios up to 2), and the
targets' region (accuracy from the floor, latency and bytes up to their allowances) of the trials that meet every
target, parity included: what a user could ship, which separates fronts that all meet the targets. Prints mean
± sd per arm and the ratio of each mean to random's. A search whose study has trials is kept, never extended: a
benchmark run again runs only the searches it lacks (delete a search's runs folder to run it again).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from dataclasses import dataclass

import optuna

from udacisense.common.errors import UserError
from udacisense.common.logs import quiet_libraries
from udacisense.search.results.hypervolume import hypervolume, hypervolume_of_first, measured_values, target_region
from udacisense.search.study.budget import finished_in_budget
from udacisense.search.study.config import load_study
from udacisense.search.study.storage import open_study
from udacisense.search.study.trial_record import records
from udacisense.search.study.workspace import open_workspace
from udacisense.search.workers.runner import run_search
from udacisense.search.workers.students import train_students

SAMPLERS = ("nsga2", "tpe", "random", "nsga3")
ARMS = (*SAMPLERS, "study")
STARTED = "benchmark_started"  # study attribute: when the arm started (epoch seconds), its probes included
# What a sampler arm changes: the sampler, and nothing else the study's search adds to it (no probes either).
PLAIN = {"search.screening": False, "search.portfolio": [], "search.halving_rate": 0, "search.probes": False}


@dataclass(frozen=True)
class Arm:
    name: str
    repeat: int
    overrides: dict[str, object]

    @property
    def label(self) -> str:
        return f"{self.name} #{self.repeat}"


def arms(base_name: str, names: list[str], repeats: int, n_trials: int | None, minutes: float | None) -> list[Arm]:
    # Equal wall time: the time limit ends every search, never the trial budget.
    # Every arm runs its whole budget: none ends on a plateau of its front.
    budget = {"search.n_trials": 100_000, "search.timeout_minutes": minutes} if minutes else (
        {"search.n_trials": n_trials} if n_trials else {})
    budget["search.plateau_minutes"] = 0
    return [Arm(name, repeat, {**budget, "name": f"{base_name}-{name}-{repeat}",
                               **({} if name == "study" else {**PLAIN, "search.sampler": name})})
            for repeat in range(repeats) for name in names]  # interleaved: load drifts hit every arm alike


def run_arm(study_path: str, arm: Arm, n_jobs: int | None, shared_students: bool) -> None:
    """Run one search. With a time limit, the arm's opening trials and probes are part of its time, as in every
    search (``runner.search_deadline``)."""
    base, config = load_study(study_path), load_study(study_path, arm.overrides)
    # Same baseline (and shared students) for every arm: reused because their settings keys match.
    for folder in ("baseline", "students") if shared_students else ("baseline",):
        if (base.run_dir / folder).is_dir():
            shutil.copytree(base.run_dir / folder, config.run_dir / folder, dirs_exist_ok=True)
    study = open_study(config)
    started = time.time()
    study.set_user_attr(STARTED, started)
    run_search(study_path, n_jobs=n_jobs, overrides=arm.overrides, progress=True)


def minutes_to_first_target_meeting(study_path: str, arm: Arm, trials: list[optuna.trial.FrozenTrial]) -> float | None:
    """Minutes from the arm's start (its probes included) to its first measured trial meeting every target."""
    started = open_study(load_study(study_path, arm.overrides), create=False).user_attrs.get(STARTED)
    done = [t.datetime_complete.timestamp() for t, r in zip(trials, records(trials), strict=True)
            if r.is_measured and r.meets_targets and t.datetime_complete is not None]
    return None if started is None or not done else (min(done) - started) / 60


def arm_trials(study_path: str, arm: Arm) -> list[optuna.trial.FrozenTrial]:
    try:
        return open_study(load_study(study_path, arm.overrides), create=False).get_trials()
    except UserError:  # an arm not run yet (summary of a partial benchmark): no storage or no study
        return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/cifar10-offline.toml")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--n-trials", type=int, help="equal budget: trials of every search (default: the study's)")
    budget.add_argument("--minutes", type=float, help="equal wall time: minutes of every search, whatever it completes")
    parser.add_argument("--repeats", type=int, default=3, help="independent searches per arm")
    parser.add_argument("--arms", "--samplers", nargs="+", default=["nsga2", "tpe", "random"], choices=ARMS,
                        help="samplers alone (screening and halving off, no portfolio), or `study`: the study's own search")
    parser.add_argument("--n-jobs", type=int, help="workers per search (default: one per core)")
    parser.add_argument("--summary-only", action="store_true", help="summarise the searches as they are; run none")
    args = parser.parse_args(argv)
    if "random" not in args.arms:
        parser.error("--arms must include random: it is the yardstick the others are compared with")
    quiet_libraries()
    base = load_study(args.study)
    workspace = open_workspace(base, progress=not args.summary_only)  # trains the shared baseline once if needed
    shared_students = not args.minutes
    if not args.summary_only and shared_students:
        train_students(workspace)  # once, before any arm: the arms compare sampling, not distilling
    floor = workspace.profile.val_top1 - base.targets.max_accuracy_drop
    planned = arms(base.name, args.arms, args.repeats, args.n_trials, args.minutes)
    if not args.summary_only:
        for arm in planned:
            if arm_trials(args.study, arm):
                # Resumed after an interruption, or adding an arm: a search is never extended past its budget.
                print(f"\n=== {arm.label}: {arm.overrides['name']} has searched already; kept as it is (delete its "
                      "runs folder to search it again)", flush=True)
                continue
            print(f"\n=== {arm.label}: {arm.overrides['name']}", flush=True)
            run_arm(args.study, arm, args.n_jobs, shared_students)
    searched = [(arm, found) for arm in planned if (found := arm_trials(args.study, arm))]
    if not searched:
        print("no search of this benchmark has run yet: run it without --summary-only")
        return 1
    common = (max if args.minutes else min)(len(finished_in_budget(found)) for _, found in searched)
    scope = (f"everything each search measured in {args.minutes:g} min" if args.minutes
             else f"first {common} finished trials of each search")
    region = target_region(floor, base.targets)
    print(f"\nhypervolume of the measured trials reaching the accuracy floor {floor:.3f}, {scope}: against the study's "
          f"reference (accuracy from 0, ratios up to 2), and of those meeting every target (parity included) in the "
          f"targets' region (accuracy from the floor, latency up to x{region[1]:.2f}, bytes up to x{region[2]:.2f})")
    print(f"{'arm':<8} {'searches':>8} {'hypervolume mean ± sd':>24} {'x random':>9} {'in targets mean ± sd':>24} "
          f"{'x random':>9} {'meet targets':>13} {'finished':>9} {'measured':>9} {'first .pte min':>15}  seeds")
    by_arm: dict[str, list[list[optuna.trial.FrozenTrial]]] = {}
    first_pte: dict[str, list[float | None]] = {}
    for arm, found in searched:
        by_arm.setdefault(arm.name, []).append(found)
        first_pte.setdefault(arm.name, []).append(minutes_to_first_target_meeting(args.study, arm, found))
    scores = {name: [hypervolume_of_first(found, common, floor) for found in runs] for name, runs in by_arm.items()}
    in_region = {name: [hypervolume_of_first(found, common, floor, region, shippable=True) for found in runs]
                 for name, runs in by_arm.items()}
    for name in by_arm:
        firsts = [records(finished_in_budget(found)[:common]) for found in by_arm[name]]
        meets = [sum(1 for r in first if r.meets_targets) for first in firsts]
        finished = [len(first) for first in firsts]
        measured = [sum(1 for r in first if r.is_measured) for first in firsts]
        seeds = {r.sampler_seed for found in by_arm[name] for r in records(found)} - {None}
        print(f"{name:<8} {len(scores[name]):>8} {_against_random(scores, name)} {_against_random(in_region, name)} "
              f"{statistics.mean(meets):>13.1f} {statistics.mean(finished):>9.1f} {statistics.mean(measured):>9.1f} "
              f"{_minutes(first_pte[name]):>15}  {len(seeds)} distinct")
    print("first .pte min: minutes from a search's start, its probes included, to its first measured trial meeting "
          "every target (each search's, then the arm's mean; 'none' for a search that found none)")
    print(_ceiling(scores, by_arm, common, floor))
    return 0


def _ceiling(scores: dict[str, list[float]], by_arm: dict[str, list[list[optuna.trial.FrozenTrial]]], common: int,
             floor: float) -> str:
    """What the study's reference can credit at most: the most accurate measured trial of any search, at no latency
    and no bytes. Fronts near it differ little there, whatever their costs (then compare in the targets' region)."""
    accuracies = [values[0] for runs in by_arm.values() for found in runs for values in measured_values(found, common, floor)]
    if not accuracies:
        return "no search measured a trial reaching the floor"
    ceiling = hypervolume([(max(accuracies), 0.0, 0.0)])
    shares = ", ".join(f"{name}'s mean is {statistics.mean(values) / ceiling:.0%} of it" for name, values in scores.items())
    return (f"ceiling of the study's reference: {ceiling:.4f} (the most accurate measured trial of any search, top-1 "
            f"{max(accuracies):.3f}, at no latency and no bytes); {shares}")


def _against_random(scores: dict[str, list[float]], name: str) -> str:
    """An arm's mean ± sd, and its mean over random's."""
    values, random_mean = scores[name], statistics.mean(scores.get("random", [0.0]))
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    ratio = f"{statistics.mean(values) / random_mean:.2f}" if random_mean > 0 else "n/a"
    return f"{statistics.mean(values):>14.4f} ± {sd:<7.4f} {ratio:>9}"


def _minutes(values: list[float | None]) -> str:
    shown = " ".join("none" if v is None else f"{v:.1f}" for v in values)
    found = [v for v in values if v is not None]
    return f"{statistics.mean(found):.1f} ({shown})" if found else f"- ({shown})"


if __name__ == "__main__":
    sys.exit(main())
