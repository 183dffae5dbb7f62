"""Copy an image folder with every image resized to N×N pixels (PIL, bicubic); other files are copied as they are.

    .venv/bin/python scripts/upsample_folder.py SOURCE DEST --size 96

The tree (train/<class>/, one folder per class, anything) is kept. It makes a folder of larger images from a
small one (CIFAR's 32 px), to try a study at 64, 96 or 224 pixels without resizing inside the model.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def upsample_folder(source: Path, dest: Path, size: int) -> int:
    """Write every file under ``source`` to the same place under ``dest``, images resized; returns how many images."""
    count = 0
    for path in sorted(source.rglob("*")):
        target = dest / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            shutil.copy2(path, target)
            continue
        with Image.open(path) as image:
            image.resize((size, size), Image.Resampling.BICUBIC).save(target)
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--size", type=int, required=True, help="pixels, square")
    args = parser.parse_args()
    if not args.source.is_dir():
        parser.error(f"{args.source} is not a folder")
    print(f"{upsample_folder(args.source, args.dest, args.size)} images written to {args.dest} at {args.size}x{args.size}")


if __name__ == "__main__":
    main()
