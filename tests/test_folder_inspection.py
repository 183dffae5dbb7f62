"""A user's image folder: classes, sizes, splits present or carved, and the bad inputs a study cannot load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from udacisense.common.errors import UserError
from udacisense.datasources.config import DataConfig
from udacisense.datasources.inspection import inspect_folder
from udacisense.datasources.loaders import load_data


def write_images(folder: Path, count: int, size: int = 24, mode: str = "RGB", start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(start, start + count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).convert(mode).save(folder / f"{i:03d}.png")


def test_split_folders_classes_and_the_most_common_size(tmp_path: Path) -> None:
    for split, count in (("train", 8), ("val", 2), ("test", 3)):
        for name in ("cat", "dog", "emu"):
            write_images(tmp_path / split / name, count)
    write_images(tmp_path / "train" / "cat", 2, size=40, start=50)  # two of another size: resized
    report = inspect_folder(tmp_path)
    assert report.classes == ("cat", "dog", "emu") and report.splits == ("train", "val", "test")
    assert report.image_size == 24 and report.resized == 2 and report.sizes[(40, 40)] == 2
    assert report.counts == {"training": (10, 8, 8), "validation": (2, 2, 2), "test": (3, 3, 3)}
    table = report.data_table()
    assert table["resize"] is True and "test_fraction" not in table
    bundle = load_data(DataConfig(**{**table, "splits": tuple(table["splits"])}), seed=0)
    assert bundle.train.images.shape[1:] == (3, 24, 24) and len(bundle.val) == 6 and len(bundle.test) == 9


def test_one_folder_per_class_is_split_the_same_way_every_run(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        write_images(tmp_path / name, 20, size=16)
    report = inspect_folder(tmp_path, test_fraction=0.2, val_fraction=0.1)
    assert report.splits == () and report.carved == ("val", "test")
    assert report.counts == {"training": (14, 14, 14), "validation": (2, 2, 2), "test": (4, 4, 4)}
    config = DataConfig(source="imagefolder", root=str(tmp_path), image_size=16, splits=(), test_fraction=0.2)
    first, second = load_data(config, seed=0), load_data(config, seed=1)
    assert first.test.sources == second.test.sources and len(first.test) == 12  # recorded, seed-independent
    assert len(first.train) + len(first.val) == 48


def test_grayscale_and_rgba_images_are_converted_to_rgb(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_images(tmp_path / "train" / name, 6, mode="L")
        write_images(tmp_path / "train" / name, 2, mode="RGBA", start=10)
    report = inspect_folder(tmp_path)
    assert report.converted == {"L": 12, "RGBA": 4}
    bundle = load_data(DataConfig(source="imagefolder", root=str(tmp_path), image_size=24, splits=("train",)), seed=0)
    assert bundle.train.images.shape[1] == 3


def test_corrupt_images_are_named_and_skipped_only_when_asked(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for name in ("a", "b"):
            write_images(tmp_path / split / name, 6 if split == "train" else 2)
    (tmp_path / "train" / "a" / "broken.jpg").write_bytes(b"not an image")
    good = (tmp_path / "train" / "b" / "000.png").read_bytes()
    (tmp_path / "train" / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError) as caught:
        inspect_folder(tmp_path)
    assert "(2 of 18)" in caught.value.problem and "broken.jpg" in caught.value.problem
    assert "truncated.png" in caught.value.problem and "skip_unreadable" in caught.value.fix
    report = inspect_folder(tmp_path, skip_unreadable=True)
    assert [p.name for p in report.unreadable] == ["broken.jpg", "truncated.png"]
    assert report.data_table()["skip_unreadable"] is True
    config = DataConfig(source="imagefolder", root=str(tmp_path), image_size=24, skip_unreadable=True)
    bundle = load_data(config, seed=0)
    assert len(bundle.train) + len(bundle.val) == 12 and len(bundle.test) == 4


def test_a_class_too_small_for_its_splits_is_refused(tmp_path: Path) -> None:
    write_images(tmp_path / "big", 20)
    write_images(tmp_path / "tiny", 2)
    with pytest.raises(UserError) as caught:
        inspect_folder(tmp_path)
    assert "'tiny' (2 images in all)" in caught.value.problem and "no training image" in caught.value.problem
    config = DataConfig(source="imagefolder", root=str(tmp_path), image_size=24, splits=())
    with pytest.raises(UserError, match="'tiny'"):
        load_data(config, seed=0)


def test_split_folders_of_different_classes_are_refused(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_images(tmp_path / "train" / name, 3)
    for name in ("a", "c"):
        write_images(tmp_path / "test" / name, 3)
    with pytest.raises(UserError, match="same class folders"):
        inspect_folder(tmp_path)
