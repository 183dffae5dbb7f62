"""Decoded, cached image tensors and the batch loaders every training and evaluation loop uses.

Images are decoded once into uint8 tensors (cached on disk, keyed by what was read), so epochs
never re-decode JPEGs; augmentation runs on whole batches of tensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from udacisense.common.errors import UserError
from udacisense.common.files import save_torch
from udacisense.datasources import cifar100, imagefolder
from udacisense.datasources.config import ADDED_LATER, DataConfig

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8, N×3×H×W
    labels: torch.Tensor  # int64, N
    # Where each image was read, so that a model card can say which images it was checked on: a path
    # relative to the data root (imagefolder) or the index in the original split (CIFAR-100). Kept on
    # a source's splits and the parts carved from them; empty for sampled splits and in-memory images.
    sources: tuple[str | int, ...] = ()

    def __len__(self) -> int:
        return int(self.labels.numel())


class BatchLoader:
    """Iterates (normalised float images, labels) batches; reshuffles each epoch from a seeded generator.

    ``drop_last`` leaves out a trailing batch smaller than ``batch_size`` (when there is a full one): in train mode
    BatchNorm normalises with that batch's statistics, and where a network has downsampled 32-pixel images to
    1x1 a batch of two gives each channel two values to normalise with. One such step threw a MobileNetV3-Large
    fine-tune at lr 0.005 from 59% to anywhere between 14% and 55% in its first epoch, and every such run
    stayed at 59% without that batch. Reshuffling each epoch leaves out different images each time.
    """

    def __init__(self, split: Split, batch_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 *, shuffle: bool, augment: bool, seed: int, limit: int = 0, drop_last: bool = False) -> None:
        self.split = split if not limit else Split(split.images[:limit], split.labels[:limit])
        self.batch_size = batch_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.shuffle = shuffle
        self.augment = augment
        self.drop_last = drop_last
        self._generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (self._used() + self.batch_size - 1) // self.batch_size

    def _used(self) -> int:
        """How many images an epoch yields: all, or with ``drop_last`` the full batches' (all if none is full)."""
        n = len(self.split)
        return n - n % self.batch_size if self.drop_last and n >= self.batch_size else n

    @property
    def num_samples(self) -> int:
        return len(self.split)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float().div_(255.0) - self.mean) / self.std

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        # Random crop with 4-pixel reflect padding, then horizontal flip: the standard CIFAR recipe.
        n, _, h, w = images.shape
        padded = torch.nn.functional.pad(images, (4, 4, 4, 4), mode="reflect")
        dx = torch.randint(0, 9, (n,), generator=self._generator)
        dy = torch.randint(0, 9, (n,), generator=self._generator)
        rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1).expand(n, 3, h, w + 8)
        cropped = padded.gather(2, rows)
        cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w).expand(n, 3, h, w)
        cropped = cropped.gather(3, cols)
        flip = torch.rand(n, generator=self._generator) < 0.5
        cropped[flip] = cropped[flip].flip(3)
        return cropped

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.split)
        order = torch.randperm(n, generator=self._generator) if self.shuffle else torch.arange(n)
        for start in range(0, self._used(), self.batch_size):
            index = order[start:start + self.batch_size]
            images = self.normalise(self.split.images[index])
            if self.augment:
                images = self._augment(images)
            yield images.contiguous(), self.split.labels[index]


@dataclass(frozen=True)
class DataBundle:
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    mean: tuple[float, ...]
    std: tuple[float, ...]
    config: DataConfig
    seed: int

    def loader(self, split: str, *, train: bool = False, limit: int = 0, seed_offset: int = 0) -> BatchLoader:
        """``train=True`` gives shuffled, augmented batches; otherwise a fixed-order evaluation pass."""
        data = {"train": self.train, "val": self.val, "test": self.test}[split]
        return BatchLoader(
            data,
            self.config.batch_size if train else self.config.eval_batch_size,
            self.mean, self.std,
            shuffle=train, augment=train and self.config.augment, seed=self.seed + seed_offset, limit=limit,
            drop_last=train,
        )

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.config.image_size, self.config.image_size)


def _selection(config: DataConfig, split: str) -> tuple[str, int, int]:
    """The original split that ``split`` is read from, how many images per class, and after how many."""
    if split == "val" and "val" in config.splits and config.source == "imagefolder":
        return "val", config.val_per_class, 0
    if split == "val":  # held-out files: the ones that follow the training files, never trained on
        return "train", config.val_per_class, config.train_per_class
    return split, config.train_per_class if split == "train" else config.test_per_class, 0


