"""Export a chosen trial as a verified mobile artifact with its model card; verify one later.

Before a pick the front's candidates are timed again (more runs, alternating with the reference)
and picked on those figures; an export is written to a temporary folder that replaces the output
folder only once the artifact passed its parity check.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import optuna
import pandas as pd
import torch

from udacisense.common.errors import UserError
from udacisense.common.files import atomic_dir, sha256_of, write_json
from udacisense.datasources import cifar100, imagefolder
from udacisense.datasources.loaders import BatchLoader, DataBundle, Split
from udacisense.evaluators.accuracy import accuracy_from_logits, predict_logits
from udacisense.evaluators.evidence import verdict
from udacisense.evaluators.latency import BlockedComparison
from udacisense.evaluators.parity import ParityReport, ParityRule, compare_logits
from udacisense.runtime import ARTIFACT_SUFFIX, Backend, LoweredRuntime, deployment_label, executorch_threads, load_runner
from udacisense.search.results.front import mark_targets, public_rows, write_front
from udacisense.search.study.records import StudyAttr, store_study
from udacisense.search.study.trial_record import TrialRecord
from udacisense.search.study.workspace import Workspace
from udacisense.search.trial.measuring import Yardstick, target_constraints

CARD_NAME = "model_card.json"
REFERENCE_NAME = "reference_logits.pt"


@dataclass(frozen=True)
class ExportResult:
    artifact: Path
    card: Path
    parity: ParityReport
    latency: BlockedComparison  # against the float reference, in independent blocks
    constraints: dict[str, float]
    delegation: dict | None  # Delegation.as_dict() of a .pte; None for TorchScript or a trial stored before it was kept

    @property
    def meets_targets(self) -> bool:
        return all(value <= 0 for value in self.constraints.values())


def check_parity(artifact: Path, runtime: LoweredRuntime, backend: Backend | None, reference: Path, rule: ParityRule,
                 test: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int) -> tuple[ParityReport, float]:
    """Run the artifact on the ``test`` batches (the whole test split) and compare with the PyTorch model's stored
    logits; returns the parity and the artifact's test top-1."""
    run = load_runner(artifact.read_bytes(), runtime, backend)
    logits, labels = predict_logits(run, test)
    expected = torch.load(reference, map_location="cpu", weights_only=True)
    parity = compare_logits(expected, logits)
    if not rule.passes(parity):
        raise UserError(
            f"The artifact {artifact.name} disagrees with its PyTorch model: top-1 agreement "
            f"{parity.top1_agreement:.3f}, max |difference| {parity.max_abs_diff:.4g} over {parity.samples} test "
            f"images (required: {rule.describe()}).",
            "do not ship it; export another trial, or report the pipeline as a bug.",
        )
    return parity, accuracy_from_logits(logits, labels, num_classes).top1


def _trial_rule(record: TrialRecord, yardstick: Yardstick) -> ParityRule:
    return yardstick.parity_rule(quantized=record.backend is not None)


def artifact_problem(record: TrialRecord) -> str | None:
    """Why the trial's kept artifact cannot be re-timed or exported (missing, or not the file the trial measured); None if it can."""
    path = record.artifact_path
    if path is None:
        return "no artifact was kept"
    if not path.is_file():
        return f"artifact file missing ({path})"
    if sha256_of(path) != record.artifact_sha256:
        return f"artifact file modified since the trial measured it ({path}: sha256 differs)"
    return None


