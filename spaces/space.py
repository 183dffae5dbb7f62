"""The declarative search space (the ``[space]`` table of a study).

Ranges are ``[low, high]`` pairs; choices are lists. A study narrows the space by shortening a
list or a range, and widens it the same way. Every hyperparameter is only sampled when its stage
is present in the trial's pipeline (Optuna's define-by-run makes the space conditional).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal, cast

from udacisense.common.errors import UserError
from udacisense.compression.architecture import ArchitectureConfig, SqueezeExciteMode
from udacisense.compression.distillation import DistillationConfig
from udacisense.compression.pruning import (
    GradualPruningConfig,
    Schedule,
    Scope,
    StructuredPruningConfig,
    UnstructuredPruningConfig,
)
from udacisense.compression.quantization import LinearWeightBits, QATConfig, StaticBackend, StaticQuantConfig
from udacisense.compression.resolution import ResolutionConfig
from udacisense.models.lean import Activation
from udacisense.models.students import StudentArchitecture
from udacisense.spaces.distributions import Choice, FloatRange, IntRange, StageField
from udacisense.training import TrainConfig

# The families are declared in `spaces.families`; this names them for study files.
FamilyName = Literal["distill", "prune", "channels", "resolution", "architecture", "fuse", "quantize"]
QuantType = Literal["none", "dynamic", "static", "qat"]


def _sampled(default: FloatRange | IntRange | Choice[Any], *feeds: StageField) -> Any:
    """A sampled ``[space]`` value: its default, and the stage config fields its samples go to (their limits bound it)."""
    return field(default=default, metadata={"feeds": feeds})


@dataclass(frozen=True)
class SpaceConfig:
    # Stage families that may appear. The order of the permuted ones (distill, prune, channels,
    # resolution, architecture) is sampled; fuse and then quantize always follow them (see `spaces.families`).
    # Every family that can make a MobileNetV3 cheaper on a phone; the search's probes drop those that cannot here
    # (search.workers.probes). Resolution (a smaller input) and fuse (folded into every lowering) are opt-in.
    stages: tuple[FamilyName, ...] = ("distill", "prune", "channels", "architecture", "quantize")
    # Families that every pipeline includes (the rest are switched on or off per trial).
    required: tuple[FamilyName, ...] = ()
    prune_methods: Choice[Literal["oneshot", "gradual"]] = _sampled(Choice(("oneshot", "gradual")))
    prune_amount: FloatRange = _sampled(FloatRange(0.2, 0.9), StageField(UnstructuredPruningConfig, "amount"),
                                        StageField(GradualPruningConfig, "final_sparsity"))
    prune_scopes: Choice[Scope] = _sampled(Choice(("global", "layer")))
    gradual_schedules: Choice[Schedule] = _sampled(Choice(("linear", "cubic", "exponential")))
    channel_ratio: FloatRange = _sampled(FloatRange(0.1, 0.6), StageField(StructuredPruningConfig, "ratio"))
    # The classifier's hidden layer (39% of the weights at 32x32) is pruned at its own ratio.
    channel_head_ratio: FloatRange = _sampled(FloatRange(0.0, 0.8), StageField(StructuredPruningConfig, "head_ratio"))
    channel_importance: Choice[Literal["l1", "l2"]] = _sampled(Choice(("l1", "l2")))
    distill_alpha: FloatRange = _sampled(FloatRange(0.3, 0.9), StageField(DistillationConfig, "alpha"))
    distill_temperature: FloatRange = _sampled(FloatRange(2.0, 8.0), StageField(DistillationConfig, "temperature"))
    student_widths: Choice[float] = _sampled(Choice((0.0, 0.5, 0.75)), StageField(DistillationConfig, "student_width"))
    # A narrower student's architecture: "lean" drops squeeze-excite and uses ReLU (half the operators at
    # 32x32, see models.students). A single choice is not suggested, so stored studies keep their parameters.
    student_architectures: Choice[StudentArchitecture] = _sampled(Choice(("standard", "lean")),
                                                                  StageField(DistillationConfig, "student_architecture"))
    # The `architecture` family (searched only where `stages` lists it): squeeze-excite blocks kept,
    # removed, or kept in the `architecture_se_keep` whose removal costs most; hard activations or
    # ReLU; how many of the last shape-keeping blocks to drop: up to 6, as many as every MobileNetV3 has at every
    # width (a Small of width 0.75 and up). At 32x32 a program pays per operator: the lean width-0.5 student in
    # static int8 ran at x0.24 of the float latency with all its blocks and x0.22 without its last two, before any
    # fine-tuning at 0.533 validation top-1 against 0.564 (AMD EPYC, cifar10-offline; one timing of each).
    architecture_squeeze_excite: Choice[SqueezeExciteMode] = _sampled(Choice(("keep", "remove")))
    architecture_se_keep: IntRange = _sampled(IntRange(1, 4), StageField(ArchitectureConfig, "se_keep"))
    architecture_activation: Choice[Activation] = _sampled(Choice(("hard", "relu")))
    architecture_drop_blocks: IntRange = _sampled(IntRange(0, 6), StageField(ArchitectureConfig, "drop_blocks"))
    resolutions: Choice[int] = _sampled(Choice((224, 160, 128, 96, 64, 32)), StageField(ResolutionConfig, "size"))
    quant_types: Choice[QuantType] = _sampled(Choice(("none", "dynamic", "static", "qat")))
    quant_backends: Choice[StaticBackend] = _sampled(Choice(("x86", "xnnpack")))
    float_prefix_blocks: IntRange = _sampled(IntRange(0, 2), StageField(StaticQuantConfig, "float_prefix_blocks"))
    # Static int8 keeps this many of the units it measures most int8-sensitive float (mixed precision);
    # the default [0, 0] searches none and suggests nothing, so stored studies keep their parameters.
    float_sensitive_units: IntRange = _sampled(IntRange(0, 0), StageField(StaticQuantConfig, "float_sensitive_units"))
    # Linear weight bits of xnnpack quantization; [8, 4] also searches int4 Linear layers.
    linear_weight_bits: Choice[LinearWeightBits] = _sampled(Choice((8, 4)), StageField(StaticQuantConfig, "linear_weight_bits"))
    qat_start_epoch: IntRange = _sampled(IntRange(0, 1), StageField(QATConfig, "start_epoch"))
    bn_freeze_epoch: IntRange = _sampled(IntRange(1, 3), StageField(QATConfig, "freeze_bn_epoch"))
    finetune_epochs: IntRange = _sampled(IntRange(1, 4), StageField(TrainConfig, "epochs"))
    finetune_lr: FloatRange = _sampled(FloatRange(0.002, 0.05, log=True), StageField(TrainConfig, "lr"))

    def __post_init__(self) -> None:
        if not self.stages:
            raise UserError("`space.stages` is empty.", "list at least one stage family, e.g. [\"quantize\"].")
        if len(set(self.stages)) != len(self.stages):
            raise UserError("`space.stages` lists a family twice.", "list each family once.")
        extra = set(self.required) - set(self.stages)
        if extra:
            raise UserError(f"`space.required` names {sorted(extra)}, which `space.stages` does not list.",
                            "add them to `space.stages` or remove them from `space.required`.")
        # The one check of every sampled value, for study files and spaces built in code alike.
        for declared in fields(self):
            if "feeds" not in declared.metadata:
                continue
            value, default = getattr(self, declared.name), cast(Any, declared.default)
            if not isinstance(value, type(default)):
                raise TypeError(f"space.{declared.name} must be a {type(default).__name__}, not {value!r}")
            value.check(f"space.{declared.name}", declared.metadata["feeds"])
