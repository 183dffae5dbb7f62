"""Which parts of a network int8 hurts most, measured: each unit quantized alone, compared with the float model.

A unit is one block of MobileNet's ``features`` or one other top-level part with weights (the
classifier). Mixed-precision quantization keeps the most sensitive units float; measuring them on
the model at hand (a pruned network or a narrower student ranks differently from the baseline) is
what makes that choice better than a fixed rule such as "the first blocks".
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

# Quantizes a copy of a module to int8, leaving the named units float.
QuantizeLeaving = Callable[[nn.Module, Sequence[str]], nn.Module]


@dataclass(frozen=True)
class UnitSensitivity:
    unit: str
    # Over the probe images, with only this unit in int8: mean |logit change| against the float model
    # (the ranking key: continuous, so it separates units that flip no top-1 on a few hundred images)
    # and the share of top-1 predictions that stay the same.
    mean_logit_change: float
    top1_agreement: float


def feature_blocks(module: nn.Module) -> list[str]:
    """Qualified names of the blocks of the first ``features`` container (MobileNet's stem and stages)."""
    for name, child in module.named_modules():
        if name == "features" or name.endswith(".features"):
            return [f"{name}.{block}" for block, _ in child.named_children()]
    return []


def quantization_units(module: nn.Module) -> list[str]:
    """The blocks of the first ``features`` container, then every other part beside it that has weights."""
    blocks = feature_blocks(module)
    features = blocks[0].rpartition(".")[0] if blocks else ""
    parent = features.rpartition(".")[0]
    container = module.get_submodule(parent) if parent else module
    rest = [f"{parent}.{name}" if parent else name for name, part in container.named_children()
            if (not blocks or name != "features") and any(True for _ in part.parameters())]
    return blocks + rest


def int8_sensitivity(module: nn.Module, quantize_leaving: QuantizeLeaving, probe: torch.Tensor) -> list[UnitSensitivity]:
    """Every unit of ``module``, most int8-sensitive first, each measured with only itself quantized."""
    units = quantization_units(module)
    module = module.eval()
    with torch.no_grad():
        reference = module(probe)
    measured = []
    for unit in units:
        alone = quantize_leaving(copy.deepcopy(module), [other for other in units if other != unit])
        with torch.no_grad():
            logits = alone(probe)
        measured.append(UnitSensitivity(
            unit, float((logits - reference).abs().mean()),
            float((logits.argmax(1) == reference.argmax(1)).float().mean()),
        ))
    return sorted(measured, key=lambda s: s.mean_logit_change, reverse=True)
