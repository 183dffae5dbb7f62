"""Graph stages and runners: Conv-BN fusion, TorchScript and ExecuTorch lowering, parity on real batches."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.conftest import snapshot, train_briefly, unchanged
from udacisense.common.errors import IncompatiblePipelineError, UserError
from udacisense.compression.graph import (
    ExecuTorchConfig,
    FuseConfig,
    TorchScriptConfig,
    lower,
    model_runner,
)
from udacisense.compression.quantization import DynamicQuantConfig, QATConfig, StaticQuantConfig
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
from udacisense.models.mobilenet import ResizeInput, build_model
from udacisense.runtime import LoweredModule, load_runner


@pytest.fixture(scope="module")
def context(tiny_bundle) -> StageContext:
    return StageContext(data=tiny_bundle, seed=0)


@pytest.fixture(scope="module")
def trained(tiny_bundle) -> CompressedModel:
    torch.manual_seed(0)
    net = build_model(ModelConfig(width_mult=0.25), num_classes=4, image_size=32)
    return CompressedModel(train_briefly(net, tiny_bundle))


@pytest.fixture(scope="module")
def resized(tiny_bundle) -> CompressedModel:
    """The app's configuration: 32×32 images upsampled to 64×64 inside the model."""
    torch.manual_seed(0)
    net = build_model(ModelConfig(width_mult=0.25, input_resolution=64), num_classes=4, image_size=32)
    assert isinstance(net[0], ResizeInput)
    return CompressedModel(train_briefly(net, tiny_bundle))


class _Excite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.nn.functional.hardsigmoid(self.fc(torch.nn.functional.adaptive_avg_pool2d(x, 1)))


# --- fusion --------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["trained", "resized"])
def test_fuse_folds_every_bn_and_keeps_outputs(request, context, tiny_bundle, which):
    model: CompressedModel = request.getfixturevalue(which)
    before = snapshot(model.module)
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.module.modules())
    fused = apply_stage(model, FuseConfig(), context)
    assert fused.form is ModelForm.FLOAT
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.module.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.module.modules()) == bns > 0
    for split in ("val", "test"):
        report = parity(model_runner(model), model_runner(fused), tiny_bundle.loader(split))
        assert report.max_abs_diff < 1e-4 and report.top1_agreement == 1.0, report
    assert unchanged(model.module, before)


def test_fused_model_still_quantizes(trained, context, tiny_bundle):
    fused = apply_stage(trained, FuseConfig(), context)
    quantized = apply_stage(fused, StaticQuantConfig(backend="x86"), context)
    assert parity(model_runner(trained), model_runner(quantized), tiny_bundle.loader("val")).top1_agreement >= 0.95


# --- TorchScript ---------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["trained", "resized"])
def test_torchscript_float_matches_eager(request, context, tiny_bundle, which):
    model: CompressedModel = request.getfixturevalue(which)
    before = snapshot(model.module)
    lowered = apply_stage(model, TorchScriptConfig(), context)
    assert (lowered.form, lowered.runtime) == (ModelForm.LOWERED, "torchscript")
    assert isinstance(lowered.artifact, bytes) and len(lowered.artifact) > 100_000
    assert lowered.delegation is None  # TorchScript has no delegate
    report = parity(model_runner(model), load_runner(lowered.artifact, "torchscript"), tiny_bundle.loader("test"))
    assert report.max_abs_diff < 1e-4 and report.samples == len(tiny_bundle.test), report
    # The lowered module runs the artifact, so evaluators work on it unchanged (and on a copy).
    assert isinstance(lowered.module, LoweredModule)
    assert evaluate_accuracy(copy.deepcopy(lowered.module), tiny_bundle.loader("val"), 4).top1 == \
        evaluate_accuracy(model.module, tiny_bundle.loader("val"), 4).top1
    assert unchanged(model.module, before)


def test_torchscript_runner_uses_the_backend_engine(trained, context, tiny_bundle):
    quantized = apply_stage(trained, StaticQuantConfig(backend="qnnpack"), context)
    lowered = lower(quantized)
    assert lowered.runtime == "torchscript"
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "x86"
    try:
        run = load_runner(lowered.artifact, "torchscript", backend="qnnpack")
        report = parity(model_runner(quantized), run, tiny_bundle.loader("test"))
        assert report.max_abs_diff < 1e-4, report
        assert torch.backends.quantized.engine == "x86"
    finally:
        torch.backends.quantized.engine = previous


# --- ExecuTorch ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resized_xnnpack(resized, context) -> tuple[CompressedModel, CompressedModel]:
    """The resized model quantized for XNNPACK, and that lowered to ExecuTorch (shape from the PT2E graph)."""
    quantized = apply_stage(resized, StaticQuantConfig(backend="xnnpack", float_prefix_blocks=1), context)
    return quantized, lower(quantized)


# Lowering a MobileNet to ExecuTorch takes 20-40 s of graph passes whatever its width.
@pytest.mark.slow
def test_executorch_runs_the_quantized_resized_model(resized, resized_xnnpack, tiny_bundle):
    before = snapshot(resized.module)
    quantized, lowered = resized_xnnpack
    assert (lowered.form, lowered.runtime, lowered.backend) == (ModelForm.LOWERED, "executorch", "xnnpack")
    assert lowered.delegation is not None and lowered.delegation.fully_delegated, lowered.delegation
    # The .pte runs int8 XNNPACK kernels; the eager PT2E graph simulates them in float.
    same = parity(model_runner(quantized), model_runner(lowered), tiny_bundle.loader("test"))
    logit_range = max(float(model_runner(quantized)(images).abs().max()) for images, _ in tiny_bundle.loader("test"))
    # A few int8 steps apart: XNNPACK requantizes and rounds differently from the float simulation, which
    # may flip a near-tie (one image of 32 on some machines).
    assert same.top1_agreement >= 0.95 and same.max_abs_diff < 0.05 * logit_range, (same, logit_range)
    in_distribution = parity(model_runner(resized), model_runner(lowered), tiny_bundle.loader("val"))
    assert in_distribution.top1_agreement >= 0.95, in_distribution
    # The test split's new class colours push activations past the calibrated ranges, and the float
    # model's margins there are small: a few samples may flip.
    new_colours = parity(model_runner(resized), model_runner(lowered), tiny_bundle.loader("test"))
    assert new_colours.top1_agreement >= 0.8, new_colours
    float_weight_bytes = 4 * sum(p.numel() for p in resized.module.parameters())
    assert float_weight_bytes / len(lowered.artifact) >= 1.8  # a float .pte holds at least its float32 weights
    assert unchanged(resized.module, before)


