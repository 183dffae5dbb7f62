"""Quantization stages on a briefly trained narrow MobileNetV3-Small (SE blocks, hardswish): every backend.

The test split of the tiny bundle draws new class colours, so the float model is not accurate on
it; agreement with the float model is what quantization must preserve, and the float model's
margins there are small, which makes the check strict.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.conftest import snapshot, train_briefly, unchanged, weight_elements
from udacisense.common.errors import IncompatiblePipelineError, UserError
from udacisense.compression import quantization
from udacisense.compression.graph import TorchScriptConfig, model_runner
from udacisense.compression.quantization import (
    DynamicQuantConfig,
    QATConfig,
    StaticQuantConfig,
    _calibration_batches,
    _ptq_fx,
    export_graph,
    feature_blocks,
    freeze_exported_bn,
    qat_schedule,
    qat_switches,
)
from udacisense.compression.sensitivity import int8_sensitivity, quantization_units
from udacisense.compression.stage import (
    CompressedModel,
    ModelForm,
    Signature,
    StageContext,
    apply_stage,
)
from udacisense.evaluators.accuracy import evaluate_accuracy
from udacisense.evaluators.parity import parity
from udacisense.models.config import ModelConfig
from udacisense.models.mobilenet import build_model
from udacisense.runtime import quantized_engine
from udacisense.training import TrainConfig

MIN_AGREEMENT = 0.85


@pytest.fixture(scope="module")
def trained(tiny_bundle) -> nn.Module:
    """The tiny_model architecture, trained until it classifies the validation split."""
    torch.manual_seed(0)
    # build_model sets the BatchNorm momentum (0.1) that makes eval statistics usable after a few epochs.
    model = train_briefly(build_model(ModelConfig(width_mult=0.25), num_classes=4, image_size=32), tiny_bundle)
    assert evaluate_accuracy(model, tiny_bundle.loader("val"), 4).top1 >= 0.9
    return model


@pytest.fixture(scope="module")
def context(tiny_bundle) -> StageContext:
    return StageContext(data=tiny_bundle, seed=0)


@pytest.fixture(scope="module")
def float_model(trained) -> CompressedModel:
    return CompressedModel(trained)


@pytest.fixture(scope="module")
def float_torchscript_bytes(float_model, context) -> int:
    return len(apply_stage(float_model, TorchScriptConfig(), context).artifact)


def _assert_unchanged(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
    assert unchanged(module, before)
    assert all(type(m) is not nn.Module for m in module.modules())  # no FX/quantized leftovers swapped in


# --- post-training static quantization -----------------------------------------------------------

@pytest.mark.parametrize("backend", ["x86", "fbgemm", "qnnpack"])
def test_fx_ptq_agrees_with_float_and_shrinks_torchscript(float_model, context, tiny_bundle,
                                                          float_torchscript_bytes, backend):
    before = snapshot(float_model.module)
    quantized = apply_stage(float_model, StaticQuantConfig(backend=backend), context)
    assert (quantized.form, quantized.backend, quantized.runtime) == (ModelForm.QUANTIZED, backend, "torchscript")
    assert any("quantized" in type(m).__module__ for m in quantized.module.modules())

    lowered = apply_stage(quantized, TorchScriptConfig(), context)
    reference = model_runner(float_model)
    report = parity(reference, model_runner(lowered), tiny_bundle.loader("test"))
    assert report.top1_agreement >= MIN_AGREEMENT, report
    assert parity(reference, model_runner(lowered), tiny_bundle.loader("val")).top1_agreement >= 0.95
    # The artifact runs exactly what the eager quantized module runs.
    assert parity(model_runner(quantized), model_runner(lowered), tiny_bundle.loader("test")).max_abs_diff < 1e-4
    # At width 0.25 per-channel scales and graph overhead are a large share of the file; the
    # standard-width model shrinks 3.4x (x86) to 3.8x (qnnpack).
    assert float_torchscript_bytes / len(lowered.artifact) >= 1.8
    _assert_unchanged(float_model.module, before)
    assert not float_model.module.training


def test_xnnpack_ptq_agrees_with_float_and_keeps_prefix_float(float_model, context, tiny_bundle):
    before = snapshot(float_model.module)
    quantized = apply_stage(float_model, StaticQuantConfig(backend="xnnpack", float_prefix_blocks=1), context)
    assert (quantized.form, quantized.backend, quantized.runtime) == (ModelForm.QUANTIZED, "xnnpack", "executorch")
    report = parity(model_runner(float_model), model_runner(quantized), tiny_bundle.loader("test"))
    assert report.top1_agreement >= MIN_AGREEMENT, report
    # Evaluators call .eval() on modules; PT2E graphs forbid it unless allowed.
    assert evaluate_accuracy(quantized.module, tiny_bundle.loader("val"), 4).top1 >= 0.9

    convs = [n for n in quantized.module.graph.nodes if n.target == torch.ops.aten.conv2d.default]
    stacks = [[path for path, _ in n.meta["nn_module_stack"].values()] for n in convs]
    weight_is_dequantized = ["dequantize" in str(n.args[1].target) for n in convs]
    in_prefix = ["features.0" in paths for paths in stacks]
    assert in_prefix.count(True) == 1
    assert all(not dq for dq, prefix in zip(weight_is_dequantized, in_prefix) if prefix)
    assert all(dq for dq, prefix in zip(weight_is_dequantized, in_prefix) if not prefix)
    _assert_unchanged(float_model.module, before)


def test_fx_float_prefix_blocks_stay_float(float_model, context, tiny_bundle):
    quantized = apply_stage(float_model, StaticQuantConfig(backend="x86", float_prefix_blocks=2), context)
    module = quantized.module
    prefix, rest = feature_blocks(module)[:2], feature_blocks(module)[2:]
    assert prefix == ["features.0", "features.1"]

    def quantized_layers(block: str) -> int:
        return sum("quantized" in type(m).__module__ for m in module.get_submodule(block).modules())

    assert all(quantized_layers(block) == 0 for block in prefix)
    assert all(quantized_layers(block) > 0 for block in rest)
    report = parity(model_runner(float_model), model_runner(quantized), tiny_bundle.loader("test"))
    assert report.top1_agreement >= MIN_AGREEMENT, report


def test_float_prefix_beyond_the_model_is_a_user_error(float_model, context):
    with pytest.raises(UserError, match="only 13 feature blocks"):
        apply_stage(float_model, StaticQuantConfig(float_prefix_blocks=14), context)
    with pytest.raises(UserError, match="no\\b.*features|`features` container"):
        apply_stage(CompressedModel(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))),
                    StaticQuantConfig(float_prefix_blocks=1), context)


def test_configs_reject_bad_values():
    with pytest.raises(UserError, match="backend"):
        StaticQuantConfig(backend="arm")  # type: ignore[arg-type]  # an unknown backend is the test
    with pytest.raises(UserError, match="backend"):
        DynamicQuantConfig(backend="arm")  # type: ignore[arg-type]  # an unknown backend is the test
    with pytest.raises(UserError, match="calibration_samples"):
        StaticQuantConfig(calibration_samples=0)
    with pytest.raises(UserError, match="start_epoch"):
        QATConfig(start_epoch=3, finetune=TrainConfig(epochs=3))
    assert StaticQuantConfig(backend="qnnpack", float_prefix_blocks=2).describe() == "ptq(qnnpack, float_prefix=2)"
    assert DynamicQuantConfig().describe() == "dynamic(int8, x86)"
    with pytest.raises(UserError, match="xnnpack"):
        StaticQuantConfig(backend="x86", linear_weight_bits=4)
    with pytest.raises(UserError, match="linear_weight_bits"):
        QATConfig(backend="xnnpack", linear_weight_bits=2)  # type: ignore[arg-type]
    assert StaticQuantConfig(backend="xnnpack", linear_weight_bits=4).describe() == "ptq(xnnpack, int4 linear)"
    assert DynamicQuantConfig(backend="xnnpack", linear_weight_bits=4).describe() == "dynamic(int8, xnnpack, int4 linear)"


# --- pipeline order ------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [StaticQuantConfig(), StaticQuantConfig(backend="xnnpack"), DynamicQuantConfig(),
                                    QATConfig()])
def test_quantization_needs_a_float_model(config):
    assert config.transition(Signature()) == Signature(ModelForm.QUANTIZED, config.backend)
    for form, backend in [(ModelForm.QUANTIZED, "x86"), (ModelForm.QUANTIZED, "xnnpack"), (ModelForm.LOWERED, None)]:
        with pytest.raises(IncompatiblePipelineError, match="cannot run on a"):
            config.transition(Signature(form, backend))


def test_stage_refuses_an_already_quantized_model(float_model, context):
    quantized = apply_stage(float_model, DynamicQuantConfig(), context)
    with pytest.raises(IncompatiblePipelineError):
        apply_stage(quantized, StaticQuantConfig(), context)


# --- dynamic -------------------------------------------------------------------------------------

def test_dynamic_quantizes_only_linear_layers(float_model, context, tiny_bundle, float_torchscript_bytes):
    quantized = apply_stage(float_model, DynamicQuantConfig(backend="x86"), context)
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    kinds = [type(m) for m in quantized.module.modules()]
    assert kinds.count(DynamicLinear) == 2 and nn.Linear not in kinds
    assert kinds.count(nn.Conv2d) == sum(isinstance(m, nn.Conv2d) for m in float_model.module.modules())
    assert all(type(m) is nn.Linear for m in float_model.module.classifier if isinstance(m, nn.Linear))

    lowered = apply_stage(quantized, TorchScriptConfig(), context)
    report = parity(model_runner(float_model), model_runner(lowered), tiny_bundle.loader("test"))
    assert report.top1_agreement >= 0.95 and report.max_abs_diff < 0.2, report
    assert len(lowered.artifact) < float_torchscript_bytes  # only the classifier (a third of the weights) shrinks


def test_xnnpack_dynamic_ships_an_int8_pte_that_agrees_with_float(float_model, context, tiny_bundle):
    from udacisense.compression.graph import ExecuTorchConfig

    quantized = apply_stage(float_model, DynamicQuantConfig(backend="xnnpack"), context)
    assert (quantized.form, quantized.backend, quantized.runtime) == (ModelForm.QUANTIZED, "xnnpack", "executorch")
    lowered = apply_stage(quantized, ExecuTorchConfig(), context)
    # int8 classifier weights inside the .pte: smaller than the float weights alone, which bound the float .pte from below.
    float_weight_bytes = 4 * weight_elements(float_model.module)
    assert len(lowered.artifact) < 0.9 * float_weight_bytes, (len(lowered.artifact), float_weight_bytes)
    report = parity(model_runner(float_model), model_runner(lowered), tiny_bundle.loader("test"))
    assert report.top1_agreement >= 0.95, report
    # The program runs what the eager PT2E graph simulates.
    assert parity(model_runner(quantized), model_runner(lowered), tiny_bundle.loader("test")).top1_agreement == 1.0


def test_calibration_sees_every_class_of_a_class_sorted_split(context, tiny_bundle):
    from udacisense.datasources.loaders import stratified_sample

    labels = tiny_bundle.train.labels
    assert labels[:16].unique().numel() == 1  # the split is sorted by class: its first batch is one class
    sample = stratified_sample(tiny_bundle.train, 8, seed=0)
    assert sorted(sample.labels.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert sample.labels.tolist() != sorted(sample.labels.tolist())  # shuffled, not in class blocks
    assert torch.equal(stratified_sample(tiny_bundle.train, 8, seed=0).images, sample.images)  # seeded
    batches = _calibration_batches(context, 40)
    assert [b.shape[0] for b in batches] == [32, 8]  # the evaluation batch size of the tiny bundle
    expected = tiny_bundle.loader("train").normalise(stratified_sample(tiny_bundle.train, 40, 0).images)
    assert torch.equal(torch.cat(batches), expected)


# --- quantization-aware training -----------------------------------------------------------------

SHORT_QAT = TrainConfig(epochs=2, lr=0.005, schedule="cosine")


def test_qat_schedule_switches_fake_quant_and_freezes_bn(trained):
    from torch.ao.nn.intrinsic.qat import ConvBn2d, ConvBnReLU2d
    from torch.ao.quantization import FakeQuantizeBase, get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    from udacisense.runtime import quiet_legacy_apis

    config = QATConfig(backend="x86", start_epoch=1, freeze_bn_epoch=2, finetune=TrainConfig(epochs=3))
    with quiet_legacy_apis(), quantized_engine("x86"):
        prepared = prepare_qat_fx(copy.deepcopy(trained).train(), get_default_qat_qconfig_mapping("x86"),
                                  (torch.zeros(2, 3, 32, 32),))
    fake_quants = [m for m in prepared.modules() if isinstance(m, FakeQuantizeBase)]
    conv_bns = [m for m in prepared.modules() if isinstance(m, (ConvBn2d, ConvBnReLU2d))]
    assert fake_quants and conv_bns
    schedule = qat_schedule(config, qat_switches("x86"))
    expected = {0: (False, False), 1: (True, False), 2: (True, True)}
    for epoch, (fake_quant_on, bn_frozen) in expected.items():
        schedule(prepared, epoch)
        prepared.train()  # what the training loop does after the hooks
        assert all(bool(m.fake_quant_enabled) == fake_quant_on for m in fake_quants)
        assert all(bool(m.observer_enabled) for m in fake_quants)
        assert all(m.freeze_bn == bn_frozen and m.bn.training != bn_frozen for m in conv_bns)


def _running_stats(module: nn.Module) -> list[torch.Tensor]:
    stats = [b.clone() for name, b in module.named_buffers() if "running_" in name]
    assert stats
    return stats


def _stats_move(module: nn.Module) -> bool:
    """Whether one training-mode forward pass changes the BatchNorm running statistics."""
    module.eval()
    module.train()
    before = _running_stats(module)
    module(torch.randn(4, 3, 8, 8) * 5 + 3)
    return not all(torch.equal(a, b) for a, b in zip(before, _running_stats(module)))


def test_pt2e_bn_freeze_survives_train_and_eval():
    from torchao.quantization.pt2e import allow_exported_model_train_eval

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).train()
    graph = export_graph(net, torch.randn(2, 3, 8, 8))
    allow_exported_model_train_eval(graph)
    assert _stats_move(graph)
    freeze_exported_bn(graph)
    assert not _stats_move(graph)
    assert not _stats_move(graph)  # still frozen after another eval/train round trip
    assert not _stats_move(copy.deepcopy(graph))


# --- int4 Linear weights (torchao) beside int8 convolutions (PT2E) ------------------------------

@pytest.fixture(scope="module")
def wide_model() -> CompressedModel:
    """Width 0.5: the classifier's Linear(288, 512) and Linear(512, 4) split into int4 groups of 32. Untrained: what is
    checked is the graph quantization makes."""
    torch.manual_seed(0)
    return CompressedModel(build_model(ModelConfig(width_mult=0.5), num_classes=4, image_size=32).eval())


def test_int4_takes_only_linear_layers_xnnpack_can_group(float_model):
    from udacisense.compression.quantization import _int4_linear

    module = copy.deepcopy(float_model.module)
    # Linear(144, 256) has no XNNPACK int4 kernel (144 is no multiple of 32): it stays for the int8 path.
    assert _int4_linear(module) == ["classifier.3"]
    assert type(module.classifier[0].weight) is nn.Parameter and type(module.classifier[3].weight) is not nn.Parameter


@pytest.mark.parametrize("config_type", [StaticQuantConfig, DynamicQuantConfig])
def test_int4_linear_weights_quantize_both_linear_layers(wide_model, context, config_type):
    quantized = apply_stage(wide_model, config_type(backend="xnnpack", linear_weight_bits=4), context)
    targets = [str(n.target) for n in quantized.module.graph.nodes]
    # Both Linear layers hold int4 weights, and quantize their inputs on the fly: two dequantizations each.
    assert targets.count("torchao.dequantize_affine.default") == 4, targets


# PT2E QAT (XNNPACK) costs ~25 s, nearly all in torchao folding BatchNorm at conversion (it exports ~100 patterns):
# it is tested once, with int4 Linear weights and lowered (below).
@pytest.mark.parametrize("backend", ["x86"])
def test_qat_trains_and_converts(float_model, context, tiny_bundle, backend):
    before = snapshot(float_model.module)
    epochs_seen: list[int] = []
    watched = StageContext(data=tiny_bundle, seed=0, epoch_end_hooks=(lambda epoch, top1: epochs_seen.append(epoch),))
    config = QATConfig(backend=backend, start_epoch=1, freeze_bn_epoch=1, finetune=SHORT_QAT)
    quantized = apply_stage(float_model, config, watched)
    assert epochs_seen == [0, 1]
    assert (quantized.form, quantized.backend) == (ModelForm.QUANTIZED, backend)
    assert any("quantized" in type(m).__module__ for m in quantized.module.modules())
    report = parity(model_runner(float_model), model_runner(quantized), tiny_bundle.loader("val"))
    assert report.top1_agreement >= MIN_AGREEMENT, report
    assert evaluate_accuracy(quantized.module, tiny_bundle.loader("val"), 4).top1 >= 0.9
    _assert_unchanged(float_model.module, before)


def test_quantized_engine_is_restored():
    previous = torch.backends.quantized.engine
    with quantized_engine("qnnpack"):
        assert torch.backends.quantized.engine == "qnnpack"
    with quantized_engine("xnnpack"):
        assert torch.backends.quantized.engine == previous
    assert torch.backends.quantized.engine == previous


def test_sensitivity_measures_every_unit_alone_and_ranks_the_most_hurt_first(float_model, context, tiny_bundle):
    module = float_model.module
    units = quantization_units(module)
    assert units == [*feature_blocks(module), "classifier"]
    probe = tiny_bundle.loader("val").normalise(tiny_bundle.val.images[:32]).contiguous()
    quantized_alone: list[list[str]] = []

    def quantize_leaving(target: nn.Module, left_float):
        quantized_alone.append([u for u in units if u not in left_float])
        return _ptq_fx(target, "x86", [probe], left_float)

    ranking = int8_sensitivity(module, quantize_leaving, probe)
    assert quantized_alone == [[unit] for unit in units]  # each unit in int8 on its own, the rest float
    assert sorted(s.unit for s in ranking) == sorted(units)
    changes = [s.mean_logit_change for s in ranking]
    assert changes == sorted(changes, reverse=True) and changes[0] > 0
    assert all(0.0 <= s.top1_agreement <= 1.0 for s in ranking)


def test_ptq_keeps_the_measured_most_sensitive_units_float(float_model, context, tiny_bundle, monkeypatch):
    config = StaticQuantConfig(backend="x86", float_sensitive_units=2, sensitivity_probe=32)
    assert config.describe() == "ptq(x86, 2 most sensitive float)"
    module = float_model.module
    # The units the stage measured as most sensitive (the measurement itself: the test above), read as it ran.
    measured: list[list[str]] = []
    most_sensitive = quantization._most_sensitive

    def noted(*args, **kwargs) -> list[str]:
        measured.append(most_sensitive(*args, **kwargs))
        return measured[-1]

    monkeypatch.setattr(quantization, "_most_sensitive", noted)
    quantized = apply_stage(float_model, config, context)
    (kept,) = measured
    assert len(kept) == 2

    def quantized_layers(unit: str) -> int:
        return sum("quantized" in type(m).__module__ for m in quantized.module.get_submodule(unit).modules())

    assert [unit for unit in quantization_units(module) if quantized_layers(unit) == 0] == sorted(kept, key=quantization_units(module).index)
    report = parity(model_runner(float_model), model_runner(quantized), tiny_bundle.loader("test"))
    assert report.top1_agreement >= MIN_AGREEMENT, report
    with pytest.raises(UserError, match="only 14 units"):
        apply_stage(float_model, StaticQuantConfig(backend="x86", float_sensitive_units=14), context)


@pytest.fixture(scope="module")
def two_linear_net(tiny_bundle) -> CompressedModel:
    """MobileNetV3's classifier, Linear(288, 512) and Linear(512, 4), behind one convolution with BatchNorm: what int4
    QAT handles differently, in a network that lowers in seconds (a MobileNetV3 takes 20-40 s a program)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 288, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(288), nn.Hardswish(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(288, 512), nn.Hardswish(), nn.Dropout(0.2),
                        nn.Linear(512, 4))
    return CompressedModel(train_briefly(net, tiny_bundle))


