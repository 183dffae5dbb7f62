"""`udacisense report`: the technical report is written from stored measurements, and says what they say."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest

from udacisense.common.errors import UserError
from udacisense.search.cli import main
from udacisense.search.front import pareto_trials, trials_table
from udacisense.search.hypervolume import HV_REFERENCE, _hypervolume_slices, hypervolume
from udacisense.search.records import DIRECTIONS, OBJECTIVE_NAMES, FalseStops, FalseStopTrial, StudyAttr, store_study
from udacisense.search.report import FIGURES, write_report
from udacisense.search.report.format import fmt_acc, fmt_int, fmt_ratio
from udacisense.search.study import load_study

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _images(markdown: str) -> list[str]:
    return re.findall(r"^!\[[^\]]*\]\(([^)]+)\)\s*$", markdown, flags=re.MULTILINE)


def _check_files(out: Path) -> str:
    markdown = (out / "report.md").read_text(encoding="utf-8")
    page = (out / "report.html").read_text(encoding="utf-8")
    images = _images(markdown)
    assert sorted(images) == sorted(FIGURES.values())
    for name in images:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    assert page.count('src="data:image/png;base64,') == len(images)
    assert not re.search(r'src="[^"]+\.png"', page)  # nothing is linked; the page is self-contained
    assert "<table>" in page and "<h2>Executive summary</h2>" in page
    return markdown


# ---------------------------------------------------------------------------------------------
# Fast: a synthetic study (stored the way the search stores one), no training.


def _synthetic_study(root: Path, *, complete: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "synthetic.toml"
    path.write_text(f'name = "synthetic"\nruns_dir = "{root / "runs"}"\n[data]\nsource = "imagefolder"\nroot = "unused"\n'
                    '[targets]\nsize_reduction = 0.3\nlatency_reduction = 0.4\nmax_accuracy_drop = 0.1\n'
                    '[search]\nn_trials = 6\nsampler = "random"\n')
    config = load_study(path)
    classes = ["cat", "dog", "ship"]
    accuracy = {"top1": 0.8, "top5": 1.0, "per_class": [0.9, 0.7, 0.8], "samples": 30, "unit": "fraction"}
    latency = {"median_ms": 2.0, "p10_ms": 1.9, "p90_ms": 2.3, "mean_ms": 2.05, "runs": 20, "threads": 1}
    metrics = {
        "study": "synthetic", "baseline_key": "x", "train_seconds": 12.5,
        "train": {"epochs": 3, "samples": 240, "val_samples": 60, "test_samples": 30},
        "classes": classes, "input_shape": [1, 3, 32, 32],
        "accuracy": {"val": accuracy, "test": {**accuracy, "top1": 0.7667}},
        "flops": {"flops": 2_000_000, "macs": 1_000_000, "unit": "operations per image"},
        "peak_memory": {"bytes": 300_000, "unit": "bytes"},
        "size": {name: {"bytes": 1_000_000, "gzip_bytes": 900_000, "parameters": 250_000, "nonzero_parameters": 250_000,
                        "format": name, "unit": "bytes"} for name in ("state_dict", "torchscript", "executorch")},
        "latency": {name: {**latency, "runtime": name} for name in ("eager", "torchscript", "executorch")},
        "environment": {"torch": "x", "cpu": "y", "cpu_count": 2, "torch_threads": 1},
    }
    config.run_dir.joinpath("baseline").mkdir(parents=True)
    (config.run_dir / "baseline" / "metrics.json").write_text(json.dumps(metrics))
    study = optuna.create_study(study_name=config.name, storage=config.storage_url, directions=list(DIRECTIONS))
    study.set_metric_names(list(OBJECTIVE_NAMES))
    if not complete:
        return path

    def stage(kind: str, val: float, size: int) -> dict:
        return {"kind": kind, "description": f"{kind}(…)", "seconds": 1.5,
                "metrics": {"val_top1": val, "state_dict_bytes": size, "form": "float", "parameters": size // 4,
                            "nonzero_parameters": size // 4, "flops": 1_000_000}}

    def done(values, stages, seconds, curve, runtime="executorch"):
        attrs = {"pipeline": " → ".join(s["description"] for s in stages), "stages": stages, "runtime": runtime,
                 "backend": "xnnpack", "val": {**accuracy, "top1": values[0]},
                 "test": {**accuracy, "top1": values[0] - 0.05, "per_class": [0.8, 0.6, 0.7]},
                 "latency": {**latency, "median_ms": 2.0 * values[1]}, "reference_latency": latency,
                 "artifact_bytes": int(1_000_000 * values[2]), "artifact_gzip_bytes": int(800_000 * values[2]),
                 "artifact_path": "nowhere", "artifact_sha256": "ab" * 32,
                 "parity": {"top1_agreement": 1.0, "max_abs_diff": 0.01, "samples": 30}, "seconds": seconds,
                 "curve": curve, "stage_epochs": [[s["kind"], sum(1 for p in curve if p[0] == i and p[2] is not None)]
                                                  for i, s in enumerate(stages)],
                 "phase_seconds": {f"stage 1 {stages[0]['kind']}": seconds / 2, "lowering": seconds / 4, "latency": seconds / 4}}
        return optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, values=list(values), user_attrs=attrs,
                                         distributions={}, params={})

    # Curves as the search stores them: [stage, kind, epoch or None at its end, val top-1, seconds into the stage].
    # Channel pruning took 10 s per fine-tune epoch in trial 0 and 6 s in trial 2: a median of 8 s.
    study.add_trial(done((0.78, 0.5, 0.3), [stage("channels", 0.75, 600_000), stage("quantize", 0.78, 300_000)], 40.0,
                         [[0, "channels", 0, 0.7, 10.0], [0, "channels", 1, 0.74, 20.0], [0, "channels", None, 0.75, 21.0],
                          [1, "quantize", None, 0.78, 3.0]]))
    study.add_trial(done((0.8, 0.9, 0.26), [stage("quantize", 0.8, 260_000)], 20.0, [[0, "quantize", None, 0.8, 2.0]]))
    study.add_trial(done((0.7, 0.7, 0.6), [stage("channels", 0.7, 600_000)], 30.0,
                         [[0, "channels", 0, 0.6, 6.0], [0, "channels", 1, 0.68, 12.0], [0, "channels", None, 0.7, 13.0]]))
    for stop, reason, seconds, plan, curve in (
            ("rejected", "rejected before compute: `prune` cannot run on a quantized model.", 0.01, [], []),
            # Stopped after 1 of 3 distillation epochs (5 s, its own): 2 more at 5 s, then 2 channels epochs at 8 s.
            ("during-training", "val top-1 0.100 at stage 1 distill (fine-tune epoch 1) is hopeless: floor 0.700, margin 0.15",
             6.0, [["distill", 3], ["channels", 2], ["quantize", 0]], [[0, "distill", 0, 0.1, 5.0]]),
            # Trained to the end and clearly below the floor: stopped whatever early stopping is set to.
            ("below-floor", "val top-1 0.400 after the last stage is more than 0.02 below the accuracy floor 0.700: "
             "infeasible whatever its size, so not lowered", 25.0, [["channels", 2]],
             [[0, "channels", 0, 0.3, 9.0], [0, "channels", 1, 0.4, 18.0], [0, "channels", None, 0.4, 19.0]]),
            # Estimated too large before training: its 3 channels epochs at the median 8 s.
            ("before-training", "stopped before training: size ratio 1.00 > 0.70", 0.5, [["channels", 3]], [])):
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, distributions={}, params={},
                                                  user_attrs={"pruned_reason": reason, "stage": stop, "seconds": seconds,
                                                              "stage_epochs": plan, "curve": curve}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, distributions={}, params={},
                                              user_attrs={"error": "RuntimeError: boom", "seconds": 3.0}))
    return path


def test_hypervolume_matches_an_independent_exact_computation() -> None:
    rng = np.random.default_rng(0)
    values = np.column_stack([rng.uniform(0.2, 1, 12), rng.uniform(0.1, 2.5, 12), rng.uniform(0.1, 2.5, 12)])
    inside = values[(values[:, 1] < 2) & (values[:, 2] < 2)]
    loss = np.column_stack([-inside[:, 0], inside[:, 1], inside[:, 2]])
    assert hypervolume(values) == pytest.approx(_hypervolume_slices(loss, np.asarray(HV_REFERENCE)))
    assert hypervolume([(1.0, 0.0, 0.0)]) == pytest.approx(4.0)  # the whole box
    assert hypervolume([(0.5, 3.0, 0.5)]) == 0.0  # beyond the reference


def test_report_from_a_synthetic_study(tmp_path: Path) -> None:
    path = _synthetic_study(tmp_path)
    out = tmp_path / "report"
    assert main(["report", "--study", str(path), "--out", str(out)]) == 0
    markdown = _check_files(out)
    # knee among the feasible front points (trials 0 and 1): trial 0 is closest to the ideal point.
    assert "**trial 0**" in markdown
    assert "8 recorded: 3 complete, 4 pruned, 1 failed" in markdown
    assert "the search's completed single-stage trials" in markdown  # no techniques.csv: the fallback is named
    assert "| validation top-1 | 80.0% | 78.0% | -2.0 points |" in markdown
    # Only the stops early stopping caused saved anything, costed by the training they had left: 2 x 5 s
    # + 2 x 8 s for the one stopped during training, 3 x 8 s for the one stopped before; the below-floor
    # stop (which happens with early stopping off too) and the rejected order count for nothing.
    assert ("Early stopping stopped 2 trial(s): 1 before training (estimated to miss the size or latency target) and "
            "1 during training (accuracy hopeless). Estimated compute saved: **50 s**, the 7 fine-tune epoch(s)") in markdown
    assert "| stopped early during training (accuracy hopeless) | 1 | 6 s | 4 | 26 s |" in markdown
    assert "| stopped before training (estimated to miss the size or latency target) | 1 | 0 s | 3 | 24 s |" in markdown
    assert "Not savings of early stopping: 1 trial(s) stopped after training" in markdown
    assert "Other pruned trials, counts only: rejected before compute (impossible stage order): 1." in markdown
    # Savings alone are no reason to keep it: the false-stop rate was not measured.
    assert "False stops: not measured" in markdown and "keep `search.early_stopping` on" not in markdown
    assert "was not measured, so whether it cost front points is unknown" in markdown
    assert "RuntimeError" in markdown and "rejected before compute" in markdown
    # seconds per phase over the three trials (90 s): channels trains (20 + 15 s), the rest does not
    assert "training stages took **39%**" in markdown and "lowering to the runtime alone 25%" in markdown
    assert "| stage: channels | 35 | 38.9% | 2 | yes |" in markdown and "| stage: quantize | 10 | 11.1% | 1 |  |" in markdown
    # with a techniques benchmark, that is the source of "each technique alone", and the best one is computed
    csv = load_study(path).run_dir / "techniques" / "techniques.csv"
    csv.parent.mkdir(parents=True)
    csv.write_text("technique,runtime,val_top1,test_top1,bytes,gzip_bytes,size_ratio,latency_ms,latency_ratio\n"
                   "baseline,executorch,0.8,0.76,1000000,900000,1.0,2.0,1.0\n"
                   "prune(l1),executorch,0.7,0.66,1000000,500000,1.0,2.0,1.0\n"
                   "ptq(xnnpack),executorch,0.78,0.74,260000,200000,0.26,0.8,0.4\n"
                   "channels(l1),executorch,0.75,0.7,500000,450000,0.5,1.0,0.5\n")
    # Measured false stops, and few: now the advice is to keep it on.
    store_study(optuna.load_study(study_name="synthetic", storage=load_study(path).storage_url), {
        StudyAttr.FALSE_STOPS: FalseStops((FalseStopTrial(4, 0, 0.5, 0.7, False), FalseStopTrial(9, 1, 0.66, 0.7, False))).as_dict()})
    assert main(["report", "--study", str(path), "--out", str(out)]) == 0
    markdown = (out / "report.md").read_text()
    assert "False stops: **0 of 2** (measured by re-running 2 trial(s) stopped during training to the end" in markdown
    assert "0 of 2 stopped trial(s) re-run to the end reached the floor: keep `search.early_stopping` on." in markdown
    assert f"the techniques benchmark `{csv}`" in markdown
    # ptq: 74% smaller for 2 points = 37.0% per point; channels: 50% for 5 points = 10.0% per point
    assert "Largest size reduction per accuracy point lost, technique alone: `ptq(xnnpack)`" in markdown
    assert "37.0% per point" in markdown and "10.0% per point" in markdown
    # --trial reports on another trial, and a pruned one is refused with a fix
    assert main(["report", "--study", str(path), "--out", str(out), "--trial", "2"]) == 0
    assert "**trial 2**" in (out / "report.md").read_text()
    with pytest.raises(UserError, match="not complete"):
        write_report(load_study(path), out, trial=3)


def test_report_refuses_missing_or_empty_studies(tmp_path: Path, capsys) -> None:
    path = _synthetic_study(tmp_path / "empty", complete=False)
    assert main(["report", "--study", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "no completed trials" in capsys.readouterr().err
    baseline = tmp_path / "empty" / "runs" / "synthetic" / "baseline"
    measurements = (baseline / "metrics.json").read_text()
    shutil.rmtree(baseline)
    with pytest.raises(UserError, match="baseline measurements"):
        write_report(load_study(path), tmp_path / "out")
    baseline.mkdir()
    (baseline / "metrics.json").write_text("{}")
    with pytest.raises(UserError, match="baseline measurements .* are damaged"):
        write_report(load_study(path), tmp_path / "out")
    (baseline / "metrics.json").write_text(measurements)
    (tmp_path / "empty" / "runs" / "synthetic" / "study.db").unlink()
    with pytest.raises(UserError, match="no storage yet"):
        write_report(load_study(path), tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# Real: the smoke study searched end to end (needs the offline CIFAR-10 archive).


@pytest.fixture(scope="module")
def smoke_report(smoke_study: Path) -> tuple[Path, Path]:
    """The session's searched smoke study (which also exported the default pick), reported on."""
    path = smoke_study
    out = path.parent / "report"
    assert main(["report", "--study", str(path), "--out", str(out)]) == 0
    return path, out


