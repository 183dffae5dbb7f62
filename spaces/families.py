"""The stage families a sampled pipeline is made of, each declared once: its place, how a trial samples it, what it yields.

A new family is an entry in ``FAMILIES`` with its sampler, its name in ``space.FamilyName`` and its
knobs in ``SpaceConfig``, and the stage it samples (a config and a registered stage function).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import optuna

from udacisense.compression.architecture import ArchitectureConfig
from udacisense.compression.distillation import DistillationConfig
from udacisense.compression.graph import FuseConfig
from udacisense.compression.pruning import GradualPruningConfig, StructuredPruningConfig, UnstructuredPruningConfig
from udacisense.compression.quantization import DynamicQuantConfig, LinearWeightBits, QATConfig, StaticQuantConfig
from udacisense.compression.resolution import ResolutionConfig
from udacisense.compression.stage import StageConfig
from udacisense.spaces.space import FamilyName, QuantType, SpaceConfig
from udacisense.training import TrainConfig

# The parameter that picks a distillation stage's student (0: distil into the current model).
STUDENT_WIDTH = "student_width"
STUDENT_ARCHITECTURE = "student_architecture"

# Builds a family's stage from the trial, given the trial's fine-tune budget (None when nothing
# present trains); None leaves the stage out (e.g. quantization of type "none").
Sampler = Callable[[optuna.Trial, SpaceConfig, TrainConfig | None], StageConfig | None]


@dataclass(frozen=True)
class StageFamily:
    name: FamilyName
    # "permuted" families work on the trainable float model, and their order is what the search
    # permutes; "last" ones follow them in a fixed order, that of ``FAMILIES``.
    place: Literal["permuted", "last"]
    sample: Sampler
    # Whether the sampled stage fine-tunes, so the trial needs a fine-tune budget (it may suggest
    # the parameters that decide it; the sampler is then given the same values again).
    trains: Callable[[optuna.Trial, SpaceConfig], bool]
    # The stage configs it samples: a recorded stage's kind names its family.
    configs: tuple[type[StageConfig], ...]
    # Whether each trial switches it on or off (``use_<name>``); one with its own "off" choice does not need that.
    optional: bool = True
    # Whether it changes the architecture, so feasibility estimates apply it (without fine-tuning) to count size and FLOPs.
    reshapes: bool = False


def _always(trial: optuna.Trial, space: SpaceConfig) -> bool:
    return True


def _never(trial: optuna.Trial, space: SpaceConfig) -> bool:
    return False


def _budget(finetune: TrainConfig | None, family: str) -> TrainConfig:
    assert finetune is not None, f"`{family}` trains, so the sampler gives the trial a fine-tune budget"
    return finetune


def _distill(trial: optuna.Trial, space: SpaceConfig, finetune: TrainConfig | None) -> StageConfig:
    # Suggested in the order the seeded trials of tests/fixtures/sampled_seed0.json were; the width was
    # asked first (``sampling._first_live``), and Optuna gives the same value again.
    alpha = space.distill_alpha.suggest(trial, "distill_alpha")
    temperature = space.distill_temperature.suggest(trial, "distill_temperature")
    width = space.student_widths.suggest(trial, STUDENT_WIDTH)
    architectures = space.student_architectures.options
    return DistillationConfig(
        alpha=alpha,
        temperature=temperature,
        student_width=width,
        # Only a narrower student has an architecture of its own; a single choice is not a parameter.
        student_architecture=space.student_architectures.suggest(trial, STUDENT_ARCHITECTURE)
        if width and len(architectures) > 1 else architectures[0],
        finetune=_budget(finetune, "distill"),
    )


def _prune(trial: optuna.Trial, space: SpaceConfig, finetune: TrainConfig | None) -> StageConfig:
    finetune = _budget(finetune, "prune")
    method = space.prune_methods.suggest(trial, "prune_method")
    amount = space.prune_amount.suggest(trial, "prune_amount")
    scope = space.prune_scopes.suggest(trial, "prune_scope")
    if method == "oneshot":
        return UnstructuredPruningConfig(amount=amount, scope=scope, finetune=finetune)
    return GradualPruningConfig(
        initial_sparsity=0.0, final_sparsity=amount, start_epoch=0, end_epoch=max(0, finetune.epochs - 1),
        schedule=space.gradual_schedules.suggest(trial, "gradual_schedule"),
        scope=scope, finetune=finetune,
    )


def _channels(trial: optuna.Trial, space: SpaceConfig, finetune: TrainConfig | None) -> StageConfig:
    return StructuredPruningConfig(
        ratio=space.channel_ratio.suggest(trial, "channel_ratio"),
        head_ratio=space.channel_head_ratio.suggest(trial, "channel_head_ratio"),
        importance=space.channel_importance.suggest(trial, "channel_importance"),
        finetune=_budget(finetune, "channels"),
    )


def _resolution(trial: optuna.Trial, space: SpaceConfig, finetune: TrainConfig | None) -> StageConfig:
    return ResolutionConfig(size=space.resolutions.suggest(trial, "resolution"), finetune=_budget(finetune, "resolution"))


def _architecture(trial: optuna.Trial, space: SpaceConfig, finetune: TrainConfig | None) -> StageConfig:
    squeeze_excite = space.architecture_squeeze_excite.suggest(trial, "architecture_squeeze_excite")
    return ArchitectureConfig(
        squeeze_excite=squeeze_excite,
        se_keep=space.architecture_se_keep.suggest(trial, "architecture_se_keep") if squeeze_excite == "least-costly" else 0,
        activation=space.architecture_activation.suggest(trial, "architecture_activation"),
        drop_blocks=space.architecture_drop_blocks.suggest(trial, "architecture_drop_blocks"),
        finetune=_budget(finetune, "architecture"),
    )


def _fuse(trial: optuna.Trial, space: SpaceConfig, finetune: TrainConfig | None) -> StageConfig:
    return FuseConfig()


def _quant_type(trial: optuna.Trial, space: SpaceConfig) -> QuantType:
    # Asked both before the fine-tune budget (QAT trains) and by the sampler: Optuna gives the first value again.
    return space.quant_types.suggest(trial, "quant_type")


def _is_qat(trial: optuna.Trial, space: SpaceConfig) -> bool:
    return _quant_type(trial, space) == "qat"


def _linear_weight_bits(trial: optuna.Trial, space: SpaceConfig, backend: str) -> LinearWeightBits:
    # Only XNNPACK runs int4 weights. A single choice is not suggested, so trials of studies that
    # search only int8 keep the parameters they were stored with (and still resume and match duplicates).
    if backend != "xnnpack":
        return 8
    choices = space.linear_weight_bits.options
    return space.linear_weight_bits.suggest(trial, "linear_weight_bits") if len(choices) > 1 else choices[0]


def _quantize(trial: optuna.Trial, space: SpaceConfig, finetune: TrainConfig | None) -> StageConfig | None:
    quant_type = _quant_type(trial, space)
    if quant_type == "none":
        return None
    if quant_type == "dynamic":
        # Every backend has a dynamic flavour (xnnpack through PT2E, the others through FX); the
        # parameter keeps its own name so studies stored with it still resume.
        backend = space.quant_backends.suggest(trial, "dynamic_backend")
        return DynamicQuantConfig(backend=backend, linear_weight_bits=_linear_weight_bits(trial, space, backend))
    backend = space.quant_backends.suggest(trial, "quant_backend")
    bits = _linear_weight_bits(trial, space, backend)
    if quant_type == "static":
        sensitive = space.float_sensitive_units
        return StaticQuantConfig(backend=backend, float_prefix_blocks=space.float_prefix_blocks.suggest(trial, "float_prefix_blocks"),
                                 linear_weight_bits=bits,
                                 float_sensitive_units=sensitive.suggest(trial, "float_sensitive_units")
                                 if sensitive.high > sensitive.low else sensitive.low)
    finetune = _budget(finetune, "qat")
    last = max(0, finetune.epochs - 1)
    start = min(space.qat_start_epoch.suggest(trial, "qat_start_epoch"), last)
    freeze = min(space.bn_freeze_epoch.suggest(trial, "bn_freeze_epoch"), finetune.epochs)
    return QATConfig(backend=backend, start_epoch=start, freeze_bn_epoch=freeze, finetune=finetune, linear_weight_bits=bits)


# Fusion and quantization come last, in this order. Fusion folds BatchNorm with frozen statistics,
# so a stage that trains after it would train without normalisation; int8 quantization accepts
# only a float model, so nothing may follow it. Lowering to a runtime is the objective's last step,
# outside the sampled pipeline.
FAMILIES: dict[FamilyName, StageFamily] = {family.name: family for family in (
    StageFamily("distill", "permuted", _distill, _always, (DistillationConfig,), reshapes=True),
    StageFamily("prune", "permuted", _prune, _always, (UnstructuredPruningConfig, GradualPruningConfig)),
    StageFamily("channels", "permuted", _channels, _always, (StructuredPruningConfig,), reshapes=True),
    StageFamily("resolution", "permuted", _resolution, _always, (ResolutionConfig,), reshapes=True),
    StageFamily("architecture", "permuted", _architecture, _always, (ArchitectureConfig,), reshapes=True),
    StageFamily("fuse", "last", _fuse, _never, (FuseConfig,)),
    # Its "none" type switches it off, so it needs no `use_quantize`.
    StageFamily("quantize", "last", _quantize, _is_qat, (DynamicQuantConfig, StaticQuantConfig, QATConfig), optional=False),
)}
# A family named for study files but not declared here would be refused by the sampler.
assert set(FAMILIES) == set(get_args(FamilyName))

# The family of each stage kind a pipeline records (``ptq`` -> ``quantize``).
FAMILY_OF_KIND: dict[str, FamilyName] = {config.kind: family.name for family in FAMILIES.values() for config in family.configs}
