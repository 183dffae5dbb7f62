"""What a user's image folder holds, read before any study exists: classes, image sizes, splits, bad files.

``inspect_folder`` reads every image once (headers lie about truncated files) and reports what the
study's ``[data]`` table must say to load the folder as it is (``FolderReport.data_table``), or
raises a UserError for what no setting can fix.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from PIL import Image

from udacisense.common.errors import UserError
from udacisense.datasources import imagefolder
from udacisense.datasources.config import SplitName


@dataclass(frozen=True)
class FolderReport:
    """One image folder as the tool will read it (see ``inspect_folder``)."""

    root: Path
    classes: tuple[str, ...]
    splits: tuple[SplitName, ...]  # the split folders present; () when ``root`` holds one folder per class
    image_size: int  # the side of the most common size: the size the study runs at
    sizes: dict[tuple[int, int], int]  # images of each (width, height)
    resized: int  # images of another size than ``image_size``×``image_size``, resized when loaded
    converted: dict[str, int]  # images of each PIL mode other than RGB (grayscale "L", "RGBA", "P"...), converted to RGB
    unreadable: tuple[Path, ...]  # files that cannot be read (left out: only reported when asked to skip them)
    counts: dict[str, tuple[int, ...]]  # images of each class in each split once the missing splits are carved
    test_fraction: float
    val_fraction: float

    @property
    def carved(self) -> tuple[str, ...]:
        """The splits that have no folder and are carved from the training images (the same files every run)."""
        return tuple(split for split in ("val", "test") if split not in self.splits)

    def data_table(self) -> dict[str, Any]:
        """The ``[data]`` settings that load this folder as reported."""
        table: dict[str, Any] = {"source": "imagefolder", "root": str(self.root), "image_size": self.image_size,
                                 "splits": list(self.splits), "val_fraction": self.val_fraction}
        if "test" not in self.splits:
            table["test_fraction"] = self.test_fraction
        if self.resized:
            table["resize"] = True
        if self.unreadable:
            table["skip_unreadable"] = True
        return table


def split_folders(root: Path) -> tuple[SplitName, ...]:
    """The split folders under ``root`` (train/ among them), or () when ``root`` holds one folder per class."""
    if not root.is_dir():
        raise UserError(f"The data folder {root} does not exist.", "pass a folder with train/<class>/ (and test/, val/) "
                        "subfolders, or with one folder of images per class.")
    present = tuple(split for split in get_args(SplitName) if (root / split).is_dir())
    if present and "train" not in present:
        raise UserError(f"{root} has {', '.join(f'{s}/' for s in present)} but no train/ folder.",
                        f"put the training images in {root / 'train'}/<class>/.")
    return present


def _read_headers(paths: list[Path]) -> tuple[Counter[tuple[int, int]], Counter[str], list[tuple[Path, str]]]:
    """Sizes and modes of the readable images, and the unreadable files with their reasons: every image is decoded."""
    sizes: Counter[tuple[int, int]] = Counter()
    modes: Counter[str] = Counter()
    unreadable: list[tuple[Path, str]] = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
                sizes[image.size] += 1
                modes[image.mode] += 1
        except imagefolder.UNREADABLE as error:
            unreadable.append((path, str(error) or type(error).__name__))
    return sizes, modes, unreadable


def inspect_folder(root: Path, *, test_fraction: float = 0.2, val_fraction: float = 0.1,
                   skip_unreadable: bool = False) -> FolderReport:
    """Read every image under ``root`` and report classes, sizes, splits and per-class counts.

    Missing splits are carved as ``load_data`` carves them: test as ``test_fraction`` of each class, val as
    ``val_fraction`` of the training images. UserError for split folders of different classes, unreadable
    images (unless ``skip_unreadable``), and a class left without an image in some split.
    """
    splits = split_folders(root)
    # Split name ("": the class folders at the root) -> class -> files.
    folders: dict[str, dict[str, list[Path]]] = {split: imagefolder.class_files(root / split) for split in splits}
    folders = folders or {"": imagefolder.class_files(root)}
    classes = tuple(next(iter(folders.values())))
    for split, files in folders.items():
        if tuple(files) != classes:
            raise UserError(f"{root / split} has the classes {list(files)}, but {root / 'train'} has {list(classes)}.",
                            "give every split folder the same class folders.")
    paths = [path for files in folders.values() for class_paths in files.values() for path in class_paths]
    sizes, modes, unreadable = _read_headers(paths)
    if unreadable and not skip_unreadable:
        raise imagefolder.unreadable_error(unreadable, len(paths))
    if not sizes:
        raise UserError(f"None of the {len(paths)} images under {root} can be read.", "check that they are image files.")
    (width, height), _ = sizes.most_common(1)[0]
    side = max(width, height)
    skipped = {path for path, _ in unreadable}
    counts = _split_counts(root, splits, test_fraction, val_fraction, skipped)
    imagefolder.check_class_counts(
        classes, counts, [sum(per_split) for per_split in zip(*counts.values())],
        f"add images to those classes or remove their folders{'' if splits == ('train', 'val', 'test') else ', or lower the fraction carved'}"
        " (a carved split takes at least one image of each class).")
    return FolderReport(root, classes, splits, side, dict(sizes), sum(n for size, n in sizes.items() if size != (side, side)),
                        {mode: n for mode, n in modes.items() if mode != "RGB"}, tuple(sorted(skipped)), counts,
                        test_fraction, val_fraction)


def _split_counts(root: Path, splits: tuple[SplitName, ...], test_fraction: float, val_fraction: float,
                  skipped: set[Path]) -> dict[str, tuple[int, ...]]:
    """Images per class in the training, validation and test splits, as ``load_data`` forms them."""
    def per_class(split: str) -> list[int]:
        files = imagefolder.split_files(root, split, splits, test_fraction)
        return [len([p for p in paths if p not in skipped]) for paths in files.values()]

    pool = per_class("train")
    val = per_class("val") if "val" in splits else [imagefolder.carve_count(n, val_fraction) if n else 0 for n in pool]
    train = pool if "val" in splits else [n - v for n, v in zip(pool, val)]
    return {"training": tuple(train), "validation": tuple(val), "test": tuple(per_class("test"))}
