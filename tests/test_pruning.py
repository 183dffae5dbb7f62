"""Pruning stages on the real (narrow) MobileNetV3-Small: sparsity, size, channels, FLOPs, schedules."""

from __future__ import annotations

import copy
import gzip
from dataclasses import FrozenInstanceError, replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import snapshot, unchanged, weight_elements
from udacisense.common.errors import IncompatiblePipelineError, UserError
from udacisense.compression import pruning
from udacisense.compression.pruning import (
    GradualPruningConfig,
    StructuredPruningConfig,
    UnstructuredPruningConfig,
    sparsity,
    sparsity_at,
)
from udacisense.compression.stage import (
    CompressedModel,
    ModelForm,
    Signature,
    StageContext,
    apply_stage,
)
from udacisense.evaluators.flops import count_flops
from udacisense.evaluators.size import parameter_counts, state_dict_bytes
from udacisense.models.mobilenet import ResizeInput
from udacisense.training import TrainConfig

# One capped epoch: enough to prove the loop runs with masks in place, cheap on two cores.
ONE_STEP = TrainConfig(epochs=1, lr=0.05, max_batches_per_epoch=1)


@pytest.fixture()
def context(tiny_bundle) -> StageContext:
    return StageContext(data=tiny_bundle, seed=0)


