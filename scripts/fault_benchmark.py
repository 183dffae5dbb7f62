"""Fault benchmark: N workers on a real PostgreSQL server, K random SIGKILLs and SIGINTs during trials.

    .venv/bin/python scripts/fault_benchmark.py --study studies/smoke.toml --workers 3 --kills 3

Starts a throwaway PostgreSQL server (the one the tests use, Debian's postgresql package), trains
the study's baseline once, then runs N ``udacisense worker`` processes on one shared study. Each
time a worker has been in a trial for a few seconds, one of them is sent SIGKILL or SIGINT (chosen
at random) and a fresh worker takes its place, K times. When the workers are done it checks that
the complete trials equal the budget, no trial is left RUNNING, every retry has its original's
parameters, every artifact matches its sha256, and all configurations are distinct; prints both
tables and exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import optuna

from udacisense.common.files import sha256_of
from udacisense.common.local_postgres import create_database, postgres_bin, postgres_server
from udacisense.search.study.config import load_study
from udacisense.search.study.storage import open_study
from udacisense.search.study.trial_record import TrialRecord, records

TrialState = optuna.trial.TrialState
SIGNALS = (signal.SIGKILL, signal.SIGINT)
BUSY_SECONDS = 3.0  # a trial this old is past sampling: the fault lands inside its work


@dataclass(frozen=True)
class Fault:
    trial: int
    pid: int
    signal: str
    exit_code: int


def worker_command(study: Path, index: int) -> list[str]:
    return [sys.executable, "-m", "udacisense.search.cli", "worker", "--study", str(study), "--worker-index", str(index),
            "--quiet"]


def shared_study_file(source: Path, root: Path, url: str) -> Path:
    """A copy of ``source`` whose storage is ``url`` and whose runs live under ``root``."""
    text = source.read_text(encoding="utf-8")
    clashing = {"storage", "runs_dir"} & tomllib.loads(text).keys()
    if clashing:
        raise SystemExit(f"{source} sets {', '.join(sorted(clashing))}; the benchmark sets these itself.")
    path = root / source.name
    path.write_text(f'storage = "{url}"\nruns_dir = "{root / "runs"}"\n{text}', encoding="utf-8")
    return path


def busy_trial(study: optuna.Study, pids: set[int]) -> tuple[int, int] | None:
    """(trial, pid) of a trial a live worker has been running for a while."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = int((TrialRecord.of(trial).worker or ":0").rsplit(":", 1)[1])
        started = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
        if pid in pids and time.time() - started > BUSY_SECONDS:
            return trial.number, pid
    return None


def run_with_faults(study_file: Path, workers: int, kills: int, rng: random.Random, timeout: float) -> list[Fault]:
    study = open_study(load_study(study_file))  # created once here, joined by every worker
    running = {}
    for index in range(workers):
        process = subprocess.Popen(worker_command(study_file, index), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        running[process.pid] = process
    faults: list[Fault] = []
    deadline = time.time() + timeout
    next_index = workers
    while time.time() < deadline and any(p.poll() is None for p in running.values()):
        live = {pid for pid, p in running.items() if p.poll() is None}
        target = busy_trial(study, live) if len(faults) < kills else None
        if target is None:
            time.sleep(0.5)
            continue
        number, pid = target
        chosen = rng.choice(SIGNALS)
        running[pid].send_signal(chosen)
        faults.append(Fault(number, pid, chosen.name, running[pid].wait(timeout=300)))
        replacement = subprocess.Popen(worker_command(study_file, next_index), stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        running[replacement.pid] = replacement
        next_index += 1
    for process in running.values():
        process.wait(timeout=max(1.0, deadline - time.time()))
    return faults


def checks(study: optuna.Study, budget: int) -> dict[str, tuple[bool, str]]:
    trials = study.get_trials()
    complete = [t for t in trials if t.state is TrialState.COMPLETE]
    running = [t.number for t in trials if t.state is TrialState.RUNNING]
    retries = [t for t in trials if t.system_attrs.get("failed_trial") is not None]
    bad_retries = [t.number for t in retries if t.params != trials[t.system_attrs["failed_trial"]].params]
    # A trial failing parity keeps no artifact, by design.
    bad_artifacts = [r.number for r in records(complete) if r.parity_ok
                     and (r.artifact_path is None or sha256_of(r.artifact_path) != r.artifact_sha256)]
    distinct = len({tuple(sorted(t.params.items())) for t in complete})
    return {
        "complete trials equal the budget": (len(complete) == budget, f"{len(complete)} of {budget}"),
        "no trial left RUNNING": (not running, f"running: {running or 'none'}"),
        "every retry has its original's params": (not bad_retries, f"{len(retries)} retries, differing: {bad_retries or 'none'}"),
        "every artifact matches its sha256": (not bad_artifacts, f"{len(complete)} artifacts, mismatched: {bad_artifacts or 'none'}"),
        "all configurations distinct": (distinct == len(complete), f"{distinct} distinct of {len(complete)}"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/smoke.toml")
    parser.add_argument("--workers", type=int, default=3, help="worker processes at any time (N)")
    parser.add_argument("--kills", type=int, default=3, help="faults to inject during trials (K)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the choice of signals")
    parser.add_argument("--timeout-minutes", type=float, default=60)
    args = parser.parse_args(argv)
    if postgres_bin() is None:
        raise SystemExit("needs Debian's postgresql package (`apt-get install postgresql`, as scripts/test does as root)")
    with tempfile.TemporaryDirectory(prefix="udaci-fault-") as root, postgres_server() as admin_url:
        study_file = shared_study_file(Path(args.study), Path(root), create_database(admin_url, "udaci_faults"))
        baseline = subprocess.run([sys.executable, "-m", "udacisense.search.cli", "baseline", "--study", str(study_file),
                                   "--quiet"])
        if baseline.returncode:
            return baseline.returncode
        started = time.perf_counter()
        faults = run_with_faults(study_file, args.workers, args.kills, random.Random(args.seed), args.timeout_minutes * 60)
        minutes = (time.perf_counter() - started) / 60
        config = load_study(study_file)
        results = checks(open_study(config, create=False), config.search.n_trials)
    print(f"\n{args.workers} workers, {len(faults)} of {args.kills} faults injected, {minutes:.1f} min\n")
    print("| trial | worker pid | signal | worker exit code |\n|---|---|---|---|")
    for fault in faults:
        print(f"| {fault.trial} | {fault.pid} | {fault.signal} | {fault.exit_code} |")
    print("\n| check | result | detail |\n|---|---|---|")
    for name, (passed, detail) in results.items():
        print(f"| {name} | {'pass' if passed else 'FAIL'} | {detail} |")
    return 0 if all(passed for passed, _ in results.values()) and len(faults) == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
