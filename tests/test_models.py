"""The baseline network: architecture options, local weights, offline errors, the trained-baseline cache."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from udacisense.common.errors import UserError
from udacisense.evaluators.flops import count_flops
from udacisense.models.baseline import ensure_baseline
from udacisense.models.config import ModelConfig
from udacisense.models.mobilenet import ResizeInput, build_model
from udacisense.training import TrainConfig


def test_starter_kit_head_and_in_model_upsampling() -> None:
    model = build_model(ModelConfig(input_resolution=224), num_classes=10, image_size=32)
    resize, net = model
    assert isinstance(resize, ResizeInput) and resize.size == 224
    head = net.classifier
    assert [type(m) for m in head] == [torch.nn.Linear, torch.nn.Hardswish, torch.nn.Dropout, torch.nn.Linear]
    assert (head[0].in_features, head[0].out_features, head[3].out_features) == (576, 1024, 10)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_lower_resolution_lowers_flops() -> None:
    x = torch.randn(1, 3, 32, 32)
    flops = [count_flops(build_model(ModelConfig(input_resolution=r), 10, 32), x) for r in (224, 128, 64)]
    assert flops[0] > flops[1] > flops[2] > count_flops(build_model(ModelConfig(), 10, 32), x)


def test_local_weights_file_loads_and_drops_a_foreign_head(tmp_path: Path) -> None:
    source = torchvision.models.mobilenet_v3_small(num_classes=1000)  # an ImageNet-shaped state_dict
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = build_model(ModelConfig(weights_file=str(tmp_path / "w.pth")), num_classes=10, image_size=32)
    assert torch.equal(model.features[0][0].weight, source.features[0][0].weight)
    assert model.classifier[3].out_features == 10


@pytest.mark.parametrize(("content", "message"), [(None, "does not exist"), (b"not a checkpoint", "not a loadable")])
def test_bad_weights_files_are_clear_errors(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "w.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        build_model(ModelConfig(weights_file=str(path)), 10, 32)


def test_imagenet_weights_offline_names_the_local_file_alternative(monkeypatch, tmp_path: Path) -> None:
    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", unreachable)
    with pytest.raises(UserError, match="weights_file"):
        build_model(ModelConfig(pretrained="imagenet"), 10, 32)


def test_baseline_is_trained_once_then_reused_and_corruption_is_reported(tmp_path: Path, tiny_bundle) -> None:
    config, train = ModelConfig(width_mult=0.25), TrainConfig(epochs=1, max_batches_per_epoch=2)
    first = ensure_baseline(config, train, tiny_bundle, tmp_path, progress=False)
    assert not first.reused and (tmp_path / "model.pt").is_file()
    second = ensure_baseline(config, train, tiny_bundle, tmp_path, progress=False)
    assert second.reused
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    changed = ensure_baseline(config, TrainConfig(epochs=1, max_batches_per_epoch=1), tiny_bundle, tmp_path, progress=False)
    assert not changed.reused  # other settings: retrained, not silently reused
    (tmp_path / "model.pt").write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="corrupt"):
        ensure_baseline(config, train, tiny_bundle, tmp_path, progress=False)


def test_resolution_stage_trades_pixels_for_flops_and_keeps_the_weights(tiny_bundle) -> None:
    from udacisense.compression.resolution import ResolutionConfig
    from udacisense.compression.stage import CompressedModel, StageContext, apply_stage

    model = build_model(ModelConfig(width_mult=0.25, input_resolution=128), 4, 32).eval()
    context = StageContext(data=tiny_bundle)
    x = torch.randn(1, 3, 32, 32)
    lower = apply_stage(CompressedModel(model), ResolutionConfig(size=64), context).module
    native = apply_stage(CompressedModel(model), ResolutionConfig(size=32), context).module
    assert lower[0].size == 64 and not isinstance(native, torch.nn.Sequential)  # native size: no resize at all
    assert count_flops(model, x) > 3 * count_flops(lower, x) > 3 * count_flops(native, x)
    assert torch.equal(lower[1].features[0][0].weight, model[1].features[0][0].weight)
    assert model[0].size == 128  # the input model is untouched
