"""Cheap, compute-free (no training) estimates that show a pipeline cannot meet the size or speed targets.

Structural stages (of the families that reshape: channel pruning, narrower students, resolution)
are applied without fine-tuning to get the real architecture; quantization's effect on size is estimated per weight
(1 byte for int8 weights, 4 for float). Unstructured pruning changes neither: dense files, dense kernels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import optuna
import torch
from torch import nn

from udacisense.compression.pipeline import Pipeline
from udacisense.compression.quantization import DynamicQuantConfig, QATConfig, StaticQuantConfig, int4_linear_layers
from udacisense.compression.stage import CompressedModel, StageContext, apply_stage
from udacisense.evaluators.flops import count_flops
from udacisense.search.study.records import Attr, StopReason, record_stop, store
from udacisense.spaces.families import FAMILIES
from udacisense.training import TrainConfig

_STRUCTURAL = tuple(config for family in FAMILIES.values() if family.reshapes for config in family.configs)


@dataclass(frozen=True)
class Footprint:
    flops: int
    weight_bytes: int
    quantized: bool


def _weight_bytes(module: nn.Module, int8_types: tuple[type, ...], float_prefix: int, int4: frozenset[str] = frozenset()) -> int:
    """Bytes of weights if modules of ``int8_types`` store int8 weights, except the first ``float_prefix`` blocks,
    and the layers named in ``int4`` half a byte a weight."""
    float_names = {f"features.{i}." for i in range(float_prefix)}
    total = 0.0
    for name, sub in module.named_modules():
        for parameter in sub.parameters(recurse=False):
            in_float_prefix = any(marker in f"{name}." for marker in float_names)
            matrix = parameter.ndim > 1 and not in_float_prefix
            per_weight = 0.5 if matrix and name in int4 else 1 if matrix and isinstance(sub, int8_types) else 4
            total += parameter.numel() * per_weight
    return int(total)


def footprint(pipeline: Pipeline, baseline: nn.Module, context: StageContext, example: torch.Tensor) -> Footprint:
    model = CompressedModel(baseline)
    # A fresh student has the trained one's architecture; asking the shelf could train one for minutes.
    context = dataclasses.replace(context, students=None)
    for stage in pipeline.stages:
        if isinstance(stage, _STRUCTURAL):
            model = apply_stage(model, dataclasses.replace(stage, finetune=TrainConfig(epochs=0)), context)
    module = model.module
    quant = next((s for s in pipeline.stages if isinstance(s, (DynamicQuantConfig, StaticQuantConfig, QATConfig))), None)
    # int4 Linear weights count: a trial ranked against its 8-bit twin at a rung of halving is otherwise judged on
    # accuracy alone, and the smaller file loses on noise.
    int4 = frozenset(int4_linear_layers(module)) if quant is not None and quant.linear_weight_bits == 4 else frozenset()
    if isinstance(quant, DynamicQuantConfig):
        weight_bytes = _weight_bytes(module, (nn.Linear,), 0, int4)
    elif quant is not None:
        weight_bytes = _weight_bytes(module, (nn.Linear, nn.Conv2d), getattr(quant, "float_prefix_blocks", 0), int4)
    else:
        weight_bytes = _weight_bytes(module, (), 0)
    return Footprint(count_flops(module, example), weight_bytes, quant is not None)


def infeasibility(candidate: Footprint, baseline: Footprint, max_size_ratio: float, max_latency_ratio: float,
                  slack: float = 1.15) -> str | None:
    """Why ``candidate`` cannot meet the targets, or None. ``slack`` keeps the estimate conservative."""
    size_ratio = candidate.weight_bytes / baseline.weight_bytes
    if size_ratio > max_size_ratio * slack:
        return (f"estimated size ratio {size_ratio:.2f} misses the target {max_size_ratio:.2f} "
                "(unstructured pruning and float weights do not shrink the file)")
    flops_ratio = candidate.flops / baseline.flops
    # Without quantization, latency tracks FLOPs closely enough to rule a float model out.
    if not candidate.quantized and flops_ratio > max_latency_ratio * slack:
        return f"FLOPs ratio {flops_ratio:.2f} of a float model misses the latency target {max_latency_ratio:.2f}"
    return None


def stop_if_infeasible(trial: optuna.Trial, candidate: Footprint, baseline: Footprint, max_size_ratio: float,
                       max_latency_ratio: float) -> None:
    """Store the candidate's footprint (halving ranks on it) and stop it before training when it cannot meet a target."""
    store(trial, {Attr.ESTIMATED_FLOPS: candidate.flops, Attr.ESTIMATED_WEIGHT_BYTES: candidate.weight_bytes})
    reason = infeasibility(candidate, baseline, max_size_ratio, max_latency_ratio)
    if reason:
        raise record_stop(trial, StopReason.BEFORE_TRAINING, f"stopped before training: {reason}")
