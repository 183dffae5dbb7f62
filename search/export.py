"""Export a chosen trial as a verified mobile artifact with its model card; verify one later."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from udacisense.common.errors import UserError
from udacisense.common.files import atomic_path, sha256_of, write_json
from udacisense.evaluators.accuracy import accuracy_from_logits, predict_logits
from udacisense.evaluators.parity import ParityReport, compare_logits
from udacisense.runtime import load_runner
from udacisense.search.objective import ARTIFACT_SUFFIX, TrialRunner
from udacisense.search.workspace import Workspace

MIN_AGREEMENT = 0.95
CARD_NAME = "model_card.json"
REFERENCE_NAME = "reference_logits.pt"


@dataclass(frozen=True)
class ExportResult:
    artifact: Path
    card: Path
    parity: ParityReport
    latency_ms: float
    latency_ratio: float


def check_parity(artifact: Path, runtime: str, backend: str | None, reference: Path, workspace: Workspace) -> tuple[ParityReport, torch.Tensor]:
    """Run the artifact on the whole test split and compare with the PyTorch model's stored logits."""
    run = load_runner(artifact.read_bytes(), runtime, backend)  # type: ignore[arg-type]
    logits, labels = predict_logits(run, workspace.data.loader("test"))
    expected = torch.load(reference, map_location="cpu", weights_only=True)
    parity = compare_logits(expected, logits)
    if not parity.passes(MIN_AGREEMENT):
        raise UserError(
            f"The artifact {artifact} disagrees with its PyTorch model: top-1 agreement {parity.top1_agreement:.3f} "
            f"(< {MIN_AGREEMENT}), max |difference| {parity.max_abs_diff:.4f} over {parity.samples} test images.",
            "do not ship it; export another trial, or report the pipeline as a bug.",
        )
    return parity, accuracy_from_logits(logits, labels, len(workspace.data.classes)).top1


def export_trial(workspace: Workspace, study: optuna.Study, trial_number: int, out_dir: Path,
                 runner: TrialRunner, study_path: str) -> ExportResult:
    trials = study.get_trials(deepcopy=False)
    if not 0 <= trial_number < len(trials):
        raise UserError(f"The study has no trial {trial_number} (it has {len(trials)}).", "pick a number from `udacisense front`.")
    trial = trials[trial_number]
    if trial.state is not optuna.trial.TrialState.COMPLETE:
        raise UserError(f"Trial {trial_number} is {trial.state.name.lower()}, not complete; it has no artifact.",
                        "pick a completed trial from `udacisense front`.")
    source = Path(trial.user_attrs["artifact_path"])
    if not source.is_file() or sha256_of(source) != trial.user_attrs["artifact_sha256"]:
        raise UserError(f"The stored artifact of trial {trial_number} ({source}) is missing or was modified.",
                        "re-run the search for that configuration; never ship an artifact that fails its checksum.")
    runtime, backend = trial.user_attrs["runtime"], trial.user_attrs.get("backend")
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact = out_dir / f"model{ARTIFACT_SUFFIX[runtime]}"
    with atomic_path(artifact) as tmp:
        shutil.copyfile(source, tmp)
    reference = out_dir / REFERENCE_NAME
    with atomic_path(reference) as tmp:
        shutil.copyfile(source.parent / REFERENCE_NAME, tmp)
    parity, test_top1 = check_parity(artifact, runtime, backend, reference, workspace)
    latency, reference_latency = runner.measure_latency(load_runner(artifact.read_bytes(), runtime, backend), runtime)  # type: ignore[arg-type]
    latency_ratio = latency.ratio_to(reference_latency)
    data, metrics = workspace.data, workspace.metrics
    card = {
        "name": f"{workspace.study.name}-trial-{trial_number}",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        # Enough for `udacisense verify` from any directory: the study file (absolute, and relative to the
        # card for a moved folder) and the directory its own relative paths (runs, data) are resolved in.
        "study_file": str(Path(study_path).resolve()),
        "study_file_from_card": os.path.relpath(Path(study_path).resolve(), out_dir.resolve()),
        "working_directory": str(Path.cwd()),
        "trial": trial_number,
        "artifact": artifact.name,
        "sha256": sha256_of(artifact),
        "bytes": artifact.stat().st_size,
        "format": {"executorch": "ExecuTorch program (.pte), XNNPACK delegate",
                   "torchscript": "TorchScript (frozen), PyTorch mobile/server runtime"}[runtime],
        "runtime": runtime,
        "quantization_backend": backend,
        "classes": list(data.classes),
        "input": {"shape": list(workspace.example_input.shape), "dtype": "float32", "layout": "NCHW, RGB",
                  "normalisation": {"mean": list(data.mean), "std": list(data.std),
                                    "formula": "(pixel / 255 - mean) / std"}},
        "pipeline": trial.user_attrs.get("pipeline"),
        "stages": trial.user_attrs.get("stages", []),
        "metrics": {
            "val_top1": trial.values[0], "test_top1": test_top1,
            "latency_ms": latency.median_ms, "latency_ratio_to_baseline": latency_ratio,
            "size_ratio_to_baseline": trial.values[2],
            "baseline": {"val_top1": metrics["accuracy"]["val"]["top1"], "test_top1": metrics["accuracy"]["test"]["top1"],
                         "bytes": metrics["size"][runtime]["bytes"]},
            "latency": latency.as_dict(), "baseline_latency": reference_latency.as_dict(),
        },
        "parity": {**parity.as_dict(), "min_agreement": MIN_AGREEMENT, "reference": REFERENCE_NAME,
                   "split": "test"},
    }
    card_path = write_json(out_dir / CARD_NAME, card)
    return ExportResult(artifact, card_path, parity, latency.median_ms, latency_ratio)


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
    actual = sha256_of(artifact)
    if actual != card["sha256"]:
        raise UserError(f"{artifact} does not match its model card: sha256 {actual[:16]}… != {card['sha256'][:16]}….",
                        "the file was modified or corrupted; export it again and do not ship this copy.")
    parity, _ = check_parity(artifact, card["runtime"], card.get("quantization_backend"),
                             artifact.parent / card["parity"]["reference"], workspace)
    return card, parity