def test_smoke_report_files_and_embedded_images(smoke_report: tuple[Path, Path]) -> None:
    _, out = smoke_report
    markdown = _check_files(out)
    for section in ("## Executive summary", "## Baseline analysis", "## Each technique alone", "## The search",
                    "### Pareto front", "## The chosen pipeline, stage by stage", "## Deployment", "## Recommendations"):
        assert section in markdown


def test_smoke_report_numbers_are_the_stored_ones(smoke_report: tuple[Path, Path]) -> None:
    path, out = smoke_report
    config = load_study(path)
    markdown = (out / "report.md").read_text(encoding="utf-8")
    metrics = json.loads((config.run_dir / "baseline" / "metrics.json").read_text())
    study = optuna.load_study(study_name=config.name, storage=config.storage_url)
    trials = study.get_trials()
    complete = [t for t in trials if t.state is optuna.trial.TrialState.COMPLETE]
    baseline_val = metrics["accuracy"]["val"]["top1"]
    front = trials_table(pareto_trials(complete), config.targets, baseline_val)
    # `search` exported its default pick, made on the front re-timed with more runs: the report
    # recommends that exported trial, not a pick on the shorter search-time timings.
    card = json.loads((config.run_dir / "export" / "model_card.json").read_text())
    assert f"`{config.search.default_pick}` policy" in card["picked_by"] and card["trial"] in set(front["trial"])
    chosen = next(t for t in trials if t.number == card["trial"])
    acc, latency_ratio, size_ratio = chosen.values

    assert f"The recommended model is **trial {chosen.number}**" in markdown
    assert "It was selected by the exported model, chosen by the" in markdown
    base_test, chosen_test = metrics["accuracy"]["test"]["top1"], chosen.user_attrs["test"]["top1"]
    assert f"| test top-1 (held out) | {fmt_acc(base_test)} | {fmt_acc(chosen_test)} |" in markdown
    assert f"| validation top-1 | {fmt_acc(baseline_val)} | {fmt_acc(acc)} |" in markdown
    assert f"({fmt_int(chosen.user_attrs['artifact_bytes'])} B) | ratio {fmt_ratio(size_ratio)} (" in markdown
    assert f"| ratio {fmt_ratio(latency_ratio)} (" in markdown
    assert f"| parameters | {fmt_int(metrics['size']['state_dict']['parameters'])} (" in markdown
    counts = {state: sum(1 for t in trials if t.state is state) for state in optuna.trial.TrialState}
    assert (f"{len(trials)} recorded: {counts[optuna.trial.TrialState.COMPLETE]} complete, "
            f"{counts[optuna.trial.TrialState.PRUNED]} pruned, {counts[optuna.trial.TrialState.FAIL]} failed") in markdown
    # every stage of the chosen pipeline appears with its measured accuracy
    for stage in chosen.user_attrs["stages"]:
        assert f"| {stage['description']} |" in markdown and fmt_acc(stage["metrics"]["val_top1"]) in markdown
    # the deployment section is the model card's
    assert f"`{card['sha256']}` (matches the file on disk)" in markdown
    front_rows = [line for line in markdown.splitlines() if re.match(r"^\| \d+( ◀)? \| ", line)]
    assert len(front_rows) >= len(front)