def retime_front(front: pd.DataFrame, study: optuna.Study, yardstick: Yardstick) -> pd.DataFrame:
    """The front with every exportable candidate timed again against the reference in independent blocks
    (``Yardstick.time_in_blocks``): picks rest on these figures and their interval across blocks, not on
    one short trial measurement.

    ``retimed`` says which rows were; ``retime_note`` says why each other row was not (it keeps the
    search's figures, and its artifact cannot be exported).
    """
    trials = study.get_trials(deepcopy=False)
    retimed = front.assign(retimed=False, retime_note="")
    artifacts: dict[int, tuple[bytes, LoweredRuntime, Backend | None]] = {}
    for index, row in front.iterrows():
        record = TrialRecord.of(trials[int(row["trial"])])
        note = "parity failed during the search: no artifact was kept" if not record.parity_ok else artifact_problem(record)
        if note is not None:
            retimed.loc[index, "retime_note"] = note
            continue
        artifacts[cast(int, index)] = (cast(Path, record.artifact_path).read_bytes(), cast(LoweredRuntime, record.runtime),
                                       record.backend)
    for index, timing in yardstick.time_in_blocks(artifacts).items():
        # p10/p90 were deciles of rounds within one run: the interval across blocks replaces them.
        retimed.loc[index, ["latency_ms", "reference_latency_ms", "latency_ratio", "latency_ratio_p10", "latency_ratio_p90",
                            "latency_blocks", "retimed"]] = [timing.candidate_ms, timing.reference_ms, timing.ratio.ratio,
                                                             None, None, timing.ratio.blocks, True]
        retimed.at[index, "latency_ratio_ci95"] = None if timing.ratio.interval is None else list(timing.ratio.interval)
    workspace = yardstick.workspace
    return mark_targets(retimed, workspace.study.targets, workspace.profile.val_top1)


def keep_retimed_front(study: optuna.Study, front: pd.DataFrame, everything: pd.DataFrame, workspace: Workspace,
                       out_dir: Path) -> dict[str, Path]:
    """Write the re-timed ``front`` a pick is made on into ``out_dir`` (over the search-time files) and store it
    with the study, so that what the pick rested on can be read again."""
    # The rows as pareto_front.json holds them (full precision; pandas' to_json rounds to 10 digits).
    store_study(study, {StudyAttr.RETIMED_FRONT: json.loads(json.dumps(public_rows(front).to_dict(orient="records"),
                                                                       default=str))})
    return write_front(front, everything, workspace.study.targets, workspace.profile.val_top1, out_dir)