@pytest.mark.slow
def test_executorch_runner_takes_any_batch(resized_xnnpack, tiny_bundle):
    _, lowered = resized_xnnpack
    run = load_runner(lowered.artifact, "executorch")
    images = next(iter(tiny_bundle.loader("test")))[0]
    whole = run(images)
    assert whole.shape == (len(images), 4)
    assert torch.equal(run(images[3:4]), whole[3:4])
    copied = copy.deepcopy(lowered.module)
    assert evaluate_accuracy(copied, tiny_bundle.loader("val"), 4).samples == len(tiny_bundle.val)


def test_executorch_float_program_matches_eager(tiny_bundle):
    # A small float net with MobileNet's ops (resize, conv-bn-hardswish, squeeze-excite scaling) keeps
    # this cheap: lowering time grows with the number of graph nodes.
    torch.manual_seed(0)
    net = nn.Sequential(ResizeInput(64), nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.Hardswish(),
                        _Excite(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    model = CompressedModel(net)
    with pytest.raises(UserError, match="example input"):
        lower(model)
    lowered = lower(model, example_input=torch.zeros(tiny_bundle.input_shape))
    assert (lowered.runtime, lowered.backend) == ("executorch", None)
    report = parity(model_runner(model), model_runner(lowered), tiny_bundle.loader("test"))
    assert report.max_abs_diff < 1e-4 and report.top1_agreement == 1.0, report
    # Hardswish decomposes into ops on scalar constants; folded, nothing is left to portable kernels.
    assert lowered.delegation is not None and lowered.delegation.fully_delegated, lowered.delegation
    assert lowered.delegation.delegated_subgraphs == 1 and lowered.delegation.portable_ops == {}


# --- order ---------------------------------------------------------------------------------------

def test_lowering_targets_the_backend_runtime():
    lowered_ts = Signature(ModelForm.LOWERED, "x86")
    assert TorchScriptConfig().transition(Signature(ModelForm.QUANTIZED, "x86")) == lowered_ts
    assert TorchScriptConfig().transition(Signature()) == Signature(ModelForm.LOWERED, None)
    lowered_et = Signature(ModelForm.LOWERED, "xnnpack")
    assert ExecuTorchConfig().transition(Signature(ModelForm.QUANTIZED, "xnnpack")) == lowered_et
    assert ExecuTorchConfig().transition(Signature()) == Signature(ModelForm.LOWERED, None)
    with pytest.raises(IncompatiblePipelineError, match="xnnpack"):
        TorchScriptConfig().transition(Signature(ModelForm.QUANTIZED, "xnnpack"))
    for backend in ("x86", "fbgemm", "qnnpack"):
        with pytest.raises(IncompatiblePipelineError, match=backend):
            ExecuTorchConfig().transition(Signature(ModelForm.QUANTIZED, backend))
    with pytest.raises(IncompatiblePipelineError, match="cannot run on a quantized"):
        FuseConfig().transition(Signature(ModelForm.QUANTIZED, "x86"))


@pytest.mark.parametrize("config", [FuseConfig(), TorchScriptConfig(), ExecuTorchConfig(), StaticQuantConfig(),
                                    DynamicQuantConfig(), QATConfig()])
@pytest.mark.parametrize("backend", [None, "x86", "xnnpack"])
def test_nothing_runs_after_lowering(config, backend):
    with pytest.raises(IncompatiblePipelineError, match="cannot run on a lowered"):
        config.transition(Signature(ModelForm.LOWERED, backend))


def test_lower_picks_the_runtime_and_refuses_conflicts(trained, context):
    quantized = apply_stage(trained, DynamicQuantConfig(backend="x86"), context)
    with pytest.raises(IncompatiblePipelineError, match="executorch"):
        lower(quantized, "executorch")
    with pytest.raises(IncompatiblePipelineError):
        apply_stage(quantized, ExecuTorchConfig(), context)
    lowered = lower(quantized)
    assert (lowered.runtime, lowered.backend, lowered.form) == ("torchscript", "x86", ModelForm.LOWERED)
    assert lower(lowered) is lowered
    with pytest.raises(IncompatiblePipelineError, match="lowered"):
        apply_stage(lowered, TorchScriptConfig(), context)
    float_lowered = lower(trained, "torchscript")
    assert (float_lowered.runtime, float_lowered.backend) == ("torchscript", None)


@pytest.mark.slow
def test_pt2e_model_refuses_torchscript(resized_xnnpack, context):
    quantized, _ = resized_xnnpack
    with pytest.raises(IncompatiblePipelineError, match="xnnpack"):
        lower(quantized, "torchscript")
    with pytest.raises(IncompatiblePipelineError, match="xnnpack"):
        apply_stage(quantized, TorchScriptConfig(), context)


def test_parity_needs_batches():
    with pytest.raises(UserError):
        parity(lambda x: x, lambda x: x, [])