def _read_source(config: DataConfig, split: str) -> tuple[tuple[str, ...], Split]:
    """Decode one split (train, test, or a held-out val) from the original files."""
    root = Path(config.root)
    source_split, per_class, after = _selection(config, split)
    if config.source == "cifar100-household":
        root.mkdir(parents=True, exist_ok=True)
        images, labels, indices = cifar100.load_household(root, source_split, config.download, per_class, after=after)
        return cifar100.HOUSEHOLD_CLASSES, Split(images, labels, tuple(indices))
    root = imagefolder.ensure_root(root, config.archive)
    # The val split reads its own folder, or the training files after those trained on.
    wanted = "val" if source_split == "val" else split
    classes, items = imagefolder.list_split(root, wanted, per_class, after=after, splits=config.splits,
                                            test_fraction=config.test_fraction)
    decoded = imagefolder.read_images(items, config.image_size, resize=config.resize, skip_unreadable=config.skip_unreadable)
    if decoded.resized or decoded.unreadable:
        _log.warning("%s split of %s: %d images resized to %dx%d, %d unreadable left out%s", split, root, decoded.resized,
                     config.image_size, config.image_size, len(decoded.unreadable),
                     f" (first: {decoded.unreadable[0]})" if decoded.unreadable else "")
    return tuple(classes), Split(decoded.images, decoded.labels,
                                 tuple(path.relative_to(root).as_posix() for path, _ in decoded.items))


def check_available(config: DataConfig) -> None:
    """Raise when the study's images can be found nowhere (no folder, archive or download); reads and writes nothing."""
    if config.source == "cifar100-household":
        cifar100.check_available(Path(config.root), config.download)
    else:
        imagefolder.check_available(Path(config.root), config.archive)


def _fingerprint(config: DataConfig, split: str) -> str:
    """Identifies the decoded tensors: the config plus the names, sizes and times of the source files."""
    root = Path(config.root).resolve()
    # val_per_class decides only the held-out split: the train and test keys stay what they were before it existed.
    held_out = [config.val_per_class] if split == "val" else []
    # Likewise the settings added later count only when set: the keys of earlier studies stay what they were.
    added = [[name, value] for name, value in config.key_fields().items() if name in ADDED_LATER]
    hasher = hashlib.sha256(json.dumps([config.source, str(root), split, config.train_per_class,
                                        config.test_per_class, config.image_size, *held_out, *added]).encode())
    base = root / (cifar100.FOLDER_NAME if config.source == "cifar100-household" else _source_folder(config, split))
    if base.is_dir():
        for path in sorted(base.rglob("*")):
            if path.is_file():
                stat = path.stat()
                hasher.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    else:
        return ""
    return hasher.hexdigest()[:20]


def _source_folder(config: DataConfig, split: str) -> str:
    """The folder under an imagefolder root whose files a split is read from ("": the class folders at the root)."""
    source = _selection(config, split)[0]
    return source if source in config.splits else "train" if config.splits else ""


def _cached_split(config: DataConfig, split: str, cache_dir: Path | None) -> tuple[tuple[str, ...], Split]:
    key = _fingerprint(config, split) if cache_dir else ""
    cache_file = cache_dir / f"{split}-{key}.pt" if cache_dir and key else None
    if cache_file and cache_file.is_file():
        try:
            payload = torch.load(cache_file, weights_only=True)
            return tuple(payload["classes"]), Split(payload["images"], payload["labels"], tuple(payload["sources"]))
        except Exception:  # a damaged cache (or one from before sources were kept) is rebuilt, never trusted
            cache_file.unlink(missing_ok=True)
    classes, data = _read_source(config, split)
    if cache_dir:
        key = key or _fingerprint(config, split)
        if key:
            save_torch(cache_dir / f"{split}-{key}.pt",
                       {"classes": list(classes), "images": data.images, "labels": data.labels, "sources": list(data.sources)})
    return classes, data


