"""torchvision's MobileNetV3 (Small or Large), optionally resizing its input inside ``forward``."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.mobilenetv3 import InvertedResidual, _mobilenet_v3_conf

from udacisense.common.errors import UserError
from udacisense.models.config import Arch, ModelConfig

ARCH_NAMES: dict[Arch, str] = {"mobilenet_v3_small": "MobileNetV3-Small", "mobilenet_v3_large": "MobileNetV3-Large"}
# torchvision's builders, called as torchvision documents them (``num_classes``, ``width_mult``, ``weights``, ``dropout``).
BUILDERS = {"mobilenet_v3_small": torchvision.models.mobilenet_v3_small, "mobilenet_v3_large": torchvision.models.mobilenet_v3_large}
_IMAGENET_WEIGHTS = {"mobilenet_v3_small": torchvision.models.MobileNet_V3_Small_Weights.DEFAULT,
                     "mobilenet_v3_large": torchvision.models.MobileNet_V3_Large_Weights.DEFAULT}


def arch_of(module: nn.Module) -> Arch:
    """The architecture of an unmodified MobileNetV3 (bare, or behind an in-model resize), told by its block count.

    Only the baseline and students are asked: surgery (dropped blocks) changes the count.
    """
    blocks = sum(isinstance(layer, InvertedResidual) for layer in module.modules())
    for arch in get_args(Arch):
        if blocks == len(_mobilenet_v3_conf(arch)[0]):
            return arch
    raise UserError(f"The network has {blocks} inverted-residual blocks, which is neither MobileNetV3 architecture "
                    f"({', '.join(f'{ARCH_NAMES[a]}: {len(_mobilenet_v3_conf(a)[0])}' for a in get_args(Arch))}).",
                    "start from a baseline built by torchvision's mobilenet_v3_small or mobilenet_v3_large.")


class ResizeInput(nn.Module):
    """Bilinear resize to ``size``×``size`` as the first layer, so the app can feed its images at their own size."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}"


def build_model(config: ModelConfig, num_classes: int, image_size: int) -> nn.Module:
    """Build the (untrained, or pretrained) network described by ``config``."""
    weights = None
    if config.pretrained == "imagenet":
        if config.weights_file:
            raise UserError("`model.pretrained = \"imagenet\"` and `model.weights_file` are both set.",
                            "keep one: the downloadable ImageNet weights, or the local file.")
        weights = _IMAGENET_WEIGHTS[config.arch]
    try:
        net = BUILDERS[config.arch](weights=weights, width_mult=config.width_mult, dropout=config.dropout)
    except Exception as error:
        if weights is None:
            raise
        raise UserError(
            f"Could not fetch torchvision's ImageNet weights for {ARCH_NAMES[config.arch]}: {error}",
            "on an offline machine, set `model.pretrained = \"none\"` and point `model.weights_file` at a local "
            "state_dict (.pth) of the same architecture.",
        ) from None
    if net.classifier[-1].out_features != num_classes:
        net.classifier[-1] = nn.Linear(net.classifier[-1].in_features, num_classes)
    if config.weights_file:
        _load_local_weights(net, Path(config.weights_file), config.arch)
    for layer in net.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.momentum = config.bn_momentum
    if config.input_resolution and config.input_resolution != image_size:
        return nn.Sequential(ResizeInput(config.input_resolution), net)
    return net


def _load_local_weights(net: nn.Module, path: Path, arch: Arch) -> None:
    if not path.is_file():
        raise UserError(f"The weights file {path} does not exist.", "fix `model.weights_file` in the study file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"{path} is not a loadable PyTorch state_dict: {error}",
                        "save it with torch.save(model.state_dict(), path).") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    # A head trained for another class count (ImageNet's 1000) is dropped; the new head trains from scratch.
    classes = net.classifier[3].out_features  # type: ignore[index, union-attr]  # torchvision types the head as Module
    head = {k for k, v in state.items() if k.startswith("classifier.3.") and v.shape[0] != classes}
    state = {k: v for k, v in state.items() if k not in head}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("classifier.3.") or not head]
    if missing or unexpected:
        raise UserError(
            f"{path} does not match {ARCH_NAMES[arch]} (missing {missing[:3]}, unexpected {unexpected[:3]}).",
            f"use a state_dict saved from torchvision's {arch} with the same width_mult.",
        )
