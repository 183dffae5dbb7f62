"""Shared studies on a real PostgreSQL server: several workers, one killed mid-trial, nothing lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from common.errors import UserError
from common.files import sha256_of
from search.cli import main
from search.storage import open_storage, open_study
from search.study import load_study
from tests.conftest import REPO, SHARED_ARCHIVE
from tests.postgres import create_database, drop_database, postgres_bin, postgres_server

pytestmark = pytest.mark.skipif(postgres_bin() is None, reason="needs Debian's postgresql (scripts/test installs it)")


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    with postgres_server(tmp_path_factory.mktemp("pg")) as url:
        yield url


def write_study(root: Path, storage: str, n_trials: int) -> Path:
    path = root / "shared.toml"
    text = (REPO / "studies" / "smoke.toml").read_text()
    text = text.replace("n_trials = 4", f"n_trials = {n_trials}\nearly_stopping = false")
    path.write_text(f'runs_dir = "{root / "runs"}"\nstorage = "{storage}"\n' + text)
    return path


def test_wrong_password_missing_server_and_unknown_study_are_clear_errors(postgres: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="password"):
        open_storage(postgres.replace("udaci-secret", "wrong") + "/postgres")
    with pytest.raises(UserError, match="server runs"):
        open_storage("postgresql://udaci:x@127.0.0.1:9/none")
    url = create_database(postgres, "udaci_unknown")
    try:
        study = load_study(write_study(tmp_path, url, 1))
        with pytest.raises(UserError, match="no study named 'smoke'"):
            open_study(study, create=False)
    finally:
        drop_database(postgres, "udaci_unknown")


def _running_trial_of(study: optuna.Study, pids: dict[int, subprocess.Popen]) -> tuple[int, int] | None:
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = int(str(trial.user_attrs.get("worker", ":0")).rsplit(":", 1)[1])
        started = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
        if pid in pids and time.time() - started > 3:
            return trial.number, pid
    return None


@pytest.mark.skipif(not SHARED_ARCHIVE.is_file(), reason="needs ../shared/data/cifar10-jpeg.tar.gz")
def test_three_workers_one_killed_mid_trial_lose_nothing(postgres: str, tmp_path: Path) -> None:
    n_trials = 5
    url = create_database(postgres, "udaci_workers")
    try:
        path = write_study(tmp_path, url, n_trials)
        assert main(["baseline", "--study", str(path), "--quiet"]) == 0  # trained once, reused by every worker
        config = load_study(path)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        workers = {}
        for index in range(3):
            process = subprocess.Popen([sys.executable, "-m", "search.cli", "worker", "--study", str(path),
                                        "--worker-index", str(index), "--quiet"], cwd=REPO, env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            workers[process.pid] = process
        study = optuna.load_study(study_name=config.name, storage=url)
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
            assert sha256_of(trial.user_attrs["artifact_path"]) == trial.user_attrs["artifact_sha256"]
    finally:
        drop_database(postgres, "udaci_workers")
