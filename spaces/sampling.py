"""Turn an Optuna trial into a compression pipeline (define-by-run: parameters exist only if their stage does)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TypeVar, cast, get_args

import optuna

from udacisense.compression.distillation import DistillationConfig
from udacisense.compression.graph import FuseConfig
from udacisense.compression.pipeline import Pipeline
from udacisense.compression.pruning import GradualPruningConfig, StructuredPruningConfig, UnstructuredPruningConfig
from udacisense.compression.quantization import DynamicQuantConfig, LinearWeightBits, QATConfig, StaticQuantConfig
from udacisense.compression.resolution import ResolutionConfig
from udacisense.compression.stage import StageConfig
from udacisense.spaces.space import SpaceConfig, StageFamily
from udacisense.training import TrainConfig

# Families that train the float model; their order is what the search permutes.
T = TypeVar("T")

_TRAINING_FAMILIES: tuple[StageFamily, ...] = ("distill", "prune", "channels", "resolution")
# Families with a fixed place after the permuted ones, in this order. Fusion folds BatchNorm with
# frozen statistics, so a stage that trains after it would train without normalisation; int8
# quantization accepts only a float model, so nothing may follow it. Lowering to a runtime is the
# objective's last step, outside the sampled pipeline.
_FIXED_TAIL: tuple[StageFamily, ...] = ("fuse", "quantize")
# A new family must be given a place here, or the sampler would silently never offer it.
assert set(_TRAINING_FAMILIES) | set(_FIXED_TAIL) == set(get_args(StageFamily))


def orders(space: SpaceConfig) -> list[str]:
    """Every order of the space's trainable families, as ``a>b>c`` strings (the choices of ``order``).

    Only these families are permuted and the others follow in ``_FIXED_TAIL`` order, so every
    sampled pipeline passes ``Pipeline.check``.
    """
    return [">".join(p) for p in itertools.permutations(_trainable(space))]


def _trainable(space: SpaceConfig) -> list[StageFamily]:
    return [f for f in space.stages if f in _TRAINING_FAMILIES]


def _order(trial: optuna.Trial, space: SpaceConfig) -> list[StageFamily]:
    # One categorical over the permutations of every trainable family of the space, not only of the
    # present ones: its choices never change, so all trials share one distribution (Optuna refuses
    # a parameter whose choices vary, and per-subset parameters would split the history), and TPE
    # learns a weight per whole order, which per-family keys sorted by value cannot express (an order
    # is a relation between keys). NSGA-II's crossover keeps or swaps whole orders, never a broken
    # one. Absent families drop out and the present ones keep their relative order.
    choices = orders(space)
    # With fewer than two trainable families there is no order to search.
    permuted = trial.suggest_categorical("order", choices).split(">") if len(choices) > 1 else _trainable(space)
    return [*permuted, *(f for f in _FIXED_TAIL if f in space.stages)]


def _choose(trial: optuna.Trial, name: str, choices: Sequence[T]) -> T:
    """``suggest_categorical`` keeping the choices' type (Optuna types every choice as a plain scalar)."""
    return cast(T, trial.suggest_categorical(name, list(choices)))  # type: ignore[arg-type]  # T is a scalar


def _finetune(trial: optuna.Trial, space: SpaceConfig) -> TrainConfig:
    # One fine-tune budget per trial, shared by its stages, keeps the space small.
    return TrainConfig(
        epochs=trial.suggest_int("finetune_epochs", *space.finetune_epochs),
        lr=trial.suggest_float("finetune_lr", *space.finetune_lr, log=True),
        schedule="cosine", label_smoothing=0.1,
    )


