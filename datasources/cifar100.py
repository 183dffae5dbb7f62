"""CIFAR-100 restricted to its 10 household classes, in torchvision's on-disk format.

torchvision downloads and verifies the archive for real users; reading the extracted pickles
here (the same format torchvision reads) lets the tests exercise this path on small archives.
"""

from __future__ import annotations

import pickle
import tarfile
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


def _ensure_extracted(root: Path, download: bool) -> Path:
    folder = root / FOLDER_NAME
    if (folder / "train").is_file() and (folder / "test").is_file() and (folder / "meta").is_file():
        return folder
    archive = root / ARCHIVE_NAME
    if archive.is_file():
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(root, filter="data")
        return _ensure_extracted(root, download=False)
    if download:
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
    raise UserError(
        f"CIFAR-100 is not in {root} (looked for `{FOLDER_NAME}/` and `{ARCHIVE_NAME}`), and `data.download` is false.",
        "set `data.download = true`, or copy the CIFAR-100 python archive into that folder.",
    )


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError) as error:
        raise UserError(f"{path} is not a readable CIFAR-100 file: {error}.",
                        "delete the folder and let the tool download it again.") from None


def load_household(root: Path, split: str, download: bool, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (uint8 images N×3×32×32, labels 0..9) for one original split."""
    folder = _ensure_extracted(root, download)
    fine_names = list(_unpickle(folder / "meta")["fine_label_names"])
    missing = [c for c in HOUSEHOLD_CLASSES if c not in fine_names]
    if missing:
        raise UserError(f"{folder / 'meta'} lacks the classes {missing}.", "re-download CIFAR-100.")
    fine_to_household = {fine_names.index(name): i for i, name in enumerate(HOUSEHOLD_CLASSES)}
    entry = _unpickle(folder / split)
    data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    fine = np.asarray(entry["fine_labels"])
    keep: list[int] = []
    taken = {label: 0 for label in fine_to_household}
    for index, label in enumerate(fine):
        if label in fine_to_household and (per_class == 0 or taken[label] < per_class):
            keep.append(index)
            taken[label] += 1
    labels = torch.tensor([fine_to_household[int(fine[i])] for i in keep], dtype=torch.long)
    return torch.from_numpy(data[keep].copy()), labels
