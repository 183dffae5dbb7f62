"""Data sources on real on-disk formats: a generated CIFAR-100 archive and generated ImageFolder trees."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from udacisense.common.errors import UserError
from udacisense.datasources.cifar100 import HOUSEHOLD_CLASSES
from udacisense.datasources.config import DataConfig
from udacisense.datasources.loaders import load_data

HOUSEHOLD_FINE_INDEX = {"bed": 5, "chair": 20, "clock": 22, "couch": 25, "keyboard": 39, "lamp": 40,
                        "table": 84, "telephone": 86, "television": 87, "wardrobe": 94}


def write_cifar100_archive(root: Path, per_class: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A small ``cifar-100-python.tar.gz`` in torchvision's real format (pickled dicts, 3072-byte rows)."""
    rng = np.random.default_rng(seed)
    names = [f"other{i}" for i in range(100)]
    for name, index in HOUSEHOLD_FINE_INDEX.items():
        names[index] = name
    payloads = {}
    with tarfile.open(root / "cifar-100-python.tar.gz", "w:gz") as tar:
        def add(name: str, obj: object) -> None:
            data = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("meta", {"fine_label_names": names, "coarse_label_names": [f"c{i}" for i in range(20)]})
        for split in ("train", "test"):
            fine = np.repeat(np.arange(100), per_class)
            rng.shuffle(fine)
            data = rng.integers(0, 256, size=(len(fine), 3072), dtype=np.uint8)
            payloads[split] = (data, fine)
            add(split, {"data": data, "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(),
                        "filenames": [f"{i}.png" for i in range(len(fine))], "batch_label": split})
    return payloads


def test_cifar100_household_keeps_the_ten_classes_in_fixed_order(tmp_path: Path) -> None:
    payloads = write_cifar100_archive(tmp_path, per_class=6)
    config = DataConfig(source="cifar100-household", root=str(tmp_path), download=False, val_fraction=0.5)
    bundle = load_data(config, seed=0)
    assert bundle.classes == HOUSEHOLD_CLASSES
    assert len(bundle.train) + len(bundle.val) == 60 and len(bundle.test) == 60
    # Every kept image is byte-identical to the archive row of a household class, with the right label.
    data, fine = payloads["test"]
    rows = {bytes(row): label for row, label in zip(data, fine)}
    for image, label in zip(bundle.test.images, bundle.test.labels):
        fine_label = rows[bytes(image.numpy().reshape(-1))]
        assert HOUSEHOLD_FINE_INDEX[HOUSEHOLD_CLASSES[int(label)]] == fine_label


def test_cifar100_without_data_or_download_is_a_clear_error(tmp_path: Path) -> None:
    config = DataConfig(source="cifar100-household", root=str(tmp_path), download=False)
    with pytest.raises(UserError, match="download"):
        load_data(config, seed=0)


def write_imagefolder(root: Path, classes: dict[str, int], size: int = 32, splits=("train", "test")) -> None:
    rng = np.random.default_rng(0)
    for split in splits:
        for name, count in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def test_imagefolder_limits_split_and_stats(tmp_path: Path) -> None:
    write_imagefolder(tmp_path / "photos", {"cat": 10, "dog": 8})
    config = DataConfig(source="imagefolder", root=str(tmp_path / "photos"), train_per_class=6, test_per_class=3,
                        val_fraction=0.5)
    bundle = load_data(config, seed=1, cache_dir=tmp_path / "cache")
    assert bundle.classes == ("cat", "dog")
    assert len(bundle.train) == 6 and len(bundle.val) == 6 and len(bundle.test) == 6
    assert sorted(bundle.val.labels.tolist()) == [0, 0, 0, 1, 1, 1]  # stratified
    # The first files in name order are kept: 000.png..002.png of each class.
    first = np.array(Image.open(tmp_path / "photos/test/cat/000.png"))
    assert torch.equal(bundle.test.images[0], torch.from_numpy(first).permute(2, 0, 1))
    assert all(0.3 < m < 0.7 for m in bundle.mean)
    again = load_data(config, seed=1, cache_dir=tmp_path / "cache")
    assert torch.equal(again.val.images, bundle.val.images)  # same seed, same split, read from the cache
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


