"""What a study says about its data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from udacisense.common.errors import UserError
from udacisense.common.schema import bounded


@dataclass(frozen=True)
class DataConfig:
    """Data source, split and loading settings (the ``[data]`` table of a study).

    Relative paths are resolved against the directory the command runs in (the project root).
    """

    source: Literal["cifar100-household", "imagefolder"]
    root: str
    archive: str = ""
    download: bool = True
    train_per_class: int = bounded(0, min=0, doc="0 keeps every training image")
    test_per_class: int = bounded(0, min=0, doc="0 keeps every test image")
    val_per_class: int = bounded(0, min=0, doc="0 carves validation out of the training images (`val_fraction`); "
                                 "N validates on the N files per class that follow the first `train_per_class` "
                                 "in name order (CIFAR-100: dataset order), never trained on")
    val_fraction: float = bounded(0.1, min=0.01, max=0.5, doc="share of each class's training images held out for "
                                  "validation; unused when `val_per_class` > 0")
    image_size: int = bounded(32, min=8, max=512)
    batch_size: int = bounded(128, min=1, max=4096)
    eval_batch_size: int = bounded(256, min=1, max=4096)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    augment: bool = True

    def __post_init__(self) -> None:
        if (self.mean or self.std) and (len(self.mean) != 3 or len(self.std) != 3):
            raise UserError(
                "`data.mean` and `data.std` must each hold 3 numbers (R, G, B).",
                "give both as 3-element lists, or remove both to compute them from the training split.",
            )
        if any(s <= 0 for s in self.std):
            raise UserError("`data.std` holds a value <= 0.", "use positive standard deviations.")
        if self.val_per_class and not self.train_per_class:
            raise UserError(
                f"`data.val_per_class` is {self.val_per_class} but `data.train_per_class` is 0: every file is trained on, "
                "so none is left to validate on.",
                "set `data.train_per_class` to the number of training files per class (the validation files follow "
                "them), or set `data.val_per_class = 0` to hold out `data.val_fraction` of the training files.",
            )