def export_trial(workspace: Workspace, study: optuna.Study, trial_number: int, out_dir: Path,
                 yardstick: Yardstick, picked_by: str | None = None) -> ExportResult:
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
    if not record.is_measured:
        raise UserError(f"Trial {trial_number} was screened: its figures are estimates and it was never lowered, "
                        "so it has no artifact to export.",
                        "pick a measured trial from `udacisense front` (the search promotes and measures a screened "
                        "trial once the measured front no longer rules it out).")
    if not record.parity_ok:
        raise UserError(f"Trial {trial_number} failed its parity check during the search (top-1 agreement "
                        f"{record.parity.get('top1_agreement', float('nan')):.3f}): its artifact was not kept.",
                        "pick another trial from `udacisense front` (a parity failure is never feasible).")
    problem = artifact_problem(record)
    if problem is not None:
        raise UserError(f"The stored artifact of trial {trial_number} cannot be exported: {problem}.",
                        "re-run the search for that configuration; never ship an artifact that fails its checksum.")
    source = cast(Path, record.artifact_path)
    runtime, backend = cast(LoweredRuntime, record.runtime), record.backend
    rule = _trial_rule(record, yardstick)
    with atomic_dir(out_dir) as folder:
        artifact = folder / f"model{ARTIFACT_SUFFIX[runtime]}"
        shutil.copyfile(source, artifact)
        reference = folder / REFERENCE_NAME
        shutil.copyfile(source.parent / REFERENCE_NAME, reference)
        parity, test_top1 = check_parity(artifact, runtime, backend, reference, rule, workspace.data.loader("test"),
                                         len(workspace.data.classes))
        latency = yardstick.time_in_blocks({record.number: (artifact.read_bytes(), runtime, backend)})[record.number]
        card, constraints = _card(workspace, record, artifact, reference, parity, rule, test_top1, latency, yardstick,
                                  picked_by)
        write_json(folder / CARD_NAME, card)
    # With the study too: `report` reads the export's figures from the storage on any machine.
    store_study(study, {StudyAttr.EXPORTED_CARD: json.loads(json.dumps(card, default=str))})
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
          rule: ParityRule, test_top1: float, latency: BlockedComparison, yardstick: Yardstick,
          picked_by: str | None) -> tuple[dict, dict[str, float]]:
    data, profile, study = workspace.data, workspace.profile, workspace.study
    runtime, backend = record.runtime, record.backend
    targets, reference_runtime = study.targets, study.evaluation.reference_runtime
    max_latency, max_size = targets.max_latency_ratio, targets.max_size_ratio
    constraints = target_constraints(targets, yardstick.floor, record.val_accuracy, latency.ratio.ratio, record.size_ratio,
                                     rule.shortfall(parity))
    test = record.evidence("test")
    verdicts = {
        "accuracy": None if test is None else verdict(test.drop, test.drop_ci95, targets.max_accuracy_drop),
        "latency": verdict(latency.ratio.ratio, latency.ratio.interval, max_latency),
        "size": verdict(record.size_ratio, (record.size_ratio, record.size_ratio), max_size),
    }
    card = {
        "name": f"{study.name}-trial-{record.number}",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "study": study.name,
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
            "accuracy_floor": yardstick.floor, "max_size_ratio": max_size, "max_latency_ratio": max_latency,
            "max_accuracy_drop": targets.max_accuracy_drop,
            # Per target: "met" (the whole 95% interval inside the allowance), "point estimate only", or "missed";
            # accuracy on the paired test drop (test images never select), latency across timing blocks.
            "verdicts": verdicts,
        },
        "metrics": {
            # The headline is test accuracy (never used to select); validation is the selection score,
            # biased upwards in the chosen trial (the best of many noisy draws).
            "test_top1": test_top1, "val_top1": record.val_accuracy, "val_top1_is": "the selection score",
            "accuracy_evidence": {split: None if evidence is None else evidence.as_dict()
                                  for split, evidence in (("test", test), ("val", record.evidence("val")))},
            "latency_ms": latency.candidate_ms, "reference_latency_ms": latency.reference_ms,
            "reference_runtime": reference_runtime,
            "latency_ratio_to_baseline": latency.ratio.ratio,
            "latency_ratio_ci95": None if latency.ratio.interval is None else list(latency.ratio.interval),
            "latency_blocks": {"ratios": list(latency.ratio.ratios), "what": "geometric mean and 95% t-interval of the "
                               "ratios of independent timing blocks (fresh program loads, alternating rounds)"},
            "latency_ratio_same_runtime_at_search": record.latency_ratio_same_runtime,
            "size_ratio_to_baseline": record.size_ratio,
            "baseline": {"val_top1": profile.val_top1, "test_top1": profile.test_top1,
                         "bytes": profile.bytes(reference_runtime)},
            "latency_blocks_detail": [block.as_dict() for block in latency.blocks],
            "torch_threads": latency.blocks[0].candidate.torch_threads,
            "executorch_threads": executorch_threads(),
        },
        "parity": {**parity.as_dict(), "rule": rule.as_dict(), "reference": REFERENCE_NAME,
                   "reference_sha256": sha256_of(reference), "split": "test"},
        "test_images": listed_test_images(data),
    }
    return card, constraints


# What `verify --data` takes for each source: no local path, the card is read on other machines.
DATA_ROOTS = {
    "imagefolder": "the folder that holds test/<class>/<file> (the study's `data.root`); `path` is relative to it",
    "cifar100-household": "torchvision's CIFAR-100 root, the folder that holds cifar-100-python/; `index` is the "
                          "image's index in torchvision's CIFAR-100 test set (train=False)",
}


