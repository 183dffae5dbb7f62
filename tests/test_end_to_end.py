"""The product end to end on the smoke study: search, front, export, verify, dashboard."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from tests.conftest import REPO, SHARED_ARCHIVE
from udacisense.evaluators.parity import ParityReport, ParityRule
from udacisense.search.cli import main
from udacisense.search.study.budget import counted_trials, is_rejected
from udacisense.search.study.config import load_study
from udacisense.search.study.records import OBJECTIVE_NAMES

pytestmark = pytest.mark.skipif(not SHARED_ARCHIVE.is_file(), reason="needs ../shared/data/cifar10-jpeg.tar.gz")


@pytest.mark.slow
def test_search_runs_the_budget_and_records_every_trial(smoke_study: Path) -> None:
    config = load_study(smoke_study)
    study = optuna.load_study(study_name=config.name, storage=config.storage_url)
    trials = study.get_trials()
    assert not [t for t in trials if is_rejected(t)]  # only legal orders are sampled
    assert len(counted_trials(trials)) == config.search.n_trials  # parallel workers' surplus trials spend nothing
    assert study.metric_names == list(OBJECTIVE_NAMES)
    complete = [t for t in trials if t.state is optuna.trial.TrialState.COMPLETE]
    assert complete, [t.user_attrs for t in trials]
    for trial in complete:
        attrs = trial.user_attrs
        # The pipeline text is the stages the trial ran, in order (and the stages it sampled, with their epochs).
        assert attrs["pipeline"] == " → ".join(s["description"] for s in attrs["stages"])
        assert [kind for kind, _ in attrs["stage_epochs"]] == [s["kind"] for s in attrs["stages"]]
        assert attrs["seed"] == config.seed + trial.number  # sampled, not replayed: the study seed plus its number
        assert attrs["stages"] and all("val_top1" in s["metrics"] for s in attrs["stages"])
        assert set(trial.constraints) == {"accuracy", "size", "latency", "parity"}
        assert 0 < trial.values[2] < 1  # quantized or channel-pruned: really smaller than the baseline
        # Intermediate accuracies are kept: each stage closes with one, under its kind.
        assert [p[1] for p in attrs["curve"] if p[2] is None] == [s["kind"] for s in attrs["stages"]]
        phases = attrs["phase_seconds"]
        if attrs["fidelity"] == "estimated":  # screened on the study's measurements: nothing lowered, nothing kept
            assert "artifact_path" not in attrs and "parity_ok" not in attrs and "lowering" not in phases
        else:
            if attrs["parity_ok"]:
                assert Path(attrs["artifact_path"]).is_file() and attrs["artifact_id"]
                assert ParityRule(**attrs["parity_rule"]).passes(ParityReport(**attrs["parity"]))
            else:  # an artifact that does not compute what its model computes is neither kept nor feasible
                assert "artifact_path" not in attrs and trial.constraints["parity"] > 0
            # One yardstick: the float .pte, timed in the same rounds, on one thread in every runtime.
            assert attrs["reference_runtime"] == "executorch" and attrs["reference_latency_ms"] > 0
            assert attrs["latency_ratio_p10"] <= attrs["latency_ratio_p90"]
            assert attrs["executorch_threads"] == 1 and attrs["torch_threads"] == 1
            assert {"lowering", "artifact accuracy", "parity", "latency"} <= set(phases)
        assert {"validation", "other"} <= set(phases)
        assert [name.split()[-1] for name in phases if name.startswith("stage ")] == [s["kind"] for s in attrs["stages"]]
        assert sum(phases.values()) >= attrs["seconds"] - 0.01  # the phases cover the whole trial


def test_front_files_and_export_with_parity(smoke_study: Path, tmp_path: Path) -> None:
    config = load_study(smoke_study)
    front_dir = tmp_path / "front"
    assert main(["front", "--study", str(smoke_study), "--out", str(front_dir)]) == 0
    rows = json.loads((front_dir / "pareto_front.json").read_text())
    assert rows and {"val_top1", "test_top1", "latency_ratio", "size_ratio", "meets_all"} <= set(rows[0])
    for row in rows:  # every front row carries its evidence: intervals around its accuracies and paired drops
        assert row["test_images"] == 10 * config.data.test_per_class  # the 10 CIFAR-10 classes
        low, high = row["test_top1_ci95"]
        assert low <= row["test_top1"] <= high and high - low > 0.05  # 100 test images: wide
        assert row["test_drop_ci95"][0] <= row["test_drop"] <= row["test_drop_ci95"][1]
        assert row["verdict_accuracy"] in ("met", "point estimate only", "missed") and "val_correct" not in row
    assert (front_dir / "pareto_front.png").stat().st_size > 10_000
    card = json.loads((config.run_dir / "export" / "model_card.json").read_text())  # exported by `search`
    artifact = config.run_dir / "export" / card["artifact"]
    parity = ParityReport(card["parity"]["top1_agreement"], card["parity"]["max_abs_diff"], card["parity"]["samples"])
    assert ParityRule(**card["parity"]["rule"]).passes(parity) and card["classes"] and card["input"]["normalisation"]["mean"]
    assert isinstance(card["targets"]["meets_targets"], bool) and set(card["targets"]["constraints"]) == {
        "accuracy", "size", "latency", "parity"}
    assert card["metrics"]["executorch_threads"] == 1 and card["metrics"]["reference_runtime"] == "executorch"
    # Latency at export: independent blocks and the ratio's interval across them; verdicts beside the constraints.
    blocks = card["metrics"]["latency_blocks"]["ratios"]
    assert len(blocks) == config.search.retime_blocks and card["metrics"]["latency_ratio_ci95"][0] < card["metrics"]["latency_ratio_ci95"][1]
    assert set(card["targets"]["verdicts"]) == {"accuracy", "latency", "size"}
    assert card["metrics"]["accuracy_evidence"]["test"]["images"] == card["parity"]["samples"]
    if card["runtime"] == "executorch":  # every op of the study's pipelines has an XNNPACK kernel
        assert card["delegation"]["fully_delegated"] and card["delegation"]["delegated_nodes"] > 0, card["delegation"]
    else:
        assert card["delegation"] is None
    assert json.loads((config.run_dir / "baseline" / "metrics.json").read_text())["threads"] == {
        "torch_threads": 1, "executorch_threads": 1}
    assert main(["verify", str(artifact), "--data", str(REPO / config.data.root)]) == 0


def test_verify_rejects_a_tampered_artifact(smoke_study: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "export"
    assert main(["export", "--study", str(smoke_study), "--pick", "knee", "--out", str(out)]) == 0
    artifact = next(out.glob("model.pt*"))
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    assert main(["verify", str(artifact), "--data", str(REPO / load_study(smoke_study).data.root)]) == 2
    assert "does not match its model card" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (scripts/test installs it)")
def test_dashboard_renders_study_objectives_and_trials(smoke_study: Path, tmp_path: Path) -> None:
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "search.cli", "dashboard", "--study", str(smoke_study),
                               "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/studies", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        chrome = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--dump-dom"]
        home = subprocess.run(chrome + [f"{base}/dashboard"], capture_output=True, text=True, timeout=120).stdout
        assert "smoke" in home
        overview = subprocess.run(chrome + [f"{base}/dashboard/studies/1"], capture_output=True, text=True,
                                  timeout=120).stdout
        for name in OBJECTIVE_NAMES:
            assert name in overview
        trials_page = subprocess.run(chrome + [f"{base}/dashboard/studies/1/trials"], capture_output=True, text=True,
                                     timeout=120).stdout
        study = optuna.load_study(study_name="smoke", storage=load_study(smoke_study).storage_url)
        for trial in study.trials:
            assert f"Trial {trial.number}" in trials_page
    finally:
        server.terminate()
        server.wait(timeout=30)
