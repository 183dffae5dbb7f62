"""How to train: the ``[baseline]`` table of a study, and every stage's fine-tune."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from udacisense.common.schema import bounded, check_bounds


@dataclass(frozen=True)
class TrainConfig:
    """One fine-tuning or training run (the ``[baseline]`` table, and fine-tune stages)."""

    epochs: int = bounded(30, min=0, max=1000)
    lr: float = bounded(0.05, min=1e-6, max=10.0)
    momentum: float = bounded(0.9, min=0.0, max=0.999)
    weight_decay: float = bounded(5e-5, min=0.0, max=0.1)
    label_smoothing: float = bounded(0.1, min=0.0, max=0.5)
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    max_batches_per_epoch: int = bounded(0, min=0, doc="0: whole epochs; >0 caps batches (smoke tests)")

    def __post_init__(self) -> None:
        check_bounds(self, "finetune")

    def training_only(self) -> TrainConfig:
        """These training settings alone, as a plain TrainConfig: a subclass's own fields (the baseline's
        ``checkpoint``) dropped, so keys that hash a schedule stay what they were before such fields existed."""
        return TrainConfig(**{field.name: getattr(self, field.name) for field in fields(TrainConfig)})