@pytest.mark.slow
def test_qat_with_int4_linear_weights_trains_converts_and_lowers_to_a_smaller_pte(two_linear_net, context, tiny_bundle):
    # The fine-tune lays convolutions out channels_last and back: the int4 weights (a torchao tensor
    # subclass) must be left alone, or nn.Module._apply fails to swap them (found by a real search).
    # Post-training int4 reaches the same torchao layers and XNNPACK kernel; its graph is checked above.
    from udacisense.compression.graph import ExecuTorchConfig

    before = snapshot(two_linear_net.module)
    config = QATConfig(backend="xnnpack", start_epoch=0, freeze_bn_epoch=1, finetune=SHORT_QAT, linear_weight_bits=4)
    quantized = apply_stage(two_linear_net, config, context)
    targets = [str(n.target) for n in quantized.module.graph.nodes]
    assert targets.count("torchao.dequantize_affine.default") == 4, targets  # both Linear layers int4
    assert any("quantize_per_channel" in t for t in targets)  # the convolution int8
    assert not any("batch_norm" in t for t in targets)  # folded into the convolutions at conversion
    assert (quantized.form, quantized.backend) == (ModelForm.QUANTIZED, "xnnpack")
    lowered = apply_stage(quantized, ExecuTorchConfig(), context)
    assert lowered.delegation is not None and lowered.delegation.fully_delegated, lowered.delegation
    assert parity(model_runner(quantized), model_runner(lowered), tiny_bundle.loader("test")).top1_agreement >= 0.9
    # Linear(288, 512) holds 147k weights: half a byte each instead of one (against the same network in int8).
    int8 = apply_stage(apply_stage(two_linear_net, StaticQuantConfig(backend="xnnpack"), context), ExecuTorchConfig(), context)
    assert len(lowered.artifact) < len(int8.artifact) - 60_000, (len(lowered.artifact), len(int8.artifact))
    _assert_unchanged(two_linear_net.module, before)
