"""Any ``root/{train,test}/<class>/*`` tree of images: how users bring their own photos."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

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


def list_split(root: Path, split: str, per_class: int, *, after: int = 0) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted) and (file, label) pairs: per class, the ``per_class`` files (0: all) that follow
    the first ``after`` in name order."""
    split_dir = root / split
    if not split_dir.is_dir():
        raise UserError(f"{split_dir} does not exist.", f"put the {split} images in {split_dir}/<class>/.")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise UserError(f"{split_dir} holds {len(classes)} class folder(s).", "a classifier needs at least 2 class folders.")
    items: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (split_dir / name).iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise UserError(f"The class folder {split_dir / name} is empty.", "add images to it or remove the folder.")
        strays = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        if strays:
            raise UserError(
                f"{strays[0]} is not an image file ({len(strays)} such file(s) under {split_dir / name}).",
                f"remove non-image files; accepted suffixes: {', '.join(sorted(IMAGE_SUFFIXES))}.",
            )
        items.extend((p, label) for p in files[after:after + per_class if per_class else None])
    return classes, items


def decode(items: list[tuple[Path, int]], image_size: int, size_fix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """The images as uint8 N×3×H×W and their labels; ``size_fix`` is the advice for an image of another size."""
    images = np.empty((len(items), image_size, image_size, 3), dtype=np.uint8)
    for index, (path, _) in enumerate(items):
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except (UnidentifiedImageError, OSError) as error:
            raise UserError(f"Cannot read the image {path}: {error}.", "replace or remove that file.") from None
        if rgb.size != (image_size, image_size):
            raise UserError(
                f"{path} is {rgb.size[0]}x{rgb.size[1]} pixels, but {image_size}x{image_size} images are expected.",
                size_fix or f"resize the images to {image_size}x{image_size}, or set `data.image_size` to their size.",
            )
        images[index] = np.asarray(rgb)
    labels = torch.tensor([label for _, label in items], dtype=torch.long)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels
