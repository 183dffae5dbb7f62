"""The trained baseline: trained once per study settings, then reused as the start and teacher of every trial."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from udacisense.common.errors import UserError
from udacisense.common.files import save_torch
from udacisense.datasources.loaders import DataBundle
from udacisense.models.config import ModelConfig
from udacisense.models.mobilenet import build_model
from udacisense.training import TrainConfig, fit


@dataclass(frozen=True)
class Baseline:
    model: nn.Module
    directory: Path
    key: str
    reused: bool
    train_seconds: float


def baseline_key(model_config: ModelConfig, train_config: TrainConfig, bundle: DataBundle) -> str:
    """Everything that changes the trained weights; a different key means retraining."""
    payload = {
        "model": asdict(model_config), "train": asdict(train_config), "data": asdict(bundle.config),
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


def ensure_baseline(model_config: ModelConfig, train_config: TrainConfig, bundle: DataBundle, directory: Path,
                    *, progress: bool = True) -> Baseline:
    """Train the baseline, or reuse ``directory/model.pt`` when its settings key matches."""
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
