"""Benchmark: a real search on a study, and the default sampler against random sampling.

    .venv/bin/python scripts/search_benchmark.py --study studies/cifar10-offline.toml [--n-trials N] [--n-jobs K]

(Samplers are compared by scripts/sampler_benchmark.py.)

Prints the Pareto front, wall time, trials complete/pruned/failed, the training time early stopping
saved (the epochs the trials it stopped had left; see ``report.trial_facts.remaining_training``), (with
--false-stops N) how many of a random sample of N trials early stopping stopped (halved, during or
before training) reached the accuracy floor when replayed to the end with the same parameters and seed,
screening off (``search.workers.false_stops``; the count is stored on the study for the report), and
how often a trial's leading stages repeated an earlier trial's exactly (what a cache of stage results
could have reused). The hypervolume and the target count are over measured trials only: a screened
trial's values are estimates.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import optuna

from udacisense.common.logs import quiet_libraries
from udacisense.search.cli import main as cli_main
from udacisense.search.report.search_sections import false_stops_line
from udacisense.search.report.trial_facts import early_stopping_savings, state_counts
from udacisense.search.results.hypervolume import hypervolume
from udacisense.search.study.budget import finished_in_budget, is_rejected
from udacisense.search.study.config import load_study
from udacisense.search.study.records import StudyRecord
from udacisense.search.study.storage import open_study
from udacisense.search.study.trial_record import records
from udacisense.search.workers.false_stops import measure_false_stops
from udacisense.search.workers.runner import run_search


def prefix_reuse(trials: list[optuna.trial.FrozenTrial]) -> dict:
    """Trials whose leading stages (same configs, hence same input) equal an earlier trial's, and the
    stage seconds a cache would have saved: the case for (or against) caching stage results."""
    seen: set[tuple[str, ...]] = set()
    hits, saved, total, counted = 0, 0.0, 0.0, 0
    for record in sorted(records(trials), key=lambda r: r.number):
        stages = record.stages
        if not stages:
            continue
        counted += 1
        descriptions = tuple(stage["description"] for stage in stages)
        total += sum(stage["seconds"] for stage in stages)
        shared = next((m for m in range(len(descriptions), 0, -1) if descriptions[:m] in seen), 0)
        if shared:
            hits += 1
            saved += sum(stage["seconds"] for stage in stages[:shared])
        seen.update(descriptions[:m] for m in range(1, len(descriptions) + 1))
    return {"trials": counted, "hits": hits, "stage_seconds": total, "reusable_seconds": saved}


def summarise(study_path: str, overrides: dict) -> dict:
    config = load_study(study_path, overrides)
    study = open_study(config, create=False)
    trials = study.get_trials()
    finished = finished_in_budget(trials)
    measured = [r for r in records(trials) if r.is_measured]
    return {
        "study": config.name, "sampler": config.search.sampler, "trials": state_counts(records(trials)),
        "rejected_orders": sum(1 for t in trials if is_rejected(t)),
        "meets_all_targets": sum(1 for r in measured if r.meets_targets),
        "hypervolume": hypervolume([r.values for r in measured]) if measured else 0.0,
        "early_stopping": early_stopping_savings(records(trials), StudyRecord.of(study).false_stops),
        "prefix_reuse": prefix_reuse(trials),
        "wall_seconds": (max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)).total_seconds()
        if finished else 0.0,
    }


def run(study_path: str, overrides: dict, n_jobs: int, summary_only: bool) -> dict:
    if not summary_only:
        run_search(study_path, n_jobs=n_jobs, overrides=overrides, progress=True)
    return summarise(study_path, overrides)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/cifar10-offline.toml")
    parser.add_argument("--n-trials", type=int, help="override the study's budget")
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--summary-only", action="store_true", help="summarise the studies as they are; run no trials")
    parser.add_argument("--false-stops", type=int, default=0, metavar="N",
                        help="replay a random sample of N trials early stopping stopped to the end, screening off, "
                             "and count false stops")
    args = parser.parse_args(argv)
    quiet_libraries()
    overrides = {"search.n_trials": args.n_trials} if args.n_trials else {}
    result = run(args.study, overrides, args.n_jobs, args.summary_only)
    cli_main(["front", "--study", args.study] if not overrides else ["check", "--study", args.study])
    print(f"\n{result['study']} ({result['sampler']}): {result['trials']}; first start to last finish "
          f"{result['wall_seconds'] / 60:.1f} min")
    print(f"  rejected orders (no compute): {result['rejected_orders']}; measured and meeting all targets: "
          f"{result['meets_all_targets']}")
    print(f"  hypervolume of the measured trials {result['hypervolume']:.4f}")
    savings = result["early_stopping"]
    print(f"  early stopping stopped {savings.stopped} trial(s) (before or during training); the "
          f"{savings.epochs_left} fine-tune epoch(s) they had left cost an estimated {savings.saved:.0f} s "
          f"({savings.uncosted_epochs} epoch(s) of stage kinds without a measured time between epoch ends not costed); "
          f"below-floor stops, which happen whatever early stopping is set to, not counted")
    reuse = result["prefix_reuse"]
    print(f"  leading stages equal to an earlier trial's: {reuse['hits']} of {reuse['trials']} trials; a stage cache "
          f"would have saved {reuse['reusable_seconds']:.0f} s of {reuse['stage_seconds']:.0f} s in stages")
    if args.false_stops:
        measured = measure_false_stops(args.study, args.false_stops, overrides=overrides, n_jobs=args.n_jobs)
        print(f"\n{false_stops_line(dataclasses.replace(savings, false_stops=measured))} (stored on the study for the report)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