def stratified_split(data: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Carve a validation set holding ``fraction`` of every class, with a fixed seed."""
    generator = torch.Generator().manual_seed(seed)
    val_index: list[torch.Tensor] = []
    for label in data.labels.unique():
        members = (data.labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        val_index.append(members[: imagefolder.carve_count(len(members), fraction)])
    val_mask = torch.zeros(len(data), dtype=torch.bool)
    val_mask[torch.cat(val_index)] = True

    def part(mask: torch.Tensor) -> Split:
        # Sources survive carving: a test split with its validation carved out still lists the files it holds.
        return Split(data.images[mask], data.labels[mask], tuple(s for s, kept in zip(data.sources, mask.tolist()) if kept))

    return part(~val_mask), part(val_mask)


def stratified_sample(data: Split, count: int, seed: int) -> Split:
    """``count`` samples drawn class by class in turn (each class shuffled with ``seed``), in shuffled order.

    Splits are stored sorted by class, so their first samples are a few classes only; this sample
    holds every class as evenly as ``count`` allows.
    """
    generator = torch.Generator().manual_seed(seed)
    per_class = [members[torch.randperm(len(members), generator=generator)]
                 for members in ((data.labels == label).nonzero().flatten() for label in data.labels.unique())]
    longest = max((len(m) for m in per_class), default=0)
    interleaved = [m[i] for i in range(longest) for m in per_class if i < len(m)][:count]
    index = torch.stack(interleaved)[torch.randperm(len(interleaved), generator=generator)] if interleaved \
        else torch.zeros(0, dtype=torch.long)
    return Split(data.images[index], data.labels[index])


def channel_stats(data: Split) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pixels = data.images.float().div(255.0).permute(1, 0, 2, 3).reshape(3, -1)
    return tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).tolist())


def _check_held_out(val: Split, classes: tuple[str, ...], config: DataConfig) -> None:
    """Every class must have ``val_per_class`` files after its training files."""
    counts = torch.bincount(val.labels, minlength=len(classes)).tolist()
    # A class with none left may hold fewer than train_per_class files: only that bound is known.
    short = [f"{name!r} {config.train_per_class + count if count else f'at most {config.train_per_class}'}"
             for name, count in zip(classes, counts) if count < config.val_per_class]
    if short:
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        raise UserError(
            f"Validating on files never trained on needs {config.train_per_class} (`data.train_per_class`) + "
            f"{config.val_per_class} (`data.val_per_class`) = {config.train_per_class + config.val_per_class} "
            f"training files per class, but {len(short)} of {len(classes)} classes have fewer "
            f"({', '.join(short[:5])}{more}).",
            "lower `data.val_per_class` or `data.train_per_class` to fit the smallest class, or set "
            "`data.val_per_class = 0` to hold out `data.val_fraction` of the training files instead.",
        )


def _check_every_class(classes: tuple[str, ...], splits: dict[str, Split]) -> None:
    """Every split holds every class: a class carved out of existence would be trained or measured on nothing."""
    counts = {name: torch.bincount(split.labels, minlength=len(classes)).tolist() for name, split in splits.items()}
    imagefolder.check_class_counts(
        classes, counts, [sum(per_split) for per_split in zip(*counts.values())],
        "add images to those classes, remove their folders, or lower `data.val_fraction` / `data.test_fraction` "
        "(a carved split takes at least one image of each class).")


def load_data(config: DataConfig, seed: int, cache_dir: Path | None = None) -> DataBundle:
    """Load train/val/test for a study: val is read from its own folder, or carved from train, or with
    ``val_per_class`` read from the training files after those trained on; test is the original test split, or
    held out of the training files (``data.splits`` without test)."""
    classes, train_full = _cached_split(config, "train", cache_dir)
    test_classes, test = _cached_split(config, "test", cache_dir)
    if test_classes != classes:
        raise UserError(
            f"The train and test splits have different classes ({list(classes)} vs {list(test_classes)}).",
            "give both splits the same class folders.",
        )
    if train_full.images.shape[-1] != config.image_size:
        raise UserError(
            f"The images are {train_full.images.shape[-1]} pixels wide but `data.image_size` is {config.image_size}.",
            f"set `data.image_size = {train_full.images.shape[-1]}`.",
        )
    if _selection(config, "val")[0] == "val":  # a val/ folder of its own
        train = train_full
        val_classes, val = _cached_split(config, "val", cache_dir)
        if val_classes != classes:
            raise UserError(f"The train and val splits have different classes ({list(classes)} vs {list(val_classes)}).",
                            "give both splits the same class folders.")
    elif config.val_per_class:
        train = train_full
        _, val = _cached_split(config, "val", cache_dir)  # the same class folders as train: read from them
        _check_held_out(val, classes, config)
    elif config.val_source == "test":
        train = train_full
        test, val = stratified_split(test, config.val_fraction, seed)
    else:
        train, val = stratified_split(train_full, config.val_fraction, seed)
    _check_every_class(classes, {"training": train, "validation": val, "test": test})
    mean, std = (config.mean, config.std) if config.mean else channel_stats(train)
    return DataBundle(classes, train, val, test, tuple(mean), tuple(std), config, seed)
