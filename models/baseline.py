"""The baseline, the start and teacher of every trial: trained once per study settings and then reused, or the
user's own trained checkpoint (``[baseline] checkpoint``), loaded and never retrained."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from udacisense.common.errors import UserError
from udacisense.common.files import save_torch
from udacisense.datasources.loaders import DataBundle
from udacisense.models.checkpoints import CheckpointInfo, check_classes, inspect_checkpoint
from udacisense.models.config import BaselineConfig, ModelConfig
from udacisense.models.mobilenet import ARCH_NAMES, build_model
from udacisense.training import TrainConfig, fit


@dataclass(frozen=True)
class Baseline:
    model: nn.Module
    directory: Path
    key: str
    reused: bool  # ``directory`` already held this baseline (its key), so what was measured of it still holds
    train_seconds: float
    source: Literal["trained", "loaded"] = "trained"  # loaded: the user's checkpoint


def baseline_key(model_config: ModelConfig, train_config: TrainConfig, bundle: DataBundle) -> str:
    """Everything that changes the trained weights; a different key means retraining."""
    return _key({"model": asdict(model_config), "train": asdict(train_config.training_only())}, bundle)


def _key(weights: dict, bundle: DataBundle) -> str:
    """The key of a baseline whose weights come from ``weights``, measured on ``bundle``."""
    payload = {
        **weights, "data": bundle.config.key_fields(),
        "classes": list(bundle.classes), "seed": bundle.seed, "train_samples": len(bundle.train),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _load_checkpoint(path: Path, model: nn.Module, key: str) -> dict | None:
    """Load a cached checkpoint if it was trained with the same settings; None if it must be retrained."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(
            f"The baseline checkpoint {path} is corrupt or unreadable ({type(error).__name__}: {error}).",
            f"delete {path} and run the command again to retrain the baseline.",
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"{path} is not a baseline checkpoint written by this tool.",
                        f"delete {path} and run the command again to retrain the baseline.")
    if checkpoint.get("key") != key:
        return None
    model.load_state_dict(checkpoint["state_dict"])
    return checkpoint


def loaded_baseline_key(model_config: ModelConfig, info: CheckpointInfo, bundle: DataBundle) -> str:
    """The key of a loaded baseline: the checkpoint file's sha256 in place of the training settings.

    The data, seed and model settings still count: they decide the validation split and the in-model resize,
    which the baseline's measurements and the students distilled from it depend on.
    """
    return _key({"model": asdict(model_config), "checkpoint": info.sha256}, bundle)


def ensure_baseline(model_config: ModelConfig, train_config: TrainConfig, bundle: DataBundle, directory: Path,
                    *, progress: bool = True) -> Baseline:
    """Train the baseline, or reuse ``directory/model.pt`` when its settings key matches; with a
    ``BaselineConfig.checkpoint``, load the user's checkpoint instead (``load_baseline``)."""
    if isinstance(train_config, BaselineConfig) and train_config.checkpoint:
        return load_baseline(model_config, Path(train_config.checkpoint), bundle, directory)
    key = baseline_key(model_config, train_config, bundle)
    torch.manual_seed(bundle.seed)
    model = build_model(model_config, len(bundle.classes), bundle.config.image_size)
    checkpoint = directory / "model.pt"
    cached = _load_checkpoint(checkpoint, model, key) if checkpoint.is_file() else None
    if cached is not None:
        return Baseline(model.eval(), directory, key, reused=True, train_seconds=float(cached.get("train_seconds", 0.0)))
    start = time.perf_counter()
    fit(model, bundle.loader("train", train=True), train_config, val=bundle.loader("val"),
        num_classes=len(bundle.classes), seed=bundle.seed, progress=progress, description="baseline")
    seconds = time.perf_counter() - start
    save_torch(checkpoint, {"key": key, "state_dict": model.state_dict(), "classes": list(bundle.classes),
                            "train_seconds": seconds})
    return Baseline(model.eval(), directory, key, reused=False, train_seconds=seconds)


def load_baseline(model_config: ModelConfig, checkpoint: Path, bundle: DataBundle, directory: Path) -> Baseline:
    """The user's trained model as the baseline: checked against ``model_config`` and the data's classes, loaded,
    and copied to ``directory/model.pt`` (as a trained one is kept) under a key of the file's contents."""
    if model_config.pretrained != "none" or model_config.weights_file:
        raise UserError("`baseline.checkpoint` is set, and so is `model.pretrained` or `model.weights_file`, which only "
                        "choose the weights a baseline starts training from.",
                        "remove `model.pretrained` and `model.weights_file`: the checkpoint is the baseline, never retrained.")
    info = inspect_checkpoint(checkpoint)
    if (info.arch, info.width_mult) != (model_config.arch, model_config.width_mult):
        raise UserError(f"{checkpoint} holds a {info.name}, but the study's `[model]` says "
                        f"{ARCH_NAMES[model_config.arch]} (width {model_config.width_mult:g}).",
                        f"set `model.arch = \"{info.arch}\"` and `model.width_mult = {info.width_mult:g}`.")
    check_classes(info, bundle.classes, bundle.config.root)
    key = loaded_baseline_key(model_config, info, bundle)
    model = build_model(model_config, info.num_classes, bundle.config.image_size)
    network = model[1] if isinstance(model, nn.Sequential) else model  # behind an in-model resize
    network.load_state_dict(info.state_dict)
    stored = directory / "model.pt"
    # The stored copy of the same file (same key) loads the same weights again; its presence says it was measured.
    reused = stored.is_file() and _load_checkpoint(stored, model, key) is not None
    if not reused:
        save_torch(stored, {"key": key, "state_dict": model.state_dict(), "classes": list(bundle.classes),
                            "train_seconds": 0.0, "checkpoint": str(checkpoint), "checkpoint_sha256": info.sha256})
    return Baseline(model.eval(), directory, key, reused=reused, train_seconds=0.0, source="loaded")
