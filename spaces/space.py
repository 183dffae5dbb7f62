"""The declarative search space (the ``[space]`` table of a study).

Ranges are ``[low, high]`` pairs; choices are lists. A study narrows the space by shortening a
list or a range, and widens it the same way. Every hyperparameter is only sampled when its stage
is present in the trial's pipeline (Optuna's define-by-run makes the space conditional).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from udacisense.common.errors import UserError

StageFamily = Literal["distill", "prune", "channels", "resolution", "fuse", "quantize"]
QuantType = Literal["none", "dynamic", "static", "qat"]
QuantBackend = Literal["x86", "fbgemm", "qnnpack", "xnnpack"]

# Fields that hold a [low, high] range; every other tuple field is a list of choices.
_RANGES = frozenset({
    "prune_amount", "channel_ratio", "channel_head_ratio", "distill_alpha", "distill_temperature", "finetune_epochs", "finetune_lr",
    "qat_start_epoch", "bn_freeze_epoch", "float_prefix_blocks",
})


@dataclass(frozen=True)
class SpaceConfig:
    # Stage families that may appear. The order of the trainable ones (distill, prune, channels,
    # resolution) is sampled as a permutation; fuse and then quantize always follow them.
    stages: tuple[StageFamily, ...] = ("distill", "prune", "channels", "quantize")
    # Families that every pipeline includes (the rest are switched on or off per trial).
    required: tuple[StageFamily, ...] = ()
    prune_methods: tuple[Literal["oneshot", "gradual"], ...] = ("oneshot", "gradual")
    prune_amount: tuple[float, ...] = (0.2, 0.9)
    prune_scopes: tuple[Literal["layer", "global"], ...] = ("global", "layer")
    gradual_schedules: tuple[Literal["linear", "cubic", "exponential"], ...] = ("linear", "cubic", "exponential")
    channel_ratio: tuple[float, ...] = (0.1, 0.6)
    # The classifier's hidden layer (39% of the weights at 32x32) is pruned at its own ratio.
    channel_head_ratio: tuple[float, ...] = (0.0, 0.8)
    channel_importance: tuple[Literal["l1", "l2"], ...] = ("l1", "l2")
    distill_alpha: tuple[float, ...] = (0.3, 0.9)
    distill_temperature: tuple[float, ...] = (2.0, 8.0)
    student_widths: tuple[float, ...] = (0.0, 0.5, 0.75)
    resolutions: tuple[int, ...] = (224, 160, 128, 96, 64, 32)
    quant_types: tuple[QuantType, ...] = ("none", "dynamic", "static", "qat")
    quant_backends: tuple[QuantBackend, ...] = ("x86", "xnnpack")
    float_prefix_blocks: tuple[int, ...] = (0, 2)
    # Linear weight bits of xnnpack quantization; [8, 4] also searches int4 Linear layers.
    linear_weight_bits: tuple[Literal[8, 4], ...] = (8,)
    qat_start_epoch: tuple[int, ...] = (0, 1)
    bn_freeze_epoch: tuple[int, ...] = (1, 3)
    finetune_epochs: tuple[int, ...] = (1, 4)
    finetune_lr: tuple[float, ...] = (0.002, 0.05)

    def __post_init__(self) -> None:
        if not self.stages:
            raise UserError("`space.stages` is empty.", "list at least one stage family, e.g. [\"quantize\"].")
        if len(set(self.stages)) != len(self.stages):
            raise UserError("`space.stages` lists a family twice.", "list each family once.")
        extra = set(self.required) - set(self.stages)
        if extra:
            raise UserError(f"`space.required` names {sorted(extra)}, which `space.stages` does not list.",
                            "add them to `space.stages` or remove them from `space.required`.")
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name in _RANGES:
                if len(value) != 2 or value[0] > value[1]:
                    raise UserError(f"`space.{field.name}` is {list(value)}, not a [low, high] range.",
                                    f"write it as [low, high] with low <= high, e.g. {list(getattr(SpaceConfig, field.name))}.")
            elif isinstance(value, tuple) and field.name not in ("required",) and not value:
                raise UserError(f"`space.{field.name}` is empty.", "give at least one choice.")
        if self.prune_amount[0] < 0.0 or self.prune_amount[1] > 0.95:
            raise UserError("`space.prune_amount` must lie within [0, 0.95].", "narrow the range.")
        for name in ("channel_ratio", "channel_head_ratio"):
            low, high = getattr(self, name)
            if low < 0.0 or high > 0.9:
                raise UserError(f"`space.{name}` must lie within [0, 0.9].", "narrow the range.")
        if self.distill_alpha[0] < 0.0 or self.distill_alpha[1] > 1.0:
            raise UserError("`space.distill_alpha` must lie within [0, 1].", "narrow the range.")
        if self.distill_temperature[0] <= 0.0:
            raise UserError("`space.distill_temperature` must be positive.", "use e.g. [2.0, 8.0].")
        if self.finetune_lr[0] <= 0.0:
            raise UserError("`space.finetune_lr` must be positive (it is sampled on a log scale).", "use e.g. [0.002, 0.05].")
        if any(w < 0.0 or w > 2.0 for w in self.student_widths):
            raise UserError("`space.student_widths` must lie in [0, 2] (0 keeps the current model as student).",
                            "use e.g. [0.0, 0.5, 0.75].")
        if any(r < 8 or r > 512 for r in self.resolutions):
            raise UserError("`space.resolutions` must lie in [8, 512] pixels.", "use e.g. [224, 128, 64, 32].")