def test_train_loader_augments_and_eval_loader_does_not(tmp_path: Path) -> None:
    write_imagefolder(tmp_path / "p", {"a": 4, "b": 4})
    bundle = load_data(DataConfig(source="imagefolder", root=str(tmp_path / "p"), batch_size=8), seed=0)
    images, _ = next(iter(bundle.loader("test")))
    assert torch.allclose(images, bundle.loader("test").normalise(bundle.test.images))
    train_a = torch.cat([x for x, _ in bundle.loader("train", train=True)])
    assert train_a.shape[1:] == (3, 32, 32)
    plain = bundle.loader("train").normalise(bundle.train.images)
    assert not torch.allclose(train_a.sort(0).values, plain.sort(0).values)



def test_training_batches_are_full_and_reshuffled_so_every_image_still_trains(tmp_path: Path) -> None:
    write_imagefolder(tmp_path / "p", {"a": 10, "b": 9})
    bundle = load_data(DataConfig(source="imagefolder", root=str(tmp_path / "p"), batch_size=4, augment=False), seed=0)
    n = len(bundle.train)
    assert n % 4 and n // 4 == 4  # four full batches of 4 and a few images left over
    train = bundle.loader("train", train=True)
    epochs = [[labels for _, labels in train] for _ in range(8)]
    assert len(train) == 4 and all(len(epoch) == 4 and all(len(b) == 4 for b in epoch) for epoch in epochs)
    # Each epoch leaves out different images: over a few epochs all of them trained.
    trained = torch.cat([images for _ in range(8) for images, _ in train])
    plain = train.normalise(bundle.train.images)
    assert all(any(torch.equal(row, image) for row in trained) for image in plain)
    # Evaluation keeps every image, and a split smaller than one batch still trains.
    assert sum(len(labels) for _, labels in bundle.loader("train")) == n
    small = load_data(DataConfig(source="imagefolder", root=str(tmp_path / "p"), batch_size=64), seed=0)
    assert sum(len(labels) for _, labels in small.loader("train", train=True)) == n

@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: None, "does not exist"),
        (lambda root: (root / "train/cat").mkdir(parents=True), "at least 2 class folders"),
        (lambda root: (write_imagefolder(root, {"cat": 2, "dog": 2}), (root / "train/cat/notes.txt").write_text("x")),
         "is not an image file"),
        (lambda root: (write_imagefolder(root, {"cat": 2, "dog": 2}), (root / "train/emu").mkdir()), "is empty"),
        (lambda root: write_imagefolder(root, {"cat": 2, "dog": 2}, size=40), "40x40 pixels"),
        (lambda root: (write_imagefolder(root, {"cat": 2, "dog": 2}), (root / "train/cat/bad.jpg").write_bytes(b"no")),
         "Cannot read the image"),
    ],
)
def test_bad_data_folders_are_clear_errors(tmp_path: Path, setup, message: str) -> None:
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(UserError, match=message) as caught:
        load_data(DataConfig(source="imagefolder", root=str(root)), seed=0)
    assert caught.value.fix


def test_archive_is_extracted_once_into_root(tmp_path: Path) -> None:
    write_imagefolder(tmp_path / "src" / "pics", {"a": 2, "b": 2})
    archive = tmp_path / "pics.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "pics", arcname="pics")
    root = tmp_path / "data" / "pics"
    bundle = load_data(DataConfig(source="imagefolder", root=str(root), archive=str(archive), val_fraction=0.5), seed=0)
    assert bundle.classes == ("a", "b") and (root / "train" / "a").is_dir()
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".extract-")]


