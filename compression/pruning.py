"""Pruning stages: unstructured magnitude masks, gradual (scheduled) masks, and physical channel removal.

Unstructured pruning zeroes individual weights: the tensors keep their shape, so the raw file and
dense latency do not change, but the file compresses (gzip) and sparse runtimes could exploit it.
Structured pruning removes whole channels with torch-pruning, so the network really gets smaller
and faster.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune

from udacisense.common.errors import UserError
from udacisense.common.schema import bounded, check_bounds
from udacisense.compression.finetune import finetune
from udacisense.compression.stage import CompressedModel, ModelForm, Signature, StageContext, register_stage, require_form
from udacisense.training import TrainConfig

Scope = Literal["layer", "global"]
Schedule = Literal["linear", "cubic", "exponential"]

# Above this, MobileNet-sized layers keep too few weights to recover by fine-tuning.
MAX_SPARSITY = 0.95
MAX_CHANNEL_RATIO = 0.9
_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class UnstructuredPruningConfig:
    """Zero the ``amount`` fraction of conv and linear weights with the smallest magnitude.

    ``layer`` prunes every layer by ``amount``; ``global`` ranks all weights together (by LAMP
    score, see ``lamp_scores``), so redundant layers lose more than sensitive ones.
    """

    kind: ClassVar[str] = "prune"

    amount: float = field(metadata={"min": 0.0, "max": MAX_SPARSITY})
    scope: Scope = "global"
    finetune: TrainConfig = TrainConfig(epochs=0)

    def __post_init__(self) -> None:
        check_bounds(self, self.kind)

    def transition(self, signature: Signature) -> Signature:
        require_form(self, signature, ModelForm.FLOAT)
        return signature

    def describe(self) -> str:
        return f"prune(l1, {self.amount:.2f}, {self.scope})"


@dataclass(frozen=True)
class GradualPruningConfig:
    """Raise sparsity epoch by epoch while fine-tuning (Zhu & Gupta 2017), so the network adapts gradually."""

    kind: ClassVar[str] = "gradual"

    initial_sparsity: float = bounded(0.0, min=0.0, max=MAX_SPARSITY)
    final_sparsity: float = bounded(0.5, min=0.0, max=MAX_SPARSITY)
    start_epoch: int = bounded(0, min=0)
    end_epoch: int = bounded(3, min=0)
    schedule: Schedule = "cubic"
    scope: Scope = "global"
    finetune: TrainConfig = TrainConfig(epochs=4)

    def __post_init__(self) -> None:
        check_bounds(self, self.kind)
        if self.initial_sparsity > self.final_sparsity:
            raise UserError(f"`initial_sparsity` ({self.initial_sparsity}) is above `final_sparsity` "
                            f"({self.final_sparsity}).", "gradual pruning only adds sparsity; swap the two values.")
        if not 0 <= self.start_epoch <= self.end_epoch <= self.finetune.epochs:
            raise UserError(
                f"Gradual pruning needs 0 <= start_epoch <= end_epoch <= finetune.epochs, got "
                f"{self.start_epoch}, {self.end_epoch}, {self.finetune.epochs}.",
                "shorten the schedule or fine-tune for more epochs.",
            )

    def transition(self, signature: Signature) -> Signature:
        require_form(self, signature, ModelForm.FLOAT)
        return signature

    def describe(self) -> str:
        return (f"gradual({self.schedule}, {self.initial_sparsity:.2f}→{self.final_sparsity:.2f}, "
                f"epochs {self.start_epoch}-{self.end_epoch}, {self.scope})")


@dataclass(frozen=True)
class StructuredPruningConfig:
    """Remove the ``ratio`` fraction of channels with the smallest weight norm, with everything coupled to them."""

    kind: ClassVar[str] = "channels"

    ratio: float = field(metadata={"min": 0.0, "max": MAX_CHANNEL_RATIO})
    importance: Literal["l1", "l2"] = "l2"
    # The classifier's hidden Linear (MobileNetV3-Small's 576->1024, Large's 960->1280) holds 39% of Small's
    # weights at 32x32 yet costs little compute, so it takes its own ratio (None: the same as the feature channels).
    head_ratio: float | None = field(default=None, metadata={"min": 0.0, "max": MAX_CHANNEL_RATIO})
    # Global ranking lets unimportant layers lose more than others; local keeps every layer at ``ratio``.
    global_pruning: bool = False
    # Channel counts that are multiples of 8 keep SIMD kernels (XNNPACK, FBGEMM) on their fast paths.
    round_to: int = bounded(8, min=1, max=256)
    finetune: TrainConfig = TrainConfig(epochs=0)

    def __post_init__(self) -> None:
        check_bounds(self, self.kind)

    def transition(self, signature: Signature) -> Signature:
        require_form(self, signature, ModelForm.FLOAT)
        return signature

    def describe(self) -> str:
        head = f", head {self.head_ratio:.2f}" if self.head_ratio is not None else ""
        suffix = ", global" if self.global_pruning else ""
        return f"channels({self.importance}, {self.ratio:.2f}{head}{suffix})"


def _prunable_weights(module: nn.Module) -> Iterator[tuple[nn.Module, str]]:
    for layer in module.modules():
        if isinstance(layer, _PRUNABLE):
            yield layer, "weight"


def sparsity(module: nn.Module) -> float:
    """Fraction of zero weights over all conv and linear weights (masked or permanent)."""
    zeros = total = 0
    for layer, name in _prunable_weights(module):
        weight = getattr(layer, name).detach()
        zeros += int(weight.numel() - torch.count_nonzero(weight))
        total += weight.numel()
    return zeros / total if total else 0.0


def make_permanent(module: nn.Module) -> None:
    """Fold masks into the weights: no ``weight_orig``/``weight_mask`` remain, the zeros stay.

    Parameter objects are kept (torch's prune.remove reuses them), so an optimizer built earlier
    still trains the right tensors.
    """
    for layer, name in _prunable_weights(module):
        if hasattr(layer, f"{name}_mask"):
            prune.remove(layer, name)


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP scores (Lee et al., ICLR 2021): w² divided by the sum of w² over the weights at least as large.

    Within a layer they rank weights exactly as magnitude does, but they are comparable across
    layers: raw magnitudes are not (a 1024-input Linear has far smaller weights than a 3×3 conv),
    and a global magnitude threshold then deletes whole layers, the classifier first.
    Every layer's largest weight scores 1, so no layer is ever emptied.
    """
    squared = weight.detach().flatten().square()
    ascending, order = torch.sort(squared)
    at_least_as_large = ascending.flip(0).cumsum(0).flip(0)
    scores = torch.empty_like(squared)
    scores[order] = ascending / at_least_as_large.clamp_min(torch.finfo(squared.dtype).tiny)
    return scores.view_as(weight)


def prune_to(module: nn.Module, target: float, scope: Scope) -> None:
    """Mask the smallest weights so that ``target`` of them are zero, in place.

    Existing masks are folded in first; zeros score lowest under both rankings, so weights already
    pruned stay pruned and sparsity only grows. The masks stay as reparametrisations (forward
    pre-hooks), so training afterwards cannot revive pruned weights until ``make_permanent``.
    """
    make_permanent(module)
    targets = list(_prunable_weights(module))
    if scope == "global":
        scores = {(layer, name): lamp_scores(getattr(layer, name)) for layer, name in targets}
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, importance_scores=scores,
                                  amount=target)
    else:
        for layer, name in targets:
            prune.l1_unstructured(layer, name, amount=target)