def _prunable_sparsities(module: nn.Module) -> list[float]:
    return [float((m.weight == 0).float().mean()) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


# --- unstructured ------------------------------------------------------------------------------

@pytest.mark.parametrize("scope", ["global", "layer"])
def test_unstructured_reaches_amount_and_is_permanent(tiny_model, context, scope):
    before = snapshot(tiny_model)
    pruned = apply_stage(CompressedModel(tiny_model), UnstructuredPruningConfig(0.6, scope=scope), context).module

    assert unchanged(tiny_model, before)
    assert sparsity(tiny_model) < 0.01
    assert sparsity(pruned) == pytest.approx(0.6, abs=0.005)
    keys = pruned.state_dict().keys()
    assert not any(k.endswith(("weight_orig", "weight_mask")) for k in keys)
    assert keys == before.keys()
    per_layer = _prunable_sparsities(pruned)
    if scope == "layer":
        # Every layer loses its own share (up to rounding on the smallest layers).
        assert all(s == pytest.approx(0.6, abs=0.05) for s in per_layer)
    else:
        # A global ranking spares some layers and strips others, but never empties one (the head included).
        assert max(per_layer) - min(per_layer) > 0.1
        assert max(per_layer) < 0.99
        assert torch.count_nonzero(pruned.classifier[-1].weight) > 0


def test_unstructured_shrinks_gzip_not_raw_size(tiny_model, context):
    pruned = apply_stage(CompressedModel(tiny_model), UnstructuredPruningConfig(0.7), context).module
    raw_dense, raw_sparse = state_dict_bytes(tiny_model), state_dict_bytes(pruned)
    assert len(raw_sparse) >= 0.98 * len(raw_dense)
    assert len(gzip.compress(raw_sparse)) < 0.8 * len(gzip.compress(raw_dense))
    assert parameter_counts(pruned)[1] < 0.4 * parameter_counts(tiny_model)[1]


def test_unstructured_finetune_keeps_pruned_weights_zero(tiny_model, context):
    config = UnstructuredPruningConfig(0.5, finetune=ONE_STEP)
    without = apply_stage(CompressedModel(tiny_model), replace(config, finetune=TrainConfig(epochs=0)), context).module
    tuned = apply_stage(CompressedModel(tiny_model), config, context).module

    assert sparsity(tuned) >= sparsity(without) - 1e-6
    changed = [not torch.equal(a.weight, b.weight) for a, b in zip(tuned.modules(), without.modules())
               if isinstance(a, nn.Conv2d)]
    assert any(changed)
    for a, b in zip(tuned.modules(), without.modules()):
        if isinstance(a, (nn.Conv2d, nn.Linear)):
            assert torch.all(a.weight[b.weight == 0] == 0)
    assert not any(k.endswith("_orig") for k in tuned.state_dict())


@pytest.mark.parametrize("amount", [-0.1, 0.96, 1.0])
def test_unstructured_rejects_out_of_range_amount(amount):
    with pytest.raises(UserError, match="amount"):
        UnstructuredPruningConfig(amount)


# --- gradual -----------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", ["linear", "cubic", "exponential"])
def test_gradual_schedule_is_monotone_with_exact_endpoints(schedule):
    config = GradualPruningConfig(initial_sparsity=0.1, final_sparsity=0.8, start_epoch=2, end_epoch=6,
                                  schedule=schedule, finetune=TrainConfig(epochs=8))
    values = [sparsity_at(epoch, config) for epoch in range(9)]
    assert values[:3] == [0.1, 0.1, 0.1]
    assert values[6:] == [pytest.approx(0.8)] * 3
    assert all(a < b for a, b in zip(values[2:6], values[3:7]))


def test_gradual_schedule_values():
    base = GradualPruningConfig(final_sparsity=0.5, start_epoch=0, end_epoch=4, finetune=TrainConfig(epochs=4))
    at_half = {s: sparsity_at(2, replace(base, schedule=s)) for s in ("linear", "cubic", "exponential")}
    assert at_half["linear"] == pytest.approx(0.25)
    assert at_half["cubic"] == pytest.approx(0.5 - 0.5 * 0.5**3)  # Zhu & Gupta: s_f + (s_i - s_f)(1 - t/n)^3
    assert at_half["exponential"] == pytest.approx(1 - 0.5**0.5)  # density halves over the span
    # Cubic front-loads pruning, linear is even, exponential is in between for this target.
    assert at_half["cubic"] > at_half["exponential"] > at_half["linear"]


def test_gradual_rejects_bad_epochs():
    with pytest.raises(UserError, match="end_epoch"):
        GradualPruningConfig(end_epoch=5, finetune=TrainConfig(epochs=4))
    with pytest.raises(UserError, match="start_epoch"):
        GradualPruningConfig(start_epoch=3, end_epoch=2, finetune=TrainConfig(epochs=4))
    with pytest.raises(UserError, match="initial_sparsity"):
        GradualPruningConfig(initial_sparsity=0.6, final_sparsity=0.5)


def test_gradual_raises_sparsity_each_epoch_and_ends_at_final(tiny_model, context, monkeypatch):
    reached: list[float] = []
    original = pruning.prune_to

    def recording(module: nn.Module, target: float, scope: str) -> None:
        original(module, target, scope)
        reached.append(sparsity(module))

    monkeypatch.setattr(pruning, "prune_to", recording)
    config = GradualPruningConfig(final_sparsity=0.6, end_epoch=2, schedule="linear",
                                  finetune=TrainConfig(epochs=2, lr=0.05, max_batches_per_epoch=1))
    before = snapshot(tiny_model)
    pruned = apply_stage(CompressedModel(tiny_model), config, context).module

    assert unchanged(tiny_model, before)
    # Epochs 0 and 1 start at the schedule's values; the last step (epoch 2 == end) comes after training.
    assert reached == pytest.approx([0.0, 0.3, 0.6], abs=0.005)
    assert sparsity(pruned) == pytest.approx(0.6, abs=0.005)
    assert not any(k.endswith(("_orig", "_mask")) for k in pruned.state_dict())


def test_remasking_keeps_the_parameters_the_optimizer_holds(tiny_model):
    # fit() builds its optimizer before the epoch hooks re-mask; new Parameter objects would go untrained.
    before = [id(p) for p in tiny_model.parameters()]
    pruning.prune_to(tiny_model, 0.3, "global")
    pruning.prune_to(tiny_model, 0.5, "layer")
    pruning.make_permanent(tiny_model)
    assert sorted(id(p) for p in tiny_model.parameters()) == sorted(before)


# --- structured --------------------------------------------------------------------------------

def test_structured_removes_parameters_and_flops(tiny_model, context):
    example = torch.randn(2, 3, 32, 32)
    before = snapshot(tiny_model)
    results = {}
    for ratio in (0.3, 0.5):
        module = apply_stage(CompressedModel(tiny_model), StructuredPruningConfig(ratio), context).module
        results[ratio] = (parameter_counts(module)[0], count_flops(module, example), module(example).shape)

    assert unchanged(tiny_model, before)
    params0, flops0 = parameter_counts(tiny_model)[0], count_flops(tiny_model, example)
    assert params0 > results[0.3][0] > results[0.5][0]
    assert flops0 > results[0.3][1] > results[0.5][1]
    assert results[0.5][0] < 0.6 * params0
    assert all(shape == (2, 4) for _, _, shape in results.values())


def test_structured_keeps_classifier_and_trains(tiny_model, context):
    module = apply_stage(CompressedModel(tiny_model), StructuredPruningConfig(0.5, importance="l1"), context).module
    assert module.classifier[-1].out_features == 4
    assert any(isinstance(m, nn.Conv2d) and m.out_channels < o.out_channels
               for m, o in zip(module.modules(), tiny_model.modules()))

    images, labels = next(iter(context.data.loader("train", train=True)))
    module.train()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    weight = module.features[0][0].weight.detach().clone()
    loss = F.cross_entropy(module(images), labels)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert not torch.equal(weight, module.features[0][0].weight)


def test_structured_works_with_resize_wrapper_and_finetune(tiny_model, context):
    wrapped = nn.Sequential(ResizeInput(48), tiny_model)
    config = StructuredPruningConfig(0.3, global_pruning=True, finetune=ONE_STEP)
    module = apply_stage(CompressedModel(wrapped), config, context).module

    example = torch.randn(1, 3, 32, 32)
    assert isinstance(module[0], ResizeInput) and module[0].size == 48
    assert module(example).shape == (1, 4)
    assert parameter_counts(module)[0] < parameter_counts(wrapped)[0]
    assert count_flops(module, example) < count_flops(wrapped, example)


def test_structured_rounds_channels(tiny_model, context):
    module = apply_stage(CompressedModel(tiny_model), StructuredPruningConfig(0.3, round_to=8), context).module
    # torchvision makes every width a multiple of 8; pruning must not break that.
    convs = [m.out_channels for m in module.modules() if isinstance(m, nn.Conv2d)]
    assert all(c % 8 == 0 for c in convs)


def test_head_ratio_prunes_the_hidden_classifier_layer_and_shrinks_the_pte(tiny_model, context):
    from udacisense.runtime import executorch_bytes

    head = tiny_model.classifier[0]
    features_before = [m.out_channels for m in tiny_model.features.modules() if isinstance(m, nn.Conv2d)]
    config = StructuredPruningConfig(0.0, head_ratio=0.75)
    module = apply_stage(CompressedModel(tiny_model), config, context).module

    hidden, classifier = module.classifier[0], module.classifier[3]
    assert hidden.out_features == head.out_features // 4 and hidden.out_features % 8 == 0
    assert classifier.in_features == hidden.out_features and classifier.out_features == 4
    # Ratio 0 for the features: only the head shrank.
    assert [m.out_channels for m in module.features.modules() if isinstance(m, nn.Conv2d)] == features_before
    # Below 0.88 of the unpruned network's float weights alone, a lower bound of its program: no looser than the
    # 0.8 of its program this compared with before (measured: 391 kB against 456 kB of weights, a 506 kB program).
    pruned = len(executorch_bytes(module, torch.randn(1, 3, 32, 32)))
    assert pruned < 0.88 * 4 * weight_elements(tiny_model), (pruned, 4 * weight_elements(tiny_model))
    assert config.describe() == "channels(l2, 0.00, head 0.75)"


def test_structured_rejects_bad_ratio():
    with pytest.raises(UserError, match="ratio"):
        StructuredPruningConfig(0.95)


# --- shared ------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [UnstructuredPruningConfig(0.5), StructuredPruningConfig(0.3),
                                    GradualPruningConfig()])
def test_transition_rejects_quantized_and_lowered(config):
    assert config.transition(Signature()) == Signature()
    for form in (ModelForm.QUANTIZED, ModelForm.LOWERED):
        with pytest.raises(IncompatiblePipelineError):
            config.transition(Signature(form=form, backend="x86"))


def test_describe():
    assert UnstructuredPruningConfig(0.5).describe() == "prune(l1, 0.50, global)"
    assert UnstructuredPruningConfig(0.25, scope="layer").describe() == "prune(l1, 0.25, layer)"
    assert StructuredPruningConfig(0.3).describe() == "channels(l2, 0.30)"
    assert GradualPruningConfig().describe().startswith("gradual(cubic")


def test_configs_are_frozen_and_hashable():
    config = UnstructuredPruningConfig(0.5)
    with pytest.raises(FrozenInstanceError):
        config.amount = 0.1  # type: ignore[misc]  # assigning to a frozen config is the test
    assert hash(config) == hash(copy.copy(config))
