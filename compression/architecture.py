"""Architecture surgery as a stage: fewer operators (squeeze-excite, hard activations, whole blocks), then fine-tuning.

At phone-app input sizes the runtime pays per operator, not per multiply-add (see ``models.lean``),
so removing operators is a technique of its own, composable with pruning, distillation and int8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import nn

from udacisense.common.errors import UserError
from udacisense.common.schema import bounded, check_bounds
from udacisense.compression.finetune import finetune
from udacisense.compression.stage import CompressedModel, ModelForm, Signature, StageContext, register_stage, require_form
from udacisense.models.lean import Activation, describe_lean, lean_network, squeeze_excite_costs
from udacisense.training import TrainConfig

SqueezeExciteMode = Literal["keep", "remove", "least-costly"]
# Limits valid for both MobileNetV3s. Squeeze-excite blocks: the most either has (Small 9, Large 8); a
# model with fewer keeps them all. Blocks whose removal keeps every shape: Small's count, the fewer (6
# at width 0.75 and up; 7 below, where rounding to multiples of 8 gives block 7's 40 -> 48 channels one
# width; Large has 10), beyond which `lean_network` refuses a Small.
SQUEEZE_EXCITE_BLOCKS = 9
SHAPE_KEEPING_BLOCKS = 7


@dataclass(frozen=True)
class ArchitectureConfig:
    """Remove squeeze-excite blocks, swap hard activations for ReLU/sigmoid, drop the last shape-keeping blocks.

    ``least-costly`` measures, on the validation split, what each squeeze-excite block's removal alone
    costs in top-1 (no fine-tuning) and keeps the ``se_keep`` costliest (all, if the model has no more);
    ``remove`` removes every one.
    """

    kind: ClassVar[str] = "architecture"

    squeeze_excite: SqueezeExciteMode = "remove"
    se_keep: int = bounded(0, min=0, max=SQUEEZE_EXCITE_BLOCKS, doc="squeeze-excite blocks `least-costly` keeps")
    activation: Activation = "relu"
    drop_blocks: int = bounded(0, min=0, max=SHAPE_KEEPING_BLOCKS, doc="last blocks removed, of those that keep every shape")
    finetune: TrainConfig = TrainConfig(epochs=0)

    def __post_init__(self) -> None:
        check_bounds(self, self.kind)
        if self.se_keep and self.squeeze_excite != "least-costly":
            raise UserError(f"`se_keep` is {self.se_keep}, but it only counts with `squeeze_excite = \"least-costly\"` "
                            f"(it is {self.squeeze_excite!r}).",
                            "set `squeeze_excite = \"least-costly\"`, or `se_keep = 0`.")

    def transition(self, signature: Signature) -> Signature:
        require_form(self, signature, ModelForm.FLOAT)
        return signature

    def describe(self) -> str:
        kept = f"SE in {self.se_keep} costliest" if self.squeeze_excite == "least-costly" else ""
        lean = describe_lean(squeeze_excite=self.squeeze_excite != "remove", activation=self.activation,
                             drop_blocks=self.drop_blocks)
        return f"architecture({', '.join(part for part in (kept, lean) if part) or 'unchanged'})"


def _removed_squeeze_excite(module: nn.Module, config: ArchitectureConfig, context: StageContext) -> bool | list[int]:
    """What ``lean_network`` takes as ``squeeze_excite`` for this config (measuring the costs when it must)."""
    if config.squeeze_excite != "least-costly":
        return config.squeeze_excite == "keep"
    costs = squeeze_excite_costs(module, context.data.loader("val"), context.num_classes)
    cheapest_first = sorted(range(len(costs)), key=costs.__getitem__)
    # A model with no more blocks than `se_keep` (a lean student's has none) keeps them all, rather
    # than failing a sampled trial whose pipeline passed every check.
    return sorted(cheapest_first[:max(0, len(costs) - config.se_keep)])


@register_stage(ArchitectureConfig)
def reshape_architecture(model: CompressedModel, config: ArchitectureConfig, context: StageContext) -> CompressedModel:
    module = lean_network(model.module, squeeze_excite=_removed_squeeze_excite(model.module, config, context),
                          activation=config.activation, drop_blocks=config.drop_blocks)
    if config.finetune.epochs:
        finetune(module, config.finetune, context, description=config.describe())
    return model.evolve(module=module)