@register_stage(UnstructuredPruningConfig)
def prune_unstructured(model: CompressedModel, config: UnstructuredPruningConfig,
                       context: StageContext) -> CompressedModel:
    module = copy.deepcopy(model.module)
    prune_to(module, config.amount, config.scope)
    if config.finetune.epochs:
        finetune(module, config.finetune, context, description=config.describe())
    make_permanent(module)
    return model.evolve(module=module)


def sparsity_at(epoch: int, config: GradualPruningConfig) -> float:
    """Target sparsity at the start of ``epoch``: ``initial`` until ``start_epoch``, ``final`` from ``end_epoch``."""
    s_i, s_f = config.initial_sparsity, config.final_sparsity
    if epoch >= config.end_epoch:
        return s_f
    if epoch <= config.start_epoch:
        return s_i
    progress = (epoch - config.start_epoch) / (config.end_epoch - config.start_epoch)
    if config.schedule == "linear":
        return s_i + (s_f - s_i) * progress
    if config.schedule == "cubic":
        # Zhu & Gupta: prune fast while many redundant weights remain, slowly near the target.
        return s_f + (s_i - s_f) * (1.0 - progress) ** 3
    # Exponential: the kept fraction shrinks by the same factor every epoch, i.e. each epoch
    # prunes the same share of the weights still alive (iterative magnitude pruning).
    return 1.0 - (1.0 - s_i) * ((1.0 - s_f) / (1.0 - s_i)) ** progress


