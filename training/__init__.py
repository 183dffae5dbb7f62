"""The one training loop (baseline training and every fine-tune, with optional distillation) and its config.

It sits below the baseline and the compression stages, which both train, and above the evaluators
it validates with.
"""

from udacisense.training.config import TrainConfig
from udacisense.training.loop import (
    Distillation,
    EpochEndHook,
    EpochStartHook,
    TrainHistory,
    distillation_loss,
    fit,
)

__all__ = ["TrainConfig", "Distillation", "EpochEndHook", "EpochStartHook", "TrainHistory", "distillation_loss", "fit"]
