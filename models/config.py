"""What a study says about the baseline network and where its weights come from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from udacisense.common.schema import bounded
from udacisense.training import TrainConfig

Arch = Literal["mobilenet_v3_small", "mobilenet_v3_large"]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the baseline (the ``[model]`` table)."""

    arch: Arch = "mobilenet_v3_small"
    width_mult: float = bounded(1.0, min=0.1, max=2.0)
    input_resolution: int = bounded(0, min=0, max=512, doc="0: the native data size; else resized inside the model")
    pretrained: Literal["none", "imagenet"] = "none"
    weights_file: str = ""
    dropout: float = bounded(0.2, min=0.0, max=0.9)
    # torchvision's 0.01 suits 600-epoch ImageNet runs; short CPU runs need BatchNorm statistics that
    # settle within a few hundred steps, or eval-mode accuracy stays at chance.
    bn_momentum: float = bounded(0.1, min=0.001, max=1.0)


@dataclass(frozen=True)
class BaselineConfig(TrainConfig):
    """The ``[baseline]`` table: how to train the baseline, or the user's trained checkpoint to load instead.

    The training settings still count with a checkpoint: students and fine-tunes take their schedule from them.
    """

    checkpoint: str = ""  # a .pth of the user's trained model; never retrained
