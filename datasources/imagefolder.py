"""Any tree of images: ``root/{train,val,test}/<class>/*`` or one folder per class (``root/<class>/*``), how users
bring their own photos. Splits without a folder are carved from the training images, the same files every run."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from udacisense.common.errors import UserError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})


def check_available(root: Path, archive: str) -> None:
    """Raise when the images can be found nowhere: ``root`` is missing and no ``archive`` file would create it."""
    if root.is_dir():
        return
    if not archive:
        raise UserError(
            f"The data folder {root} does not exist.",
            "create it with train/<class>/ and test/<class>/ subfolders, fix `data.root`, "
            "or set `data.archive` to a tar.gz that holds it.",
        )
    if not Path(archive).is_file():
        raise UserError(f"The data folder {root} does not exist, and neither does the data archive {archive} "
                        "that would create it.",
                        "fix `data.root` (a folder with train/<class>/ and test/<class>/) or `data.archive` in the study file.")


def ensure_root(root: Path, archive: str) -> Path:
    """Extract ``archive`` (a tar.gz holding ``<root.name>/``) beside ``root`` if ``root`` is missing."""
    if root.is_dir():
        return root
    check_available(root, archive)
    archive_path = Path(archive)
    root.parent.mkdir(parents=True, exist_ok=True)
    # Extract into a temporary folder and rename, so an interrupted extraction is never mistaken for data.
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=".extract-") as tmp:
        try:
            with tarfile.open(archive_path, "r:*") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as error:
            raise UserError(f"Cannot extract {archive_path}: {error}.", "check that the archive is a complete tar.gz.") from None
        extracted = Path(tmp) / root.name
        if not extracted.is_dir():
            raise UserError(
                f"{archive_path} has no top-level folder `{root.name}/`.",
                "set `data.root` to <folder>/<name> where <name> is the archive's top-level folder.",
            )
        shutil.move(str(extracted), str(root))
    return root


def carve_count(count: int, fraction: float) -> int:
    """How many of a class's ``count`` images a split of ``fraction`` takes: at least one, so every class is in it."""
    return max(1, round(count * fraction))


def class_files(folder: Path) -> dict[str, list[Path]]:
    """Class name -> image files (name order) of a folder of class folders, classes in name order."""
    if not folder.is_dir():
        raise UserError(f"{folder} does not exist.", f"put the images in {folder}/<class>/.")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise UserError(f"{folder} holds {len(classes)} class folder(s).", "a classifier needs at least 2 class folders.")
    files: dict[str, list[Path]] = {}
    for name in classes:
        found = sorted(p for p in (folder / name).iterdir() if p.is_file() and not p.name.startswith("."))
        if not found:
            raise UserError(f"The class folder {folder / name} is empty.", "add images to it or remove the folder.")
        strays = [p for p in found if p.suffix.lower() not in IMAGE_SUFFIXES]
        if strays:
            raise UserError(
                f"{strays[0]} is not an image file ({len(strays)} such file(s) under {folder / name}).",
                f"remove non-image files; accepted suffixes: {', '.join(sorted(IMAGE_SUFFIXES))}.",
            )
        files[name] = found
    return files


def held_out(files: list[Path], fraction: float) -> tuple[list[Path], list[Path]]:
    """One class's files split into (kept, held out): ``carve_count`` of them, those whose names hash lowest.

    The choice depends on the file names alone, not on listing order or the machine: every run holds out the
    same files, and adding an image moves at most one other.
    """
    ranked = sorted(files, key=lambda path: hashlib.sha256(path.name.encode()).hexdigest())
    held = set(ranked[:carve_count(len(files), fraction)])
    return [p for p in files if p not in held], [p for p in files if p in held]


def split_files(root: Path, split: str, splits: Sequence[str], test_fraction: float) -> dict[str, list[Path]]:
    """Class name -> files of one split: its own folder when ``splits`` lists it; else the training files (the
    class folders at ``root`` when ``splits`` is empty), less the test files held out of them (``held_out``)
    when there is no test folder, or just those for the test split."""
    own = split in splits
    files = class_files(root / split if own else root / "train" if splits else root)
    if "test" in splits or (own and split != "train"):
        return files
    parts = {name: held_out(paths, test_fraction) for name, paths in files.items()}
    return {name: held if split == "test" else kept for name, (kept, held) in parts.items()}