def _quantize(trial: optuna.Trial, space: SpaceConfig, finetune: TrainConfig | None) -> StageConfig | None:
    quant_type = _choose(trial, "quant_type", space.quant_types)
    if quant_type == "none":
        return None
    if quant_type == "dynamic":
        # Every backend has a dynamic flavour (xnnpack through PT2E, the others through FX); the
        # parameter keeps its own name so studies stored with it still resume.
        backend = _choose(trial, "dynamic_backend", space.quant_backends)
        return DynamicQuantConfig(backend=backend, linear_weight_bits=_linear_weight_bits(trial, space, backend))
    backend = _choose(trial, "quant_backend", space.quant_backends)
    bits = _linear_weight_bits(trial, space, backend)
    if quant_type == "static":
        prefix = trial.suggest_int("float_prefix_blocks", *space.float_prefix_blocks)
        return StaticQuantConfig(backend=backend, float_prefix_blocks=prefix, linear_weight_bits=bits)
    assert finetune is not None
    last = max(0, finetune.epochs - 1)
    start = min(trial.suggest_int("qat_start_epoch", *space.qat_start_epoch), last)
    freeze = min(trial.suggest_int("bn_freeze_epoch", *space.bn_freeze_epoch), finetune.epochs)
    return QATConfig(backend=backend, start_epoch=start, freeze_bn_epoch=freeze, finetune=finetune,
                     linear_weight_bits=bits)


def _linear_weight_bits(trial: optuna.Trial, space: SpaceConfig, backend: str) -> LinearWeightBits:
    # Only XNNPACK runs int4 weights. A single choice is not suggested, so trials of studies that
    # search only int8 keep the parameters they were stored with (and still resume and match duplicates).
    if backend != "xnnpack":
        return 8
    choices = space.linear_weight_bits
    return _choose(trial, "linear_weight_bits", choices) if len(choices) > 1 else choices[0]


def _stage(family: StageFamily, trial: optuna.Trial, space: SpaceConfig, finetune: TrainConfig | None) -> StageConfig | None:
    if family == "quantize":
        return _quantize(trial, space, finetune)
    if family == "fuse":
        return FuseConfig()
    assert finetune is not None, f"`{family}` trains, so the sampler gives the trial a fine-tune budget"
    if family == "distill":
        return DistillationConfig(
            alpha=trial.suggest_float("distill_alpha", *space.distill_alpha),
            temperature=trial.suggest_float("distill_temperature", *space.distill_temperature),
            student_width=_choose(trial, "student_width", space.student_widths),
            finetune=finetune,
        )
    if family == "channels":
        return StructuredPruningConfig(
            ratio=trial.suggest_float("channel_ratio", *space.channel_ratio),
            head_ratio=trial.suggest_float("channel_head_ratio", *space.channel_head_ratio),
            importance=_choose(trial, "channel_importance", space.channel_importance),
            finetune=finetune,
        )
    if family == "resolution":
        return ResolutionConfig(size=_choose(trial, "resolution", space.resolutions), finetune=finetune)
    method = _choose(trial, "prune_method", space.prune_methods)
    amount = trial.suggest_float("prune_amount", *space.prune_amount)
    scope = _choose(trial, "prune_scope", space.prune_scopes)
    if method == "oneshot":
        return UnstructuredPruningConfig(amount=amount, scope=scope, finetune=finetune)
    return GradualPruningConfig(
        initial_sparsity=0.0, final_sparsity=amount, start_epoch=0, end_epoch=max(0, finetune.epochs - 1),
        schedule=_choose(trial, "gradual_schedule", space.gradual_schedules),
        scope=scope, finetune=finetune,
    )


def sample_pipeline(trial: optuna.Trial, space: SpaceConfig) -> Pipeline:
    """Sample which stage families appear, their order, and each present stage's hyperparameters.

    The trainable families are permuted, fusion and quantization follow them (see ``_order``), so
    the pipeline always passes ``Pipeline.check``.
    """
    order = _order(trial, space)
    present = [f for f in order if f in space.required or f == "quantize"
               or trial.suggest_categorical(f"use_{f}", [True, False])]
    # Optuna returns the same value when _quantize suggests "quant_type" again.
    quant_type = _choose(trial, "quant_type", space.quant_types) if "quantize" in present else "none"
    needs_training = quant_type == "qat" or any(f in _TRAINING_FAMILIES for f in present)
    finetune = _finetune(trial, space) if needs_training else None
    stages = [_stage(family, trial, space, finetune) for family in present]
    return Pipeline(tuple(s for s in stages if s is not None))
