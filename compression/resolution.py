"""Input resolution as a compression knob: change the in-model resize target, then fine-tune at it.

Compute of a convolutional network grows with the square of the resolution, so an upsampling
model (32 -> 224 inside ``forward``) can trade pixels for latency.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from udacisense.common.schema import check_bounds
from udacisense.compression.finetune import finetune
from udacisense.compression.stage import CompressedModel, ModelForm, Signature, StageContext, register_stage, require_form
from udacisense.models.mobilenet import ResizeInput
from udacisense.training import TrainConfig


@dataclass(frozen=True)
class ResolutionConfig:
    """Resize inputs to ``size``×``size`` inside the model (the data's own size removes the resize)."""

    size: int = field(metadata={"min": 8, "max": 1024, "doc": "pixels"})
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=0))
    kind: ClassVar[str] = "resolution"

    def __post_init__(self) -> None:
        check_bounds(self, self.kind)

    def transition(self, signature: Signature) -> Signature:
        require_form(self, signature, ModelForm.FLOAT)
        return signature

    def describe(self) -> str:
        return f"resolution({self.size})"


def set_resolution(module: nn.Module, size: int, native: int) -> nn.Module:
    """A copy of ``module`` whose input is resized to ``size`` (no resize layer when ``size == native``)."""
    network = module[1] if isinstance(module, nn.Sequential) and isinstance(module[0], ResizeInput) else module
    network = copy.deepcopy(network)
    return network if size == native else nn.Sequential(ResizeInput(size), network)


@register_stage(ResolutionConfig)
def change_resolution(model: CompressedModel, config: ResolutionConfig, context: StageContext) -> CompressedModel:
    module = set_resolution(model.module, config.size, context.data.config.image_size)
    if config.finetune.epochs:
        finetune(module, config.finetune, context, description=config.describe())
    return model.evolve(module=module.eval())
