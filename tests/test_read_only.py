"""Read-only commands only read: `front`, `report`, `verify` and `check` need neither the study's data nor its
baseline, train and extract nothing, and create nothing outside their declared outputs (folders listed before
and after); the study's database stays byte-identical, and one that holds no study is refused, not given
Optuna's tables. `export` writes the re-timed front it picks on and says which rows it could not re-time."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import sqlite3
from pathlib import Path
from typing import Any

import optuna
import pytest
from PIL import Image

from tests.conftest import REPO, SHARED_ARCHIVE, smoke_study_file
from udacisense.search.cli import main
from udacisense.search.results.export import artifact_problem, retime_front
from udacisense.search.results.front import front_trials, trials_table
from udacisense.search.study.config import load_study
from udacisense.search.study.records import StudyAttr, store_study
from udacisense.search.study.trial_record import TrialRecord
from udacisense.search.study.workspace import open_workspace
from udacisense.search.trial.measuring import Yardstick

needs_archive = pytest.mark.skipif(not SHARED_ARCHIVE.is_file(), reason="needs ../shared/data/cifar10-jpeg.tar.gz")


def listing(*roots: Path) -> set[str]:
    """Every file and folder under ``roots``."""
    return {str(path) for root in roots for path in root.rglob("*")}


def fresh_clone(smoke_study: Path, where: Path) -> Path:
    """A folder as a fresh clone would be, holding only the shipped smoke study file and a copy of the searched
    study's database: `runs/` and `data/` are relative to it and absent."""
    where.mkdir()
    shutil.copyfile(load_study(smoke_study).run_dir / "study.db", where / "copy.db")
    (where / "smoke.toml").write_text('storage = "sqlite:///copy.db"\n' + (REPO / "studies" / "smoke.toml").read_text())
    return where


def stored_attrs(smoke_study: Path) -> dict[str, Any]:
    config = load_study(smoke_study)
    return optuna.load_study(study_name=config.name, storage=config.storage_url).user_attrs


def strings(value: Any) -> list[str]:
    """Every string in a JSON document, keys included."""
    if isinstance(value, dict):
        return [*value.keys(), *(s for item in value.values() for s in strings(item))]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return [value] if isinstance(value, str) else []


@needs_archive
def test_front_reads_a_copied_database_alone_and_creates_nothing(smoke_study: Path, tmp_path: Path, monkeypatch,
                                                                  capsys) -> None:
    clone = fresh_clone(smoke_study, tmp_path / "clone")
    monkeypatch.chdir(clone)
    before = listing(tmp_path)
    assert main(["front", "--study", "smoke.toml"]) == 0
    printed = capsys.readouterr().out
    assert listing(tmp_path) == before
    assert not [name for name in ("runs", "data", "cache") if (clone / name).exists()]
    # The front and the baseline's accuracy, both read from the copied storage.
    config = load_study(smoke_study)
    front = front_trials(optuna.load_study(study_name=config.name, storage=config.storage_url).trials)
    # Each front trial is a row, or named as left off for missing a cost target (which trials miss one depends on
    # the machine's timings).
    rows = {int(line.split()[0]) for line in printed.splitlines()[1:] if line.split() and line.split()[0].isdigit()}
    named = re.search(r"left off, Pareto-optimal but missing one: trial\(s\) ([\d, ]+)", printed)
    left_off = {int(n) for n in named.group(1).split(", ")} if named else set()
    assert rows and not rows & left_off and rows | left_off == {t.number for t in front}
    baseline = json.loads((config.run_dir / "baseline" / "metrics.json").read_text())
    assert f"baseline val top-1 {baseline['accuracy']['val']['top1']:.3f}" in printed

    assert main(["front", "--study", "smoke.toml", "--out", str(tmp_path / "front")]) == 0  # its declared output
    assert listing(tmp_path) - before == listing(tmp_path / "front") | {str(tmp_path / "front")}
    assert {p.name for p in (tmp_path / "front").iterdir()} == {"pareto_front.csv", "pareto_front.json", "pareto_front.png"}


