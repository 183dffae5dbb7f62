"""`udacisense init`: a study file for the user's own trained model and image folder.

It reads what the checkpoint holds (architecture, width, classes, normalisation) and what the folder
holds (classes, image size, splits), sizes the validation split by the statistics the product states,
scores the model on its validation images before writing anything, and writes one study file whose
baseline is the checkpoint (never retrained).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from udacisense.common.errors import UserError
from udacisense.common.files import write_text
from udacisense.datasources.config import DataConfig
from udacisense.datasources.inspection import FolderReport, inspect_folder
from udacisense.datasources.loaders import DataBundle, load_data
from udacisense.evaluators.accuracy import accuracy_from_logits, predict_logits
from udacisense.evaluators.intervals import wilson
from udacisense.models.checkpoints import CheckpointInfo, check_classes, inspect_checkpoint
from udacisense.models.config import ModelConfig
from udacisense.models.mobilenet import build_model
from udacisense.search.study.config import parse_study

# 2,000 validation images resolve a paired accuracy difference of about a point for a model that disagrees
# with the baseline on 5% of them (1.96 * sqrt(0.05 / 2000) = 0.0098), the int8 copy's usual share.
VALIDATION_IMAGES = 2000
# Normalisations a notebook commonly trains with, tried in this order when the checkpoint stores none:
# the training split's own statistics (what this tool computes by default) and ImageNet's.
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class InitReport:
    """What `init` found and wrote."""

    path: Path
    checkpoint: CheckpointInfo
    folder: FolderReport
    val_images: int
    test_images: int
    val_top1: float
    chance: float
    normalisation: str  # where the written mean and std come from

    def describe(self) -> str:
        folder, info = self.folder, self.checkpoint
        splits = ", ".join(f"{s}/" for s in folder.splits) or "one folder per class"
        source = {"val": "test/" if "test" in folder.splits else "the training images", "test": "the training images"}
        carved = ("; " + ", ".join(f"{split} carved from {source[split]}" for split in folder.carved)
                  + " (the same files every run)") if folder.carved else ""
        lines = [
            f"model:      {info.name}, {info.num_classes} classes"
            + ("" if info.classes else " (the checkpoint stores no class names: the folder's name order is assumed)"),
            f"images:     {len(folder.classes)} classes in {folder.root} ({splits}{carved}), "
            f"{folder.image_size}x{folder.image_size} px"
            + (f"; {folder.resized} of another size, resized" if folder.resized else "")
            + "".join(f"; {n} {mode} converted to RGB" for mode, n in folder.converted.items())
            + (f"; {len(folder.unreadable)} unreadable, skipped" if folder.unreadable else ""),
            f"splits:     {self.val_images} validation images ({_paired_resolution(self.val_images)}), "
            f"{self.test_images} test images ({_paired_resolution(self.test_images)})",
            f"validation: top-1 {self.val_top1:.3f} against chance {self.chance:.3f} ({self.normalisation})",
            f"wrote {self.path}",
        ]
        if "val" in folder.carved and "test" not in folder.splits:
            lines.insert(-1, "note:       validation is carved from the training images: if the model trained on every one "
                             "of them, its validation score is optimistic (a val/ or test/ folder of images it never saw "
                             "avoids that)")
        return "\n".join(lines)


def _paired_resolution(images: int) -> str:
    half_width = 1.96 * math.sqrt(0.05 / images) if images else float("inf")
    return f"a paired drop known to about ±{100 * half_width:.1f} points"


def _validation(folder: FolderReport) -> dict[str, Any]:
    """Where validation comes from when the folder has no val/: the test images where there are test images (the
    user's model was trained on every training file, so it has memorised those), ``VALIDATION_IMAGES`` of them at
    most half, the rest for test; else a share of the training images, never more than a third of them."""
    if "val" in folder.splits:
        return {}
    if "test" in folder.splits:
        pool = sum(folder.counts["test"])
        return {"val_source": "test", "val_fraction": min(0.5, max(0.05, VALIDATION_IMAGES / pool))}
    pool = sum(folder.counts["training"]) + sum(folder.counts["validation"])
    return {"val_fraction": min(1 / 3, max(0.05, VALIDATION_IMAGES / pool))}


def _score(info: CheckpointInfo, model_config: ModelConfig, bundle: DataBundle) -> tuple[float, float]:
    """The model's mean cross-entropy and top-1 on the validation images."""
    model = build_model(model_config, info.num_classes, bundle.config.image_size)
    model.load_state_dict(info.state_dict)
    logits, labels = predict_logits(model.eval(), bundle.loader("val"))
    return float(nn.functional.cross_entropy(logits, labels)), accuracy_from_logits(logits, labels, len(bundle.classes)).top1


def _best_normalisation(info: CheckpointInfo, model_config: ModelConfig,
                        bundle: DataBundle) -> tuple[tuple[float, ...], tuple[float, ...], float, str]:
    """The normalisation the model fits best: the one its checkpoint stores, else the better of the training
    split's statistics and ImageNet's (a model fed the wrong one scores near chance). Judged by cross-entropy,
    which weighs every image's confidence: on a few dozen validation images two normalisations often tie on
    top-1, and the first of a tie would win whatever the model was trained with."""
    if info.mean and info.std:
        tried = [(info.mean, info.std, "the checkpoint's normalisation")]
    else:
        tried = [(bundle.mean, bundle.std, "normalised by the training images' statistics"),
                 (*IMAGENET, "normalised as ImageNet")]
    scored = [(*_score(info, model_config, dataclasses.replace(bundle, mean=mean, std=std)), mean, std, label)
              for mean, std, label in tried]
    _, top1, mean, std, label = min(scored, key=lambda s: s[0])
    return tuple(mean), tuple(std), top1, label


def _check_above_chance(top1: float, images: int, classes: int, info: CheckpointInfo, label: str) -> None:
    chance = 1 / classes
    low, _ = wilson(round(top1 * images), images)
    if low <= chance:
        raise UserError(
            f"{info.path} scores {top1:.3f} top-1 on {images} validation images ({label}), no better than chance "
            f"({chance:.3f} for {classes} classes): the model and the images do not agree.",
            "check that the class folders' name order is the model's label order, that the images are what it was "
            "trained on, and set `data.mean` and `data.std` in the written study to the normalisation it was trained "
            "with (or save them in the checkpoint: {\"state_dict\": ..., \"mean\": [...], \"std\": [...]}).")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def study_toml(tables: dict[str, Any], notes: dict[str, str] | None = None) -> str:
    """A study file of ``tables`` (top-level keys first), each table after its note as comment lines."""
    notes = notes or {}
    lines = ["# Written by `udacisense init`; edit freely (every key is validated when a command reads it).", ""]
    for key, value in tables.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {_toml(value)}")
    for name, table in tables.items():
        if isinstance(table, dict):
            lines += ["", *(f"# {line}" for line in notes.get(name, "").splitlines()), f"[{name}]"]
            lines += [f"{key} = {_toml(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def init_study(model: Path, data: Path, out: Path, name: str, *, force: bool = False, skip_unreadable: bool = False,
               runs_dir: str = "runs", timeout_minutes: float = 30.0) -> InitReport:
    """Inspect ``model`` and ``data``, score the model on the validation images, and write the study file ``out``.

    Nothing is written when anything is wrong: a study file that exists (unless ``force``), a checkpoint of
    another architecture, classes that differ from the folder's, unreadable images (unless ``skip_unreadable``),
    or a model at chance on the validation images.
    """
    if out.exists() and not force:
        raise UserError(f"The study file {out} already exists.", "pass --force to replace it, or choose another --name.")
    info = inspect_checkpoint(model)
    folder = inspect_folder(data, skip_unreadable=skip_unreadable)
    check_classes(info, folder.classes, str(data))
    data_table = {**folder.data_table(), **_validation(folder)}
    model_config = ModelConfig(arch=info.arch, width_mult=info.width_mult)
    bundle = load_data(DataConfig(**data_table), 0, Path(runs_dir) / "cache")
    mean, std, top1, label = _best_normalisation(info, model_config, bundle)
    _check_above_chance(top1, len(bundle.val), len(bundle.classes), info, label)
    data_table.update(mean=list(mean), std=list(std))
    train_images = len(bundle.train)
    tables: dict[str, Any] = {
        "name": name, "seed": 0, "runs_dir": runs_dir,
        "data": data_table,
        "model": {"arch": info.arch, "width_mult": info.width_mult},
        # Students are distilled over about 150,000 image passes, between 5 and 80 epochs: a width-0.5 student of
        # the offline study reached within 4 points of its baseline in 40 epochs of 4,500 images (180,000), and
        # a search's first worker distils it inside the search's time limit.
        "baseline": {"checkpoint": str(model), "epochs": max(5, min(80, 150_000 // max(1, train_images))), "lr": 0.05},
        "targets": {"size_reduction": 0.30, "latency_reduction": 0.40, "max_accuracy_drop": 0.05},
        "search": {"timeout_minutes": timeout_minutes, "n_trials": 250},
        "space": {"stages": ["distill", "channels", "architecture", "quantize"], "quant_backends": ["xnnpack"],
                  "student_widths": [0.0, 0.5], "student_architectures": ["standard", "lean"]},
    }
    notes = {
        "data": f"{folder.image_size}-pixel images; {label}.",
        "baseline": "Your trained model, loaded and never retrained (its key is the file's sha256). The epochs and\n"
                    "learning rate are the schedule narrower students are distilled from it with.",
        "space": "xnnpack: the phone's backend (an ExecuTorch .pte); TorchScript int8 is a server artifact.",
    }
    parse_study(tables)  # every key validated before anything is written
    write_text(out, study_toml(tables, notes))
    return InitReport(out, info, folder, len(bundle.val), len(bundle.test), top1, 1 / len(bundle.classes), label)
