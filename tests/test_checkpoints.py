"""A user's checkpoint: Small or Large at any width, in the shapes notebooks save, and other architectures refused."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch
import torchvision

from udacisense.common.errors import UserError
from udacisense.models.checkpoints import check_classes, inspect_checkpoint

CLASSES = ["cat", "dog", "emu"]


@cache
def trained_state(arch: str, width: float) -> dict[str, torch.Tensor]:
    """A state_dict as a notebook would save it (built once per test run: a Large takes a while to initialise)."""
    return getattr(torchvision.models, arch)(num_classes=3, width_mult=width).state_dict()


@pytest.mark.parametrize(("arch", "width"), [("mobilenet_v3_small", 0.25), ("mobilenet_v3_large", 0.35),
                                             ("mobilenet_v3_large", 1.0)])
@pytest.mark.parametrize("shape", ["plain", "wrapped", "module.", "model.", "class_to_idx"])
def test_architecture_width_and_classes_are_read_from_any_common_shape(tmp_path: Path, arch: str, width: float,
                                                                        shape: str) -> None:
    state = trained_state(arch, width)
    saved = {"plain": state, "wrapped": {"state_dict": state, "classes": CLASSES, "epoch": 3},
             "module.": {f"module.{k}": v for k, v in state.items()},
             "model.": {"model_state_dict": {f"model.{k}": v for k, v in state.items()}},
             "class_to_idx": {"state_dict": state, "class_to_idx": {"emu": 2, "cat": 0, "dog": 1}}}[shape]
    torch.save(saved, tmp_path / "model.pth")
    info = inspect_checkpoint(tmp_path / "model.pth")
    assert (info.arch, info.width_mult, info.num_classes) == (arch, width, 3)
    assert info.classes == (tuple(CLASSES) if shape in ("wrapped", "class_to_idx") else ())
    assert info.state_dict.keys() == state.keys() and info.mean == ()


def test_another_architecture_is_refused_naming_the_closest(tmp_path: Path) -> None:
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(UserError) as caught:
        inspect_checkpoint(tmp_path / "resnet.pth")
    assert "holds a resnet18" in caught.value.problem and "MobileNetV3-Small" in caught.value.problem
    assert "mobilenet_v3_large" in caught.value.fix


def test_a_modified_mobilenet_names_the_closest_and_what_differs(tmp_path: Path) -> None:
    network = torchvision.models.mobilenet_v3_large(num_classes=3, width_mult=0.5)
    network.classifier[0] = torch.nn.Linear(network.classifier[0].in_features, 300)
    network.classifier[3] = torch.nn.Linear(300, 3)
    torch.save(network.state_dict(), tmp_path / "custom.pth")
    with pytest.raises(UserError) as caught:
        inspect_checkpoint(tmp_path / "custom.pth")
    assert "closest is MobileNetV3-Large at width 0.5" in caught.value.problem
    assert "classifier.0.weight is 300x480 here but 640x480 there" in caught.value.problem


@pytest.mark.parametrize(("content", "message"), [(b"garbage", "not a readable PyTorch checkpoint"), (None, "does not exist")])
def test_unreadable_checkpoints_are_clear_errors(tmp_path: Path, content: bytes | None, message: str) -> None:
    if content is not None:
        (tmp_path / "model.pth").write_bytes(content)
    with pytest.raises(UserError, match=message):
        inspect_checkpoint(tmp_path / "model.pth")


def test_a_whole_pickled_model_is_not_unpickled(tmp_path: Path) -> None:
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=3, width_mult=0.25), tmp_path / "model.pth")
    with pytest.raises(UserError, match="whole pickled model") as caught:
        inspect_checkpoint(tmp_path / "model.pth")
    assert "state_dict()" in caught.value.fix


def test_classes_must_agree_with_the_folder(tmp_path: Path) -> None:
    state = trained_state("mobilenet_v3_small", 0.25)
    torch.save({"state_dict": state, "classes": ["dog", "cat", "emu"]}, tmp_path / "model.pth")
    info = inspect_checkpoint(tmp_path / "model.pth")
    with pytest.raises(UserError, match="classifies 3 classes, but the images in data have 2"):
        check_classes(info, ["cat", "dog"], "data")
    with pytest.raises(UserError, match="every prediction would be read as another class"):
        check_classes(info, CLASSES, "data")
    with pytest.raises(UserError, match="lacks"):
        check_classes(info, ["ant", "cat", "dog"], "data")
