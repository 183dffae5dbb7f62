"""What a study says about its data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from udacisense.common.errors import UserError
from udacisense.common.schema import bounded

SplitName = Literal["train", "val", "test"]
# Fields added after baseline keys first hashed this config: left out of the key while at their defaults.
ADDED_LATER = frozenset({"splits", "test_fraction", "resize", "skip_unreadable", "val_source"})


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
    # The split folders under `root` (imagefolder): train/ (and val/, test/); () for one folder per class at `root`.
    # A split without its folder is carved from the training images: val as `val_fraction`/`val_per_class` say,
    # test as `test_fraction` of each class (the files whose names hash lowest: the same files on every run).
    splits: tuple[SplitName, ...] = ("train", "test")
    test_fraction: float = bounded(0.2, min=0.01, max=0.5, doc="share of each class's images held out for testing "
                                   "when `splits` has no test folder")
    # Where validation is carved from when there is no val/ folder: the training images, or the test split's (the
    # rest stay for testing): a model trained on every training file, as a user's is, has memorised those.
    val_source: Literal["train", "test"] = "train"
    resize: bool = False  # images of another size than `image_size` are resized to it (bilinear); false: refused
    skip_unreadable: bool = False  # unreadable images are left out (and counted); false: refused

    def key_fields(self) -> dict[str, Any]:
        """The settings as keys of trained weights hash them: fields added since keys were first made are left out
        while they hold their defaults, so adding them retrained no one's baseline."""
        defaults = {field.name: field.default for field in fields(self)}
        return {name: value for name, value in asdict(self).items()
                if name not in ADDED_LATER or value != defaults[name]}

    def __post_init__(self) -> None:
        if (self.mean or self.std) and (len(self.mean) != 3 or len(self.std) != 3):
            raise UserError(
                "`data.mean` and `data.std` must each hold 3 numbers (R, G, B).",
                "give both as 3-element lists, or remove both to compute them from the training split.",
            )
        if any(s <= 0 for s in self.std):
            raise UserError("`data.std` holds a value <= 0.", "use positive standard deviations.")
        if self.splits and "train" not in self.splits or len(set(self.splits)) != len(self.splits):
            raise UserError(f"`data.splits` is {list(self.splits)}: it must name each split folder once, train/ among them.",
                            "list the folders under `data.root` (e.g. [\"train\", \"test\"]), or [] when `data.root` "
                            "holds one folder per class.")
        if self.val_per_class and not self.train_per_class and "val" not in self.splits:
            raise UserError(
                f"`data.val_per_class` is {self.val_per_class} but `data.train_per_class` is 0: every file is trained on, "
                "so none is left to validate on.",
                "set `data.train_per_class` to the number of training files per class (the validation files follow "
                "them), or set `data.val_per_class = 0` to hold out `data.val_fraction` of the training files.",
            )