def _list_sha256(images: list[dict]) -> str:
    return hashlib.sha256(json.dumps(images, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def listed_test_images(data: DataBundle) -> dict:
    """Which test images parity was checked on, in order, and how to read them: with them, ``verify`` needs
    nothing of the study (no workspace, no cache) on any machine."""
    key = "index" if data.config.source == "cifar100-household" else "path"
    # Images made in memory (tests) have no sources: such a card lists none, and `verify` refuses it.
    images = [{key: item, "label": int(label)} for item, label in zip(data.test.sources, data.test.labels.tolist())]
    return {
        "source": data.config.source,
        "data_root": DATA_ROOTS[data.config.source],
        "image_size": data.config.image_size,
        "read": "RGB, 8 bits per channel, not resized; NCHW float32 after normalisation",
        "normalisation": {"mean": list(data.mean), "std": list(data.std), "formula": "(pixel / 255 - mean) / std"},
        # Dynamic int8 artifacts quantize activations per batch: parity is reproduced at the same batch size.
        "batch_size": data.config.eval_batch_size,
        "count": len(images),
        "sha256": _list_sha256(images),
        "sha256_of": "`images` as compact JSON with sorted keys",
        "images": images,
    }


def read_card(artifact: Path) -> dict:
    card_path = artifact.parent / CARD_NAME
    if not artifact.is_file():
        raise UserError(f"{artifact} does not exist.", "pass the path of an exported model.pte or model.pt.")
    try:
        return json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"No readable model card beside {artifact} ({error}).",
                        f"export with `udacisense export`, which writes {CARD_NAME} next to the artifact.") from None


def read_test_images(listed: dict, data_root: Path) -> Split:
    """Exactly the test images a model card lists, in its order, from ``data_root``: no cache, extraction or download."""
    images = listed["images"]
    if _list_sha256(images) != listed.get("sha256"):
        raise UserError("The model card's list of test images does not match its sha256: the card was modified.",
                        "export the trial again, and do not ship this copy.")
    labels = torch.tensor([int(image["label"]) for image in images], dtype=torch.long)
    if listed["source"] == "cifar100-household":
        pixels, found = cifar100.read_images(data_root, "test", [int(image["index"]) for image in images])
        if not torch.equal(found, labels):
            raise UserError(f"The CIFAR-100 test images in {data_root} do not carry the labels the model card lists.",
                            f"pass with `--data` {DATA_ROOTS[listed['source']]}.")
        return Split(pixels, labels)
    paths = [data_root / image["path"] for image in images]
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise UserError(f"{len(missing)} of the {len(paths)} test images the model card lists are not under {data_root} "
                        f"(first: {missing[0]}).", f"pass with `--data` {DATA_ROOTS[listed['source']]}.")
    size = int(listed["image_size"])
    pixels, _ = imagefolder.decode(list(zip(paths, labels.tolist())), size,
                                   size_fix=f"pass with `--data` the images parity was checked on as they were ({size}x{size}, not resized).")
    return Split(pixels, labels)


def verify_artifact(artifact: Path, data_root: Path | None) -> tuple[dict, ParityReport, float]:
    """Check an exported folder against its model card (checksums) and re-run parity on the test images it lists,
    read from ``data_root``; returns the card, the parity and the artifact's test top-1. Reads only."""
    card = read_card(artifact)
    listed = card.get("test_images")
    if not listed or not listed.get("images"):
        raise UserError(f"The model card beside {artifact} does not list the test images its parity was checked on "
                        "(it was exported by an earlier version).",
                        "export the trial again with this version (`udacisense export --study ... --trial "
                        f"{card.get('trial', 'N')} --out DIR`) and verify that folder.")
    reference = artifact.parent / card["parity"]["reference"]
    for path, expected in ((artifact, card["sha256"]), (reference, card["parity"]["reference_sha256"])):
        actual = sha256_of(path) if path.is_file() else "missing"
        if actual != expected:
            raise UserError(f"{path} does not match its model card: sha256 {actual[:16]}… != {expected[:16]}….",
                            "the file was modified or corrupted; export it again and do not ship this copy.")
    if data_root is None:
        raise UserError(f"`verify` runs the artifact on the {len(listed['images'])} test images its model card lists "
                        f"({listed['source']}), and was not told where they are.",
                        f"pass `--data DIR`: {DATA_ROOTS[listed['source']]}.")
    split = read_test_images(listed, data_root)
    normalisation = listed["normalisation"]
    test = BatchLoader(split, int(listed["batch_size"]), tuple(normalisation["mean"]), tuple(normalisation["std"]),
                       shuffle=False, augment=False, seed=0)
    rule = card["parity"]["rule"]
    parity, top1 = check_parity(artifact, card["runtime"], card.get("quantization_backend"), reference,
                                ParityRule(float(rule["min_agreement"]), rule["max_abs_diff"]), test, len(card["classes"]))
    return card, parity, top1
