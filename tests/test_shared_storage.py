"""Shared studies on a real PostgreSQL server: several workers, one killed mid-trial, nothing lost."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest

from tests.conftest import REPO, TORCHSCRIPT_ARTIFACTS, cli_command
from udacisense.common.errors import UserError
from udacisense.common.files import sha256_of
from udacisense.common.local_postgres import create_database, drop_database, postgres_bin, postgres_server
from udacisense.search.cli import main
from udacisense.search.study.config import load_study
from udacisense.search.study.storage import open_storage, open_study
from udacisense.search.study.trial_record import TrialRecord

needs_postgres = pytest.mark.skipif(postgres_bin() is None, reason="needs Debian's postgresql (scripts/test installs it)")


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as url:
        yield url


def write_study(make, storage: str, n_trials: int, **edits: str) -> Path:
    """A smoke study (trained baseline included) on ``storage``, TorchScript artifacts: what is tested here is
    sharing, failing and resuming, not lowering."""
    storage_line = f'storage = "{storage}"\n' if storage else ""
    return make(edits={"n_trials = 4": f"n_trials = {n_trials}\nearly_stopping = false", **TORCHSCRIPT_ARTIFACTS,
                       'name = "smoke"': f'{storage_line}name = "smoke"', **edits})


@needs_postgres
def test_wrong_password_missing_server_and_unknown_study_are_clear_errors(postgres: str, seeded_smoke) -> None:
    with pytest.raises(UserError, match="password"):
        open_storage(postgres.replace("udaci-secret", "wrong") + "/postgres")
    with pytest.raises(UserError, match="server runs"):
        open_storage("postgresql://udaci:x@127.0.0.1:9/none")
    url = create_database(postgres, "udaci_unknown")
    try:
        study = load_study(write_study(seeded_smoke, url, 1))
        with pytest.raises(UserError, match="no study named 'smoke'"):
            open_study(study, create=False)
    finally:
        drop_database(postgres, "udaci_unknown")


def _running_trial_of(study: optuna.Study, pids: dict[int, subprocess.Popen],
                      training: bool = False) -> tuple[int, int] | None:
    """A trial that one of ``pids`` has been running for a few seconds (or, with ``training``, is fine-tuning)."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = int(str(trial.user_attrs.get("worker", ":0")).rsplit(":", 1)[1])
        started = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
        busy = bool(trial.user_attrs.get("curve")) if training else time.time() - started > 3
        if pid in pids and busy:
            return trial.number, pid
    return None


@needs_postgres
@pytest.mark.slow
def test_three_workers_one_killed_mid_trial_lose_nothing(postgres: str, seeded_smoke) -> None:
    n_trials = 5
    url = create_database(postgres, "udaci_workers")
    try:
        path = write_study(seeded_smoke, url, n_trials)
        assert main(["baseline", "--study", str(path), "--quiet"]) == 0  # trained once, reused by every worker
        config = load_study(path)
        study = open_study(config)  # created once here, joined by every worker
        workers = {}
        for index in range(3):
            process = subprocess.Popen(cli_command("worker", "--study", str(path), "--worker-index", str(index), "--quiet"),
                                       cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            workers[process.pid] = process
        victim = None
        deadline = time.time() + 300
        while victim is None and time.time() < deadline:
            victim = _running_trial_of(study, workers)
            time.sleep(0.5)
        assert victim is not None, "no trial started within 5 minutes"
        killed_trial, killed_pid = victim
        os.kill(killed_pid, signal.SIGKILL)
        for pid, process in workers.items():
            assert process.wait(timeout=900) == (-signal.SIGKILL if pid == killed_pid else 0)

        trials = study.get_trials()
        complete = [t for t in trials if t.state is optuna.trial.TrialState.COMPLETE]
        assert len(complete) == n_trials
        assert trials[killed_trial].state is optuna.trial.TrialState.FAIL
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed_trial]
        assert retries and retries[-1].state is optuna.trial.TrialState.COMPLETE
        assert retries[-1].params == trials[killed_trial].params
        assert len({tuple(sorted(t.params.items())) for t in complete}) == n_trials  # none counted twice
        for trial in complete:
            record = TrialRecord.of(trial)
            # A screened trial (never lowered) and a parity failure keep no artifact, by design.
            if not record.is_measured or not record.parity_ok:
                assert record.artifact_path is None
                continue
            assert sha256_of(trial.user_attrs["artifact_path"]) == trial.user_attrs["artifact_sha256"]
    finally:
        drop_database(postgres, "udaci_workers")


@pytest.mark.slow
def test_a_signal_fails_the_running_trial_cleanly_and_the_same_command_resumes(seeded_smoke) -> None:
    # Longer fine-tunes, so each interrupt lands in the training loop of a trial (not between trials).
    path = write_study(seeded_smoke, "", 2, **{"finetune_epochs = [1, 1]": 'finetune_epochs = [4, 4]\nrequired = ["channels"]'})
    config = load_study(path)
    assert main(["baseline", "--study", str(path), "--quiet"]) == 0
    study = open_study(config)
    # One worker process: the interrupted trial is found by this process's pid.
    command = cli_command("search", "--study", str(path), "--quiet", "--no-export", "--n-jobs", "1")
    victims = []
    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, then a scheduler's stop
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        victim = None
        deadline = time.time() + 300
        while victim is None and time.time() < deadline:
            victim = _running_trial_of(study, {process.pid: process}, training=True)
            time.sleep(0.3)
        assert victim is not None
        process.send_signal(signum)
        code, stderr = process.wait(timeout=120), process.stderr.read()
        assert code == 130, stderr[-2000:]
        # One paragraph from the tool; nothing from Optuna about the interrupted trial.
        assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
        assert stderr[stderr.index("interrupted:"):].count("\n") == 1 and "run the same command to resume" in stderr
        assert study.get_trials()[victim[0]].state is optuna.trial.TrialState.FAIL  # never left RUNNING
        victims.append(victim[0])

    assert subprocess.run(command, cwd=REPO, capture_output=True).returncode == 0
    trials = study.get_trials()
    complete = [t for t in trials if t.state is optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2
    # Each interrupted trial ran again later with its parameters and finished (a retry interrupted in turn is
    # queued again, traceable to the first trial it retries).
    for number in victims:
        assert any(t.number > number and t.state is optuna.trial.TrialState.COMPLETE
                   and t.params == trials[number].params for t in trials), number