@register_stage(GradualPruningConfig)
def prune_gradually(model: CompressedModel, config: GradualPruningConfig,
                    context: StageContext) -> CompressedModel:
    module = copy.deepcopy(model.module)

    def raise_sparsity(network: nn.Module, epoch: int) -> None:
        prune_to(network, sparsity_at(epoch, config), config.scope)

    finetune(module, config.finetune, context, description=config.describe(), on_epoch_start=[raise_sparsity])
    # When end_epoch == finetune.epochs the last step of the schedule falls after training.
    prune_to(module, config.final_sparsity, config.scope)
    make_permanent(module)
    return model.evolve(module=module)


def _classifier(module: nn.Module) -> nn.Linear | None:
    """The last Linear layer: its outputs are the classes, so its channels must never be removed."""
    linears = [layer for layer in module.modules() if isinstance(layer, nn.Linear)]
    return linears[-1] if linears else None


def _hidden_linears(module: nn.Module) -> list[nn.Linear]:
    """The Linear layers before the classifier (a MobileNetV3's hidden head layer, whatever its size)."""
    return [layer for layer in module.modules() if isinstance(layer, nn.Linear)][:-1]


def remove_channels(module: nn.Module, config: StructuredPruningConfig, example_input: torch.Tensor) -> None:
    """Physically remove channels from ``module`` in place.

    torch-pruning traces the graph, so every layer coupled to a removed channel shrinks with it:
    BatchNorms, depthwise convs, residual additions, and the squeeze-excite product in MobileNetV3.
    """
    classifier = _classifier(module)
    head_ratios = {layer: config.head_ratio for layer in _hidden_linears(module)} if config.head_ratio is not None else None
    was_training = module.training
    # Tracing runs a forward pass; in train mode it would update BatchNorm running statistics.
    module.eval()
    pruner = tp.pruner.BasePruner(
        module, example_input,
        importance=tp.importance.MagnitudeImportance(p=1 if config.importance == "l1" else 2),
        pruning_ratio=config.ratio, pruning_ratio_dict=head_ratios, global_pruning=config.global_pruning,
        ignored_layers=[classifier] if classifier is not None else [],
        round_to=config.round_to if config.round_to > 1 else None,
    )
    pruner.step()
    module.train(was_training)


@register_stage(StructuredPruningConfig)
def prune_channels(model: CompressedModel, config: StructuredPruningConfig,
                   context: StageContext) -> CompressedModel:
    module = copy.deepcopy(model.module)
    if config.ratio > 0 or config.head_ratio:
        remove_channels(module, config, torch.zeros(context.data.input_shape))
    if config.finetune.epochs:
        finetune(module, config.finetune, context, description=config.describe())
    return model.evolve(module=module)
