"""Export a chosen trial as a verified mobile artifact with its model card; verify one later.

Before a pick the front's candidates are timed again (more runs, alternating with the reference)
and picked on those figures; an export is written to a temporary folder that replaces the output
folder only once the artifact passed its parity check.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import optuna
import pandas as pd
import torch

from udacisense.common.errors import UserError
from udacisense.common.files import atomic_dir, sha256_of, write_json
from udacisense.evaluators.accuracy import accuracy_from_logits, predict_logits
from udacisense.evaluators.parity import ParityReport, ParityRule, compare_logits
from udacisense.runtime import Backend, LoweredRuntime, deployment_label, executorch_threads, load_runner
from udacisense.search.front import mark_targets
from udacisense.search.objective import ARTIFACT_SUFFIX, TrialLatency, TrialRunner
from udacisense.search.records import TrialRecord
from udacisense.search.workspace import Workspace

CARD_NAME = "model_card.json"
REFERENCE_NAME = "reference_logits.pt"


@dataclass(frozen=True)
class ExportResult:
    artifact: Path
    card: Path
    parity: ParityReport
    latency: TrialLatency
    constraints: dict[str, float]
    delegation: dict | None  # Delegation.as_dict() of a .pte; None for TorchScript or a trial stored before it was kept

    @property
    def meets_targets(self) -> bool:
        return all(value <= 0 for value in self.constraints.values())


def check_parity(artifact: Path, runtime: LoweredRuntime, backend: Backend | None, reference: Path, rule: ParityRule,
                 workspace: Workspace) -> tuple[ParityReport, float]:
    """Run the artifact on the whole test split and compare with the PyTorch model's stored logits."""
    run = load_runner(artifact.read_bytes(), runtime, backend)
    logits, labels = predict_logits(run, workspace.data.loader("test"))
    expected = torch.load(reference, map_location="cpu", weights_only=True)
    parity = compare_logits(expected, logits)
    if not rule.passes(parity):
        raise UserError(
            f"The artifact {artifact.name} disagrees with its PyTorch model: top-1 agreement "
            f"{parity.top1_agreement:.3f}, max |difference| {parity.max_abs_diff:.4g} over {parity.samples} test "
            f"images (required: {rule.describe()}).",
            "do not ship it; export another trial, or report the pipeline as a bug.",
        )
    return parity, accuracy_from_logits(logits, labels, len(workspace.data.classes)).top1


def _trial_rule(record: TrialRecord, runner: TrialRunner) -> ParityRule:
    return runner.parity_rule(quantized=record.backend is not None)


def _retime_runs(runner: TrialRunner) -> int:
    search = runner.workspace.study.search
    return search.latency_runs * search.retime_factor


def retime_front(front: pd.DataFrame, study: optuna.Study, runner: TrialRunner) -> pd.DataFrame:
    """The front with every exportable candidate timed again, ``search.retime_factor`` times the runs,
    alternating with the reference: picks rest on these figures, not on one short trial measurement."""
    trials = study.get_trials(deepcopy=False)
    retimed = front.copy()
    retimed["retimed"] = False
    for index, row in front.iterrows():
        record = TrialRecord.of(trials[int(row["trial"])])
        artifact = record.artifact_path
        if not row["parity_ok"] or artifact is None or not artifact.is_file():
            continue
        runtime = cast(LoweredRuntime, record.runtime)
        run = load_runner(artifact.read_bytes(), runtime, record.backend)
        latency = runner.measure_latency(run, runtime, runs=_retime_runs(runner)).reference
        retimed.loc[index, ["latency_ms", "reference_latency_ms", "latency_ratio", "latency_ratio_p10",
                            "latency_ratio_p90"]] = [latency.candidate.median_ms, latency.reference.median_ms,
                                                     latency.ratio, latency.ratio_p10, latency.ratio_p90]
        retimed.loc[index, "retimed"] = True
    workspace = runner.workspace
    return mark_targets(retimed, workspace.study.targets, workspace.profile.val_top1)


