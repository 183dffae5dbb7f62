"""Shared fixtures: tiny but real data and models, so every test runs real computations in seconds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from udacisense.datasources.config import DataConfig
from udacisense.datasources.loaders import DataBundle, Split, channel_stats, stratified_split
from udacisense.runtime import request_executorch_threads

REPO = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"



def cli_command(*args: str) -> list[str]:
    """``udacisense ARGS`` as a subprocess of this interpreter. It inherits this run's environment, so it
    imports ``udacisense`` from the same place as the tests: the installed package or a PYTHONPATH entry."""
    return [sys.executable, "-m", "udacisense.search.cli", *args]


# One thread: the machines are shared and small; more threads mostly add contention. The XNNPACK
# pool must be sized before the first ExecuTorch program of the session loads.
torch.set_num_threads(1)
request_executorch_threads(1)


def make_pattern_images(per_class: int, classes: int, size: int, seed: int, noise_seed: int) -> Split:
    """Images whose class sets a colour and a stripe orientation: learnable within a few epochs.

    ``seed`` fixes each class's look; ``noise_seed`` draws the samples (same classes, new images).
    """
    generator = torch.Generator().manual_seed(seed)
    noise = torch.Generator().manual_seed(noise_seed)
    images, labels = [], []
    grid = torch.arange(size).float()
    for label in range(classes):
        colour = torch.rand(3, 1, 1, generator=generator) * 200 + 30
        angle = label * 3.14159 / classes
        stripes = torch.sin((grid.view(-1, 1) * torch.cos(torch.tensor(angle)) + grid.view(1, -1) * torch.sin(torch.tensor(angle))) / 2)
        for _ in range(per_class):
            jitter = torch.randn(3, size, size, generator=noise) * 25
            image = colour + 40 * stripes + jitter
            images.append(image.clamp(0, 255).to(torch.uint8))
            labels.append(label)
    return Split(torch.stack(images), torch.tensor(labels))


def make_bundle(per_class: int = 24, classes: int = 4, size: int = 32, seed: int = 0) -> DataBundle:
    train_full = make_pattern_images(per_class, classes, size, seed, noise_seed=seed)
    test = make_pattern_images(max(4, per_class // 3), classes, size, seed, noise_seed=seed + 1)
    train, val = stratified_split(train_full, 0.2, seed)
    mean, std = channel_stats(train)
    config = DataConfig(source="imagefolder", root="unused", image_size=size, batch_size=16, eval_batch_size=32)
    return DataBundle(tuple(f"class{i}" for i in range(classes)), train, val, test, mean, std, config, seed)


@pytest.fixture(scope="session")
def tiny_bundle() -> DataBundle:
    return make_bundle()


@pytest.fixture()
def tiny_model():
    """A narrow MobileNetV3-Small (real architecture: SE blocks, hardswish) for 4 classes."""
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.mobilenet_v3_small(num_classes=4, width_mult=0.25).eval()


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory) -> Path:
    """The shipped smoke study, runs in a temporary folder, searched once per test session (real data, real
    training, real exports): the end-to-end, report and CLI tests all read this one search."""
    if not SHARED_ARCHIVE.is_file():
        pytest.skip("needs ../shared/data/cifar10-jpeg.tar.gz")
    from udacisense.search.cli import main

    root = tmp_path_factory.mktemp("smoke")
    path = root / "smoke.toml"
    path.write_text(f'runs_dir = "{root / "runs"}"\n' + (REPO / "studies" / "smoke.toml").read_text())
    assert main(["search", "--study", str(path), "--quiet"]) == 0
    return path


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def unchanged(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = module.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def train_briefly(model: torch.nn.Module, bundle: DataBundle, epochs: int = 15) -> torch.nn.Module:
    from udacisense.training import TrainConfig, fit

    fit(model, bundle.loader("train", train=True), TrainConfig(epochs=epochs, lr=0.05, schedule="cosine"),
        num_classes=len(bundle.classes), progress=False)
    return model.eval()