def decoded(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)


def rows(images: torch.Tensor) -> set[bytes]:
    return {bytes(image.numpy().reshape(-1)) for image in images}


def test_held_out_validation_reads_the_files_after_the_training_files(tmp_path: Path) -> None:
    write_imagefolder(tmp_path / "photos", {"cat": 10, "dog": 8})
    root = tmp_path / "photos"
    held_out = DataConfig(source="imagefolder", root=str(root), train_per_class=4, val_per_class=3, val_fraction=0.5)
    bundle = load_data(held_out, seed=1, cache_dir=tmp_path / "cache")
    assert len(bundle.train) == 8 and len(bundle.val) == 6  # val_fraction unused: nothing carved out of train
    assert bundle.val.labels.tolist() == [0, 0, 0, 1, 1, 1]
    files = {name: sorted((root / "train" / name).iterdir()) for name in ("cat", "dog")}
    assert rows(bundle.train.images) == rows(torch.stack([decoded(p) for name in files for p in files[name][:4]]))
    assert rows(bundle.val.images) == rows(torch.stack([decoded(p) for name in files for p in files[name][4:7]]))
    assert not rows(bundle.train.images) & rows(bundle.val.images)
    # The cache tells validation sets apart by val_per_class; train and test are read from their own entries.
    again = load_data(held_out, seed=1, cache_dir=tmp_path / "cache")
    assert torch.equal(again.val.images, bundle.val.images)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 3
    fewer = load_data(DataConfig(source="imagefolder", root=str(root), train_per_class=4, val_per_class=2), seed=1,
                      cache_dir=tmp_path / "cache")
    assert rows(fewer.val.images) < rows(bundle.val.images) and len(fewer.val) == 4
    # The default still carves val_fraction out of the training files.
    carved = load_data(DataConfig(source="imagefolder", root=str(root), train_per_class=4, val_fraction=0.5), seed=1)
    assert len(carved.train) == len(carved.val) == 4
    assert rows(carved.train.images) | rows(carved.val.images) == rows(bundle.train.images)


def test_held_out_validation_needs_files_beyond_the_training_ones(tmp_path: Path) -> None:
    write_imagefolder(tmp_path / "photos", {"cat": 10, "dog": 8, "emu": 3})
    config = DataConfig(source="imagefolder", root=str(tmp_path / "photos"), train_per_class=4, val_per_class=5)
    with pytest.raises(UserError, match=r"= 9 training files per class, but 2 of 3 classes have fewer \('dog' 8, 'emu' at most 4\)"):
        load_data(config, seed=0)
    with pytest.raises(UserError, match="every file is trained on") as caught:
        DataConfig(source="imagefolder", root=str(tmp_path / "photos"), val_per_class=5)
    assert "train_per_class" in caught.value.fix


def test_cifar100_held_out_validation_follows_the_training_images_in_dataset_order(tmp_path: Path) -> None:
    payloads = write_cifar100_archive(tmp_path, per_class=6)
    config = DataConfig(source="cifar100-household", root=str(tmp_path), download=False, train_per_class=2, val_per_class=3)
    bundle = load_data(config, seed=0)
    assert len(bundle.train) == 20 and len(bundle.val) == 30
    assert torch.bincount(bundle.val.labels).tolist() == [3] * 10
    data, fine = payloads["train"]
    order = {name: [row for row, label in zip(data, fine) if label == index] for name, index in HOUSEHOLD_FINE_INDEX.items()}
    assert rows(bundle.train.images) == {bytes(row) for name in order for row in order[name][:2]}
    assert rows(bundle.val.images) == {bytes(row) for name in order for row in order[name][2:5]}
    with pytest.raises(UserError, match=r"needs 5 \(`data.train_per_class`\) \+ 3"):
        load_data(DataConfig(source="cifar100-household", root=str(tmp_path), download=False, train_per_class=5,
                             val_per_class=3), seed=0)