def list_split(root: Path, split: str, per_class: int, *, after: int = 0, splits: Sequence[str] = ("train", "test"),
               test_fraction: float = 0.2) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted) and (file, label) pairs of one split (see ``split_files``): per class, the ``per_class``
    files (0: all) that follow the first ``after`` in name order."""
    files = split_files(root, split, splits, test_fraction)
    items = [(path, label) for label, paths in enumerate(files.values())
             for path in paths[after:after + per_class if per_class else None]]
    return list(files), items


def check_class_counts(classes: Sequence[str], counts: Mapping[str, Sequence[int]], totals: Sequence[int], fix: str) -> None:
    """Raise naming the classes that a split (split name -> images per class) holds no image of; ``totals``:
    each class's images in all, for the message."""
    for split, per_class in counts.items():
        empty = [f"{name!r} ({total} images in all)" for name, count, total in zip(classes, per_class, totals) if count == 0]
        if empty:
            raise UserError(f"{len(empty)} class(es) have no {split} image once the splits are made: {', '.join(empty[:5])}. "
                            "Each split needs at least one image of every class.", fix)


# PIL raises SyntaxError and ValueError for some damaged files (broken PNG chunks), besides OSError.
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def open_rgb(path: Path) -> Image.Image:
    """The image at ``path``, fully decoded and in RGB; raises one of ``UNREADABLE`` when it cannot be read.

    Grayscale, palette and RGBA images are converted as torchvision's ImageFolder loader converts them
    (``convert("RGB")``, alpha dropped), so pixels match those a notebook trained the user's model on.
    """
    with Image.open(path) as image:
        return image.convert("RGB")


def unreadable_error(unreadable: Sequence[tuple[Path, str]], total: int) -> UserError:
    """The error for ``unreadable`` (file, reason) pairs among ``total`` images: each of the first five named."""
    listed = "; ".join(f"{path} ({reason})" for path, reason in unreadable[:5])
    more = f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
    return UserError(f"Cannot read the image{'s' if len(unreadable) > 1 else ''} ({len(unreadable)} of {total}): {listed}{more}.",
                     "replace or remove those files, or set `data.skip_unreadable = true` to leave them out.")


@dataclass(frozen=True)
class Decoded:
    """Decoded images (uint8 N×3×H×W) and their labels, with what reading them changed or left out."""

    images: torch.Tensor
    labels: torch.Tensor
    items: list[tuple[Path, int]]  # the (file, label) pairs read, in the images' order
    resized: int  # images of another size, resized
    unreadable: tuple[Path, ...]  # files left out (``skip_unreadable``)


def read_images(items: list[tuple[Path, int]], image_size: int, *, resize: bool = False, skip_unreadable: bool = False,
                size_fix: str = "") -> Decoded:
    """Decode ``items`` to ``image_size``×``image_size``: images of another size are resized when ``resize``, else
    refused (``size_fix`` is the advice); unreadable files are left out when ``skip_unreadable``, else refused,
    every one named."""
    images = np.empty((len(items), image_size, image_size, 3), dtype=np.uint8)
    kept: list[tuple[Path, int]] = []
    unreadable: list[tuple[Path, str]] = []
    resized = 0
    for path, label in items:
        try:
            rgb = open_rgb(path)
        except UNREADABLE as error:
            unreadable.append((path, str(error) or type(error).__name__))
            continue
        if rgb.size != (image_size, image_size):
            if not resize:
                raise UserError(
                    f"{path} is {rgb.size[0]}x{rgb.size[1]} pixels, but {image_size}x{image_size} images are expected.",
                    size_fix or f"resize the images to {image_size}x{image_size}, set `data.image_size` to their size, "
                    "or set `data.resize = true` to resize the others.")
            rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
            resized += 1
        images[len(kept)] = np.asarray(rgb)
        kept.append((path, label))
    if unreadable and not skip_unreadable:
        raise unreadable_error(unreadable, len(items))
    labels = torch.tensor([label for _, label in kept], dtype=torch.long)
    pixels = torch.from_numpy(images[:len(kept)]).permute(0, 3, 1, 2).contiguous()
    return Decoded(pixels, labels, kept, resized, tuple(path for path, _ in unreadable))


def decode(items: list[tuple[Path, int]], image_size: int, size_fix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """The images as uint8 N×3×H×W and their labels, every one read and of ``image_size``; ``size_fix`` is the
    advice for an image of another size."""
    decoded = read_images(items, image_size, size_fix=size_fix)
    return decoded.images, decoded.labels
