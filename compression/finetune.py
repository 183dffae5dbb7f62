"""Fine-tuning inside a stage: the shared training loop wired to the stage context."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from udacisense.compression.stage import StageContext
from udacisense.training import Distillation, EpochStartHook, TrainConfig, TrainHistory, fit


def finetune(module: nn.Module, config: TrainConfig, context: StageContext, *, description: str,
             distillation: Distillation | None = None,
             on_epoch_start: Sequence[EpochStartHook] = ()) -> TrainHistory:
    """Train ``module`` in place on the context's train split, validating on its val split each epoch.

    The context's epoch-end hooks run after every epoch, so the search can stop a hopeless trial.
    """
    return fit(
        module, context.data.loader("train", train=True, seed_offset=context.seed), config,
        val=context.data.loader("val"), num_classes=context.num_classes, distillation=distillation,
        on_epoch_start=on_epoch_start, on_epoch_end=context.epoch_end_hooks,
        seed=context.seed, progress=context.progress, description=description,
    )
