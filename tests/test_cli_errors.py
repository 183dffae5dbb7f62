"""What a user sees when something foreseeable goes wrong: one problem and one fix, never a traceback."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import socket
import sqlite3
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from tests.conftest import REPO, SHARED_ARCHIVE
from udacisense.common.errors import UserError, trial_problem
from udacisense.search import cli
from udacisense.search.cli import main
from udacisense.search.study.config import load_study
from udacisense.search.study.storage import open_study, storage_problem


def write_study(root: Path, extra: str = "") -> Path:
    path = root / "s.toml"
    path.write_text(f'runs_dir = "{root / "runs"}"\n' + (REPO / "studies" / "smoke.toml").read_text() + extra)
    return path


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def make_stored_study(root: Path) -> tuple[Path, Path]:
    """A study file and its SQLite storage holding the (empty) study, as `search` leaves it before any trial."""
    path = write_study(root)
    config = load_study(path)
    open_study(config)
    return path, config.run_dir / "study.db"


@pytest.mark.parametrize("command", [["front"], ["export", "--trial", "0", "--out", "OUT"], ["report", "--out", "OUT"],
                                     ["dashboard"]])
def test_read_only_commands_create_no_storage_or_folder(command: list[str], tmp_path: Path, capsys) -> None:
    path = write_study(tmp_path)
    missing = tmp_path / "nowhere" / "dir" / "x.db"
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in command]
    code, err = run(capsys, *argv, "--study", str(path), "--storage", f"sqlite:///{missing}")
    assert code == 2 and "fix:" in err
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_damaged_sqlite_gets_a_sqlite_hint_not_a_server_hint(tmp_path: Path, capsys) -> None:
    path, db = make_stored_study(tmp_path)
    db.write_bytes(b"not a database at all" * 400)
    code, err = run(capsys, "front", "--study", str(path))
    assert code == 2 and "is damaged (file is not a database)" in err and f"mv {db}" in err
    assert "server" not in err


def test_malformed_sqlite_is_reported_as_damaged(tmp_path: Path, capsys) -> None:
    path, db = make_stored_study(tmp_path)
    data = bytearray(db.read_bytes())
    page = 4096
    data[page:] = b"\xff" * (len(data) - page)  # every page but the header's: the schema's tables are garbage
    db.write_bytes(bytes(data))
    code, err = run(capsys, "front", "--study", str(path))
    assert code == 2 and "is damaged" in err and "malformed" in err, err


def test_locked_sqlite_says_who_holds_it_and_how_to_share(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    engine = sqlalchemy.create_engine(f"sqlite:///{db}", connect_args={"timeout": 0})
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError) as caught, engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT * FROM t"))
    finally:
        holder.close()
        engine.dispose()
    problem = storage_problem(caught.value, f"sqlite:///{db}")
    assert "locked" in problem.problem and "PostgreSQL" in problem.fix and "--storage" in problem.fix


def test_unreachable_postgres_gets_a_server_hint() -> None:
    with pytest.raises(UserError, match="server runs") as caught:
        open_study(load_study(REPO / "studies" / "smoke.toml"), "postgresql://u:p@127.0.0.1:9/none", create=False)
    assert "--storage" in caught.value.fix


@pytest.mark.parametrize("host, port, expected", [
    ("127.0.0.1", 80000, "not a TCP port number"),
    ("192.0.2.1", 8080, "not an address of this machine"),  # TEST-NET-1: never a local address
    ("127.0.0.1", None, "already in use"),
    ("no-such-host.invalid", 8080, "not a known host name"),  # .invalid never resolves (RFC 6761)
])
def test_dashboard_refuses_bad_ports_and_hosts_before_announcing(host: str, port: int | None, expected: str,
                                                                 tmp_path: Path, capsys) -> None:
    path, _ = make_stored_study(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = port or taken.getsockname()[1]
        code = main(["dashboard", "--study", str(path), "--host", host, "--port", str(port)])
    captured = capsys.readouterr()
    assert code == 2 and expected in captured.err and ("`--port" in captured.err or "`--host" in captured.err)
    assert "Traceback" not in captured.err and "http://" not in captured.out


def test_disk_full_is_a_problem_and_fix(tmp_path: Path, capsys, monkeypatch) -> None:
    def fill_the_disk(args) -> int:
        with open("/dev/full", "wb") as handle:  # a real ENOSPC from the kernel
            handle.write(b"x" * 65536)
            handle.flush()
        return 0

    monkeypatch.setattr(cli, "cmd_check", fill_the_disk)
    code, err = run(capsys, "check", "--study", str(write_study(tmp_path)))
    assert code == 2 and "The disk is full" in err and "runs_dir" in err


def test_a_real_bug_shows_its_traceback_and_asks_for_a_report(tmp_path: Path, capsys, monkeypatch) -> None:
    def bug(args) -> int:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "cmd_check", bug)
    assert main(["check", "--study", str(write_study(tmp_path))]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err and "please report it" in err


def test_narrowing_the_space_after_trials_names_the_keys_and_the_way_out(tmp_path: Path, capsys) -> None:
    path = write_study(tmp_path)
    config = load_study(path)
    study = open_study(config)
    trial = study.ask()
    trial.suggest_categorical("quant_backend", list(config.space.quant_backends.options))
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    path.write_text(path.read_text().replace('quant_backends = ["xnnpack", "x86"]', 'quant_backends = ["x86"]')
                    .replace("max_accuracy_drop = 0.5", "max_accuracy_drop = 0.2"))
    for command in (["search", "--no-export", "--quiet"], ["front"]):
        code, err = run(capsys, *command, "--study", str(path))
        assert code == 2 and "space.quant_backends" in err and "targets.max_accuracy_drop" in err, err
        assert "new `name`" in err and 'name = "smoke-2"' in err
    # The budget and sampler are not settings of the measurements: changing them continues the study.
    path.write_text(path.read_text().replace('quant_backends = ["x86"]', 'quant_backends = ["xnnpack", "x86"]')
                    .replace("max_accuracy_drop = 0.2", "max_accuracy_drop = 0.5").replace("n_trials = 4", "n_trials = 9"))
    assert open_study(load_study(path), create=False).trials


def test_missing_study_file_names_the_option(tmp_path: Path, capsys) -> None:
    code, err = run(capsys, "front", "--study", str(tmp_path / "nope.toml"))
    assert code == 2 and "with `--study`" in err


@pytest.mark.skipif(not SHARED_ARCHIVE.is_file(), reason="needs ../shared/data/cifar10-jpeg.tar.gz")
def test_verify_runs_from_any_directory_with_the_card_alone(smoke_study: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    shipped = tmp_path / "shipped"
    shutil.copytree(load_study(smoke_study).run_dir / "export", shipped)  # exported by `search`
    card = json.loads((shipped / "model_card.json").read_text())
    assert card["test_images"]["images"] and "study_file" not in card and "working_directory" not in card
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _ = run(capsys, "verify", str(Path("..") / "shipped" / card["artifact"]),
                  "--data", str(REPO / load_study(smoke_study).data.root))
    assert code == 0

    code, err = run(capsys, "verify", str(shipped / card["artifact"]))
    assert code == 2 and "`--data DIR`" in err and "test/<class>/" in err


def test_a_space_changed_under_a_study_without_recorded_settings_is_explained() -> None:
    study = optuna.create_study()
    study.ask().suggest_categorical("quant_backend", ["xnnpack", "x86"])
    with pytest.raises(ValueError) as caught:  # Optuna's own refusal, as a trial would meet it
        study.ask().suggest_categorical("quant_backend", ["x86"])
    problem = trial_problem(caught.value)
    assert problem is not None and "`[space]`" in problem.problem and "new `name`" in problem.fix
    assert trial_problem(ValueError("a bug in a stage")) is None


def test_optuna_reports_of_interrupted_or_user_fixable_trials_are_dropped() -> None:
    from udacisense.common.logs import quiet_libraries

    quiet_libraries()
    study = optuna.create_study()

    def interrupted(trial: optuna.Trial) -> float:
        raise KeyboardInterrupt

    def bug(trial: optuna.Trial) -> float:
        raise ZeroDivisionError

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]  # capture what it emits
    optuna.logging.get_logger("optuna").addHandler(handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            study.optimize(interrupted, n_trials=1)
        assert records == []
        study.optimize(bug, n_trials=1, catch=(Exception,))
        assert any("Trial 1 failed" in r for r in records)  # a real bug is still reported
    finally:
        optuna.logging.get_logger("optuna").removeHandler(handler)


def test_a_user_error_survives_the_trip_back_from_a_worker_process() -> None:
    error = pickle.loads(pickle.dumps(UserError("the problem", "the fix")))
    assert (error.problem, error.fix, str(error)) == ("the problem", "the fix", "the problem\n  fix: the fix")