def export_trial(workspace: Workspace, study: optuna.Study, trial_number: int, out_dir: Path,
                 runner: TrialRunner, study_path: str, picked_by: str | None = None) -> ExportResult:
    """Copy, re-check and re-time one trial's artifact into ``out_dir`` with its model card.

    ``picked_by`` says how the trial was chosen (a pick policy on the re-timed front); ``None`` means
    the user named it. The report recommends the exported trial, so the card must say why it is the one.
    """
    trials = study.get_trials(deepcopy=False)
    if not 0 <= trial_number < len(trials):
        raise UserError(f"The study has no trial {trial_number} (it has {len(trials)}).", "pick a number from `udacisense front`.")
    record = TrialRecord.of(trials[trial_number])
    if record.state is not optuna.trial.TrialState.COMPLETE:
        raise UserError(f"Trial {trial_number} is {record.state.name.lower()}, not complete; it has no artifact.",
                        "pick a completed trial from `udacisense front`.")
    if not record.parity_ok:
        raise UserError(f"Trial {trial_number} failed its parity check during the search (top-1 agreement "
                        f"{record.parity.get('top1_agreement', float('nan')):.3f}): its artifact was not kept.",
                        "pick another trial from `udacisense front` (a parity failure is never feasible).")
    source = record.artifact_path
    if source is None or not source.is_file() or sha256_of(source) != record.artifact_sha256:
        raise UserError(f"The stored artifact of trial {trial_number} ({source}) is missing or was modified.",
                        "re-run the search for that configuration; never ship an artifact that fails its checksum.")
    runtime, backend = cast(LoweredRuntime, record.runtime), record.backend
    rule = _trial_rule(record, runner)
    with atomic_dir(out_dir) as folder:
        artifact = folder / f"model{ARTIFACT_SUFFIX[runtime]}"
        shutil.copyfile(source, artifact)
        reference = folder / REFERENCE_NAME
        shutil.copyfile(source.parent / REFERENCE_NAME, reference)
        parity, test_top1 = check_parity(artifact, runtime, backend, reference, rule, workspace)
        latency = runner.measure_latency(load_runner(artifact.read_bytes(), runtime, backend), runtime,
                                         runs=_retime_runs(runner))
        card, constraints = _card(workspace, record, artifact, reference, parity, rule, test_top1, latency, runner,
                                  study_path, picked_by)
        write_json(folder / CARD_NAME, card)
    artifact = out_dir / artifact.name
    return ExportResult(artifact, out_dir / CARD_NAME, parity, latency, constraints, card["delegation"])


def delegation_line(delegation: dict) -> str:
    """One line on a ``.pte``'s delegate coverage: what an app pays for on slow portable kernels, if anything."""
    if delegation["fully_delegated"]:
        return f"all {delegation['delegated_nodes']} operators delegated to XNNPACK"
    left = ", ".join(f"{op} x{count}" for op, count in delegation["portable_ops"].items())
    return (f"{delegation['delegated_nodes']} operators delegated to XNNPACK, {delegation['portable_nodes']} "
            f"left to portable kernels: {left}")


