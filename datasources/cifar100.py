"""CIFAR-100 restricted to its 10 household classes, in torchvision's on-disk format.

torchvision downloads and verifies the archive for real users; reading the extracted pickles
here (the same format torchvision reads) lets the tests exercise this path on small archives.
"""

from __future__ import annotations

import pickle
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from udacisense.common.errors import UserError

# The fixed label order: alphabetical, as the app team's label file lists them.
HOUSEHOLD_CLASSES: tuple[str, ...] = (
    "bed", "chair", "clock", "couch", "keyboard", "lamp", "table", "telephone", "television", "wardrobe",
)
ARCHIVE_NAME = "cifar-100-python.tar.gz"
FOLDER_NAME = "cifar-100-python"


def _extracted(root: Path) -> bool:
    folder = root / FOLDER_NAME
    return (folder / "train").is_file() and (folder / "test").is_file() and (folder / "meta").is_file()


def check_available(root: Path, download: bool) -> None:
    """Raise when CIFAR-100 can be found nowhere: neither extracted nor archived in ``root``, and no download."""
    if _extracted(root) or (root / ARCHIVE_NAME).is_file() or download:
        return
    raise UserError(
        f"CIFAR-100 is not in {root} (looked for `{FOLDER_NAME}/` and `{ARCHIVE_NAME}`), and `data.download` is false.",
        "set `data.download = true`, or copy the CIFAR-100 python archive into that folder.",
    )


def _ensure_extracted(root: Path, download: bool) -> Path:
    folder = root / FOLDER_NAME
    if _extracted(root):
        return folder
    check_available(root, download)
    archive = root / ARCHIVE_NAME
    if archive.is_file():
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(root, filter="data")
    else:  # check_available let it through: `data.download` is set
        from torchvision.datasets import CIFAR100

        try:
            CIFAR100(str(root), train=True, download=True)
        except Exception as error:  # network errors come in many types
            raise UserError(
                f"Could not download CIFAR-100 into {root}: {error}",
                f"place `{ARCHIVE_NAME}` (or the extracted `{FOLDER_NAME}/`) in {root}, "
                "or run where https://www.cs.toronto.edu is reachable.",
            ) from None
    return _ensure_extracted(root, download=False)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError) as error:
        raise UserError(f"{path} is not a readable CIFAR-100 file: {error}.",
                        "delete the folder and let the tool download it again.") from None


def _read_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """Every image of an extracted original split (uint8 N×3×32×32), its fine labels, and the household label of each
    household fine label."""
    fine_names = list(_unpickle(folder / "meta")["fine_label_names"])
    missing = [c for c in HOUSEHOLD_CLASSES if c not in fine_names]
    if missing:
        raise UserError(f"{folder / 'meta'} lacks the classes {missing}.", "re-download CIFAR-100.")
    fine_to_household = {fine_names.index(name): i for i, name in enumerate(HOUSEHOLD_CLASSES)}
    entry = _unpickle(folder / split)
    return np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(entry["fine_labels"]), fine_to_household


def load_household(root: Path, split: str, download: bool, per_class: int, *,
                   after: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Return (uint8 images N×3×32×32, labels 0..9, their indices in the original split) for one original split:
    per class, the ``per_class`` images (0: all) that follow the first ``after`` in dataset order."""
    data, fine, fine_to_household = _read_split(_ensure_extracted(root, download), split)
    keep: list[int] = []
    seen = {label: 0 for label in fine_to_household}
    for index, label in enumerate(fine):
        if label in fine_to_household:
            if seen[label] >= after and (per_class == 0 or seen[label] < after + per_class):
                keep.append(index)
            seen[label] += 1
    labels = torch.tensor([fine_to_household[int(fine[i])] for i in keep], dtype=torch.long)
    return torch.from_numpy(data[keep].copy()), labels, keep


def read_images(root: Path, split: str, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The images at ``indices`` of an original split and their labels (0..9), read from an extracted ``root``:
    nothing is extracted, downloaded or written."""
    if not _extracted(root):
        raise UserError(f"CIFAR-100 is not extracted in {root} (looked for `{FOLDER_NAME}/` with its train, test and meta files).",
                        f"pass torchvision's CIFAR-100 root, the folder that holds `{FOLDER_NAME}/` (extract "
                        f"`{ARCHIVE_NAME}` there if you only have the archive).")
    data, fine, fine_to_household = _read_split(root / FOLDER_NAME, split)
    outside = [i for i in indices if not 0 <= i < len(fine) or int(fine[i]) not in fine_to_household]
    if outside:
        raise UserError(f"{len(outside)} of the {len(indices)} listed indices are not household images of CIFAR-100's "
                        f"{split} split in {root} (first: {outside[0]}).",
                        f"pass the root of the original CIFAR-100 (torchvision's), the folder that holds `{FOLDER_NAME}/`.")
    labels = torch.tensor([fine_to_household[int(fine[i])] for i in indices], dtype=torch.long)
    return torch.from_numpy(data[list(indices)].copy()), labels
