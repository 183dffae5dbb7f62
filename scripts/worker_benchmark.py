"""Benchmark: trials completed per minute with 1, 2, 3, ... local worker processes on one study.

    .venv/bin/python scripts/worker_benchmark.py --study studies/smoke.toml --workers 1 2 3 --n-trials 8

Each worker count gets a fresh study (``<name>-workers-K``) with the same budget and the same trained
baseline, run by ``run_search(n_jobs=K)`` exactly as ``udacisense search --n-jobs K`` does. Prints
wall time, trials per minute and the trials' states, and writes a CSV next to the studies' runs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time

import pandas as pd

from udacisense.common.files import write_text
from udacisense.common.logs import quiet_libraries
from udacisense.search.report.trial_facts import state_counts
from udacisense.search.study.config import load_study
from udacisense.search.study.storage import open_study
from udacisense.search.study.workspace import open_workspace
from udacisense.search.workers.runner import run_search


def measure(study_path: str, workers: int, n_trials: int) -> dict:
    base = load_study(study_path)
    overrides = {"name": f"{base.name}-workers-{workers}", "search.n_trials": n_trials}
    config = load_study(study_path, overrides)
    if config.run_dir.exists():
        raise SystemExit(f"{config.run_dir} exists from an earlier run; delete it to measure again.")
    # Same baseline for every worker count: its checkpoint is reused because its settings key matches.
    shutil.copytree(base.run_dir / "baseline", config.run_dir / "baseline")
    started = time.perf_counter()
    run_search(study_path, n_jobs=workers, overrides=overrides, progress=False)
    minutes = (time.perf_counter() - started) / 60
    trials = open_study(config, create=False).get_trials()
    states = state_counts(trials)
    finished = states["complete"] + states["pruned"]
    return {"workers": workers, "minutes": round(minutes, 2), "trials_finished": finished,
            "complete": states["complete"], "pruned": states["pruned"], "failed": states["fail"],
            "running_left": states["running"], "trials_per_minute": round(finished / minutes, 2),
            "complete_per_minute": round(states["complete"] / minutes, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/smoke.toml")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--n-trials", type=int, default=8)
    args = parser.parse_args(argv)
    quiet_libraries()
    base = load_study(args.study)
    open_workspace(base, progress=True)  # train the shared baseline once, outside the timed runs
    rows = []
    for workers in args.workers:
        rows.append(measure(args.study, workers, args.n_trials))
        print(rows[-1], flush=True)
    out = base.run_dir / "worker_benchmark.csv"
    write_text(out, pd.DataFrame(rows).to_csv(index=False))
    print("\n| workers | minutes | finished (complete+pruned) | trials/min | complete/min | failed | left running |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['workers']} | {row['minutes']} | {row['trials_finished']} ({row['complete']}+{row['pruned']}) "
              f"| {row['trials_per_minute']} | {row['complete_per_minute']} | {row['failed']} | {row['running_left']} |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