def _card(workspace: Workspace, record: TrialRecord, artifact: Path, reference: Path, parity: ParityReport,
          rule: ParityRule, test_top1: float, latency: TrialLatency, runner: TrialRunner,
          study_path: str, picked_by: str | None) -> tuple[dict, dict[str, float]]:
    data, profile, study = workspace.data, workspace.profile, workspace.study
    runtime, backend = record.runtime, record.backend
    targets, main = study.targets, latency.reference
    constraints = {
        "accuracy": runner.floor - record.val_accuracy,
        "size": record.size_ratio - (1 - targets.size_reduction),
        "latency": main.ratio - (1 - targets.latency_reduction),
        "parity": rule.shortfall(parity),
    }
    card = {
        "name": f"{study.name}-trial-{record.number}",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        # Enough for `udacisense verify` from any directory: the study file (absolute, and relative to the
        # card for a moved folder) and the directory its own relative paths (runs, data) are resolved in.
        "study_file": str(Path(study_path).resolve()),
        # The card is written in a sibling folder that replaces the export folder: same relative path.
        "study_file_from_card": os.path.relpath(Path(study_path).resolve(), artifact.parent.resolve()),
        "working_directory": str(Path.cwd()),
        "trial": record.number,
        "picked_by": picked_by or "named with --trial",
        "artifact": artifact.name,
        "sha256": sha256_of(artifact),
        "bytes": artifact.stat().st_size,
        "format": {"executorch": "ExecuTorch program (.pte), XNNPACK delegate",
                   "torchscript": "TorchScript (frozen), PyTorch runtime (deprecated upstream: legacy option)"}[runtime],
        "runtime": runtime,
        "deployment": deployment_label(runtime, backend),
        "quantization_backend": backend,
        "classes": list(data.classes),
        "input": {"shape": list(workspace.example_input.shape), "dtype": "float32", "layout": "NCHW, RGB",
                  "normalisation": {"mean": list(data.mean), "std": list(data.std),
                                    "formula": "(pixel / 255 - mean) / std"}},
        "pipeline": record.pipeline,
        "delegation": record.delegation,
        "stages": record.stages,
        "targets": {
            "meets_targets": all(value <= 0 for value in constraints.values()),
            "constraints": constraints,  # <= 0 meets the target
            "accuracy_floor": runner.floor, "max_size_ratio": 1 - targets.size_reduction,
            "max_latency_ratio": 1 - targets.latency_reduction,
        },
        "metrics": {
            "val_top1": record.val_accuracy, "test_top1": test_top1,
            "latency_ms": main.candidate.median_ms, "reference_latency_ms": main.reference.median_ms,
            "reference_runtime": main.reference.runtime,
            "latency_ratio_to_baseline": main.ratio,
            "latency_ratio_interval": {"p10": main.ratio_p10, "p90": main.ratio_p90, "rounds": main.rounds,
                                       "what": "deciles of the per-round ratios"},
            "latency_ratio_same_runtime": latency.same_runtime.ratio,
            "size_ratio_to_baseline": record.size_ratio,
            "baseline": {"val_top1": profile.val_top1, "test_top1": profile.test_top1,
                         "bytes": profile.bytes(main.reference.runtime)},
            "latency": main.candidate.as_dict(), "baseline_latency": main.reference.as_dict(),
            "torch_threads": main.candidate.torch_threads,
            "executorch_threads": executorch_threads(),
        },
        "parity": {**parity.as_dict(), "rule": rule.as_dict(), "reference": REFERENCE_NAME,
                   "reference_sha256": sha256_of(reference), "split": "test"},
    }
    return card, constraints


def read_card(artifact: Path) -> dict:
    card_path = artifact.parent / CARD_NAME
    if not artifact.is_file():
        raise UserError(f"{artifact} does not exist.", "pass the path of an exported model.pte or model.pt.")
    try:
        return json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"No readable model card beside {artifact} ({error}).",
                        f"export with `udacisense export`, which writes {CARD_NAME} next to the artifact.") from None


def card_study(card: dict, card_dir: Path) -> tuple[Path, Path]:
    """The study file a model card was exported from, and the directory to resolve its relative paths in."""
    working = Path(card.get("working_directory") or Path.cwd())
    candidates = [Path(card["study_file"]) if Path(card["study_file"]).is_absolute() else working / card["study_file"]]
    if card.get("study_file_from_card"):
        candidates.append(card_dir / card["study_file_from_card"])
    study = next((path for path in candidates if path.is_file()), None)
    if study is None:
        raise UserError(f"The study file of this model card is not here (looked for {', '.join(map(str, candidates))}).",
                        "pass the study file it was exported from with `--study PATH`.")
    return study, working if working.is_dir() else Path.cwd()


def verify_artifact(artifact: Path, workspace: Workspace) -> tuple[dict, ParityReport]:
    card = read_card(artifact)
    checks = [(artifact, card["sha256"])]
    reference = artifact.parent / card["parity"]["reference"]
    if "reference_sha256" in card["parity"]:
        checks.append((reference, card["parity"]["reference_sha256"]))
    for path, expected in checks:
        actual = sha256_of(path) if path.is_file() else "missing"
        if actual != expected:
            raise UserError(f"{path} does not match its model card: sha256 {actual[:16]}… != {expected[:16]}….",
                            "the file was modified or corrupted; export it again and do not ship this copy.")
    # Cards written before the rules were recorded held only the int8-level agreement.
    rule = card["parity"].get("rule") or {"min_agreement": card["parity"].get("min_agreement", 0.95), "max_abs_diff": None}
    parity, _ = check_parity(artifact, card["runtime"], card.get("quantization_backend"), reference,
                             ParityRule(float(rule["min_agreement"]), rule["max_abs_diff"]), workspace)
    return card, parity