@needs_archive
def test_report_reads_the_storage_alone_and_writes_only_into_its_out_folder(smoke_study: Path, tmp_path: Path,
                                                                            monkeypatch) -> None:
    clone = fresh_clone(smoke_study, tmp_path / "clone")
    monkeypatch.chdir(clone)
    out = tmp_path / "report"
    searched = load_study(smoke_study).run_dir
    before, before_runs = listing(tmp_path), listing(searched)
    assert main(["report", "--study", "smoke.toml", "--out", str(out)]) == 0
    assert listing(tmp_path) - before == listing(out) | {str(out)} and before <= listing(tmp_path)
    assert listing(searched) == before_runs
    markdown = (out / "report.md").read_text(encoding="utf-8")
    # No runs/ here: the baseline's measurements and the export's model card are the ones stored with the study.
    assert "Source: the study storage" in markdown
    card = stored_attrs(smoke_study)[StudyAttr.EXPORTED_CARD.value]
    assert f"`{card['sha256']}` (the export folder is not on this machine" in markdown


@needs_archive
def test_verify_needs_only_the_export_folder_and_the_listed_images(smoke_study: Path, tmp_path: Path, monkeypatch,
                                                                   capsys) -> None:
    config = load_study(smoke_study)
    shipped = tmp_path / "shipped"
    shutil.copytree(config.run_dir / "export", shipped)  # exported by `search`
    card = json.loads((shipped / "model_card.json").read_text())
    artifact = shipped / card["artifact"]
    # Exactly the images the card lists, under a data root of their own: nothing else of the study is here.
    data = tmp_path / "data"
    for image in card["test_images"]["images"]:
        (data / image["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / config.data.root / image["path"], data / image["path"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    before = listing(tmp_path)

    assert main(["verify", str(artifact), "--data", str(data)]) == 0
    assert f"on {card['test_images']['count']} test images" in capsys.readouterr().out
    assert main(["verify", str(artifact)]) == 2
    err = capsys.readouterr().err
    assert "`--data DIR`" in err and "test/<class>/<file>" in err
    assert main(["verify", str(artifact), "--data", str(elsewhere)]) == 2
    count, first = card["test_images"]["count"], card["test_images"]["images"][0]["path"]
    assert f"{count} of the {count} test images the model card lists are not under" in (err := capsys.readouterr().err)
    assert first in err
    assert listing(tmp_path) == before  # no cache, no extraction, no study folder: verify writes nothing

    with Image.open(data / first) as image:
        image.resize((16, 16)).save(data / first, format="JPEG")
    assert main(["verify", str(artifact), "--data", str(data)]) == 2
    assert "is 16x16 pixels, but 32x32 images are expected" in capsys.readouterr().err
    shutil.copyfile(REPO / config.data.root / first, data / first)

    original = artifact.read_bytes()
    artifact.write_bytes(original[: len(original) // 2] + bytes([original[len(original) // 2] ^ 0xFF])
                         + original[len(original) // 2 + 1:])
    assert main(["verify", str(artifact), "--data", str(data)]) == 2
    assert "does not match its model card" in capsys.readouterr().err
    artifact.write_bytes(original)

    (shipped / "model_card.json").write_text(json.dumps({k: v for k, v in card.items() if k != "test_images"}))
    assert main(["verify", str(artifact), "--data", str(data)]) == 2
    assert "export the trial again with this version" in capsys.readouterr().err


@needs_archive
def test_the_model_card_names_its_test_images_and_no_local_path(smoke_study: Path) -> None:
    config = load_study(smoke_study)
    card = json.loads((config.run_dir / "export" / "model_card.json").read_text())
    assert not [s for s in strings(card) if s.startswith("/")]
    assert not {"study_file", "study_file_from_card", "working_directory"} & set(card) and card["study"] == config.name
    listed = card["test_images"]
    images = listed["images"]
    # The smoke study tests on the first `test_per_class` files of each class, in name order, classes sorted.
    root = REPO / config.data.root
    expected = [f"test/{name}/{path.name}" for name in card["classes"]
                for path in sorted((root / "test" / name).iterdir())[:config.data.test_per_class]]
    assert [image["path"] for image in images] == expected and listed["count"] == len(expected)
    assert all(card["classes"][image["label"]] == image["path"].split("/")[1] for image in images)
    assert listed["sha256"] == hashlib.sha256(json.dumps(images, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert listed["normalisation"] == card["input"]["normalisation"] and listed["image_size"] == config.data.image_size
    # Stored with the study too, for `report` on machines without the export folder: the latest export's card, and
    # another test may have exported since (test_end_to_end, elsewhere), with its own timings and, the knee re-timing
    # the front, maybe another trial: the stored card is the artifact of the trial it names, on the same test images.
    searched = optuna.load_study(study_name=config.name, storage=config.storage_url)
    stored = searched.user_attrs[StudyAttr.EXPORTED_CARD.value]
    for exported in (stored, card):
        assert exported["sha256"] == TrialRecord.of(searched.trials[exported["trial"]]).artifact_sha256
    assert stored["test_images"] == listed


@needs_archive
def test_export_writes_and_stores_the_retimed_front_it_picked_on(smoke_study: Path) -> None:
    config = load_study(smoke_study)
    rows = json.loads((config.run_dir / "front" / "pareto_front.json").read_text())
    assert rows and all(isinstance(row["retimed"], bool) and isinstance(row["retime_note"], str) for row in rows)
    assert all(row["retimed"] == (row["retime_note"] == "") for row in rows)
    attrs = stored_attrs(smoke_study)
    assert [(r["trial"], r["retimed"], r["latency_ms"]) for r in attrs[StudyAttr.RETIMED_FRONT.value]] == [
        (r["trial"], r["retimed"], r["latency_ms"]) for r in rows]
    picked = next(row for row in rows if row["trial"] == attrs[StudyAttr.EXPORTED_CARD.value]["trial"])
    assert picked["retimed"]


@needs_archive
def test_retiming_says_which_rows_it_could_not_retime_and_why(smoke_study: Path, tmp_path: Path) -> None:
    config = load_study(smoke_study)
    workspace = open_workspace(config, progress=False)  # reused: the baseline is trained and measured
    searched = optuna.load_study(study_name=config.name, storage=config.storage_url)
    kept = next(t for t in searched.trials if TrialRecord.of(t).has_values and artifact_problem(TrialRecord.of(t)) is None)
    modified = tmp_path / "modified" / Path(kept.user_attrs["artifact_path"]).name
    modified.parent.mkdir()
    modified.write_bytes(Path(kept.user_attrs["artifact_path"]).read_bytes() + b"\0")
    variants = {"kept": {}, "missing": {"artifact_path": str(tmp_path / "gone.pte")},
                "modified": {"artifact_path": str(modified)}, "parity": {"parity_ok": False}}
    study = optuna.create_study(directions=list(searched.directions))
    for changes in variants.values():
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, values=kept.values,
                                                  user_attrs={**kept.user_attrs, **changes}, params={}, distributions={}))
    table = trials_table(study.trials, config.targets, workspace.profile.val_top1).sort_values("trial")
    retimed = retime_front(table, study, Yardstick(workspace))
    notes = dict(zip(variants, retimed.sort_values("trial")["retime_note"]))
    assert list(retimed.sort_values("trial")["retimed"]) == [True, False, False, False]
    assert notes["kept"] == "" and "artifact file missing" in notes["missing"] and "gone.pte" in notes["missing"]
    assert "modified" in notes["modified"] and "sha256" in notes["modified"] and "parity failed" in notes["parity"]
    # Only the re-timed row carries new figures (more runs); the others keep the search's, flagged.
    kept_ms = TrialRecord.of(kept).latency_ms
    assert list(retimed.sort_values("trial")["latency_ms"])[1:] == [kept_ms] * 3


def test_check_says_when_the_data_can_be_found_nowhere(tmp_path: Path, capsys) -> None:
    smoke = (REPO / "studies" / "smoke.toml").read_text()
    root, archive = tmp_path / "nowhere" / "cifar10", tmp_path / "missing.tar.gz"
    path = tmp_path / "s.toml"
    path.write_text(smoke.replace('root = "data/cifar10"', f'root = "{root}"')
                    .replace('archive = "../shared/data/cifar10-jpeg.tar.gz"', f'archive = "{archive}"'))
    before = listing(tmp_path)
    assert main(["check", "--study", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(root) in err and str(archive) in err and "fix:" in err
    household = tmp_path / "household.toml"
    household.write_text(f'name = "h"\n[data]\nsource = "cifar100-household"\nroot = "{tmp_path / "c100"}"\ndownload = false\n')
    assert main(["check", "--study", str(household)]) == 2
    assert "`data.download` is false" in capsys.readouterr().err
    assert listing(tmp_path) == before | {str(household)}  # nothing extracted, downloaded or created
    # Data that can be fetched (a download) or is there passes, still without fetching anything.
    household.write_text(household.read_text().replace("download = false", "download = true"))
    assert main(["check", "--study", str(household)]) == 0
    (tmp_path / "nowhere" / "cifar10").mkdir(parents=True)
    assert main(["check", "--study", str(path)]) == 0
    assert listing(tmp_path) == before | {str(household), str(tmp_path / "nowhere"), str(root)}


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def serve_one_request(storage, host: str, port: int, artifact_store=None) -> None:
    """Stands in for ``optuna_dashboard.run_server``: the dashboard's app on ``storage`` answers the study list
    (what its start page asks first), then a write through the same storage is tried."""
    import io
    import wsgiref.util

    import optuna_dashboard

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/api/studies", "wsgi.input": io.BytesIO()}
    wsgiref.util.setup_testing_defaults(environ)
    statuses: list[str] = []
    body = b"".join(optuna_dashboard.wsgi(storage, artifact_store=artifact_store)(
        environ, lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses == ["200 OK"] and b"smoke" in body
    study_id = storage.get_all_studies()[0]._study_id
    # A note or a deleted study from the dashboard's page: SQLite refuses it ("attempt to write a readonly database").
    with pytest.raises(optuna.exceptions.StorageInternalError):
        storage.set_study_user_attr(study_id, "note", "written by the dashboard")


@needs_archive
def test_front_report_verify_and_dashboard_leave_a_copied_database_byte_identical(smoke_study: Path, tmp_path: Path,
                                                                                  monkeypatch) -> None:
    import optuna_dashboard

    config = load_study(smoke_study)
    clone = fresh_clone(smoke_study, tmp_path / "clone")
    monkeypatch.chdir(clone)
    database = clone / "copy.db"
    before = sha256_file(database)
    artifact = config.run_dir / "export" / json.loads((config.run_dir / "export" / "model_card.json").read_text())["artifact"]
    monkeypatch.setattr(optuna_dashboard, "run_server", serve_one_request)
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    for argv in (["front", "--study", "smoke.toml"], ["front", "--study", "smoke.toml", "--out", str(tmp_path / "front")],
                 ["report", "--study", "smoke.toml", "--out", str(tmp_path / "report")],
                 ["verify", str(artifact), "--data", str(REPO / config.data.root)],
                 ["dashboard", "--study", "smoke.toml", "--port", str(port)]):
        assert main(argv) == 0, argv
        assert sha256_file(database) == before, argv


@pytest.mark.parametrize("command", [["front"], ["report", "--out", "OUT"], ["dashboard"]])
def test_read_only_commands_refuse_a_database_without_a_study_and_leave_it_as_it_was(command: list[str], tmp_path: Path,
                                                                                   capsys, monkeypatch) -> None:
    import optuna_dashboard

    def started(*args, **kwargs) -> None:  # a dashboard that started would serve until stopped
        raise AssertionError("the dashboard started on a database without a study")

    monkeypatch.setattr(optuna_dashboard, "run_server", started)
    study = tmp_path / "s.toml"
    study.write_text(f'runs_dir = "{tmp_path / "runs"}"\n' + (REPO / "studies" / "smoke.toml").read_text())
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in command]
    empty = tmp_path / "empty.db"
    empty.touch()
    assert main([*argv, "--study", str(study), "--storage", f"sqlite:///{empty}"]) == 2
    err = capsys.readouterr().err
    assert f"The database {empty} holds no Optuna study" in err and "fix:" in err and "Traceback" not in err
    assert empty.stat().st_size == 0
    # Optuna's tables without a study in them: refused too, and not one byte written.
    tables = tmp_path / "tables.db"
    optuna.storages.RDBStorage(f"sqlite:///{tables}").engine.dispose()
    before = sha256_file(tables)
    assert main([*argv, "--study", str(study), "--storage", f"sqlite:///{tables}"]) == 2
    assert "holds no Optuna study" in capsys.readouterr().err and sha256_file(tables) == before
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def section(markdown: str, heading: str) -> str:
    return markdown.split(heading, 1)[1].split("\n## ", 1)[0]


@needs_archive
def test_a_report_from_a_copied_database_elsewhere_says_what_the_original_says(smoke_study: Path, tmp_path: Path,
                                                                             monkeypatch) -> None:
    """The original: the searched study's folder (its database, export and baseline) with a stored techniques
    benchmark and an older techniques.csv beside it; the copy: its database alone in another folder."""
    searched = load_study(smoke_study)
    (tmp_path / "original").mkdir()
    original = smoke_study_file(tmp_path / "original")
    run_dir = load_study(original).run_dir
    for folder in ("export", "baseline"):
        shutil.copytree(searched.run_dir / folder, run_dir / folder)
    with sqlite3.connect(searched.run_dir / "study.db") as source, sqlite3.connect(run_dir / "study.db") as target:
        source.backup(target)  # a consistent copy even while another test writes
    columns = ("technique", "runtime", "val_top1", "test_top1", "bytes", "size_ratio", "latency_ms", "latency_ratio")
    stored = [dict(zip(columns, row)) for row in (("baseline", "executorch", 0.5, 0.5, 1000, 1.0, 2.0, 1.0),
                                                  ("ptq(stored)", "executorch", 0.45, 0.44, 260, 0.26, 0.8, 0.4))]
    store_study(optuna.load_study(study_name=searched.name, storage=f"sqlite:///{run_dir / 'study.db'}"),
                {StudyAttr.TECHNIQUES: stored})
    (run_dir / "techniques").mkdir()
    (run_dir / "techniques" / "techniques.csv").write_text(
        ",".join(columns) + "\nbaseline,executorch,0.5,0.5,1000,1.0,2.0,1.0\nptq(local),executorch,0.3,0.3,260,0.26,0.8,0.4\n")
    assert main(["report", "--study", str(original), "--out", str(tmp_path / "original-report")]) == 0
    copy = tmp_path / "elsewhere"
    copy.mkdir()
    shutil.copyfile(run_dir / "study.db", copy / "copy.db")
    (copy / "smoke.toml").write_text('storage = "sqlite:///copy.db"\n' + (REPO / "studies" / "smoke.toml").read_text())
    monkeypatch.chdir(copy)
    assert main(["report", "--study", "smoke.toml", "--out", str(tmp_path / "copy-report")]) == 0
    mine, theirs = ((tmp_path / name / "report.md").read_text(encoding="utf-8") for name in ("original-report", "copy-report"))
    for heading in ("## Executive summary", "## Each technique alone"):
        assert section(mine, heading) == section(theirs, heading), heading
    assert "ptq(stored)" in section(mine, "## Each technique alone") and "ptq(local)" not in mine
