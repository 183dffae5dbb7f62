"""torchvision's MobileNetV3-Small, optionally resizing its input inside ``forward``."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from udacisense.common.errors import UserError
from udacisense.models.config import ModelConfig


class ResizeInput(nn.Module):
    """Bilinear resize to ``size``×``size`` as the first layer, so the app can feed 32×32 images."""

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
        weights = torchvision.models.MobileNet_V3_Small_Weights.DEFAULT
    try:
        net = torchvision.models.mobilenet_v3_small(weights=weights, width_mult=config.width_mult, dropout=config.dropout)
    except Exception as error:
        if weights is None:
            raise
        raise UserError(
            f"Could not fetch torchvision's ImageNet weights for MobileNetV3-Small: {error}",
            "on an offline machine, set `model.pretrained = \"none\"` and point `model.weights_file` at a local "
            "state_dict (.pth) of the same architecture.",
        ) from None
    if net.classifier[-1].out_features != num_classes:
        net.classifier[-1] = nn.Linear(net.classifier[-1].in_features, num_classes)
    if config.weights_file:
        _load_local_weights(net, Path(config.weights_file))
    for layer in net.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.momentum = config.bn_momentum
    if config.input_resolution and config.input_resolution != image_size:
        return nn.Sequential(ResizeInput(config.input_resolution), net)
    return net


def _load_local_weights(net: nn.Module, path: Path) -> None:
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
            f"{path} does not match MobileNetV3-Small (missing {missing[:3]}, unexpected {unexpected[:3]}).",
            "use a state_dict saved from torchvision's mobilenet_v3_small with the same width_mult.",
        )
