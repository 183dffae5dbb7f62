"""`udacisense init` from a model trained outside the product (plain torchvision) and its image folder, then a
short search to a verified `.pte`; a model at chance and bad inputs are refused with what to do."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms

from udacisense.search.cli import main
from udacisense.search.study.init_study import study_toml

CLASSES = ("blue", "green", "red")


def _write_folder(root: Path, size: int, per_class: dict[str, int], seed: int = 0) -> Path:
    """Dark noisy images whose class is the dominant colour channel, in train/ and test/ class folders. Their
    statistics are far from ImageNet's, so a model trained with one normalisation misreads images given the other
    (with brighter images either serves, and which one init names is a coin toss)."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 60, (size, size, 3))
                pixels[..., 2 - label] += rng.integers(30, 61)  # RGB: red is channel 0, blue channel 2
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f"{i:03d}.png")
    return root


def _train_plain(data: Path, arch: str, size: int, out: Path, epochs: int = 6) -> Path:
    """What a notebook does: torchvision's ImageFolder and network, SGD; then saves the state_dict."""
    torch.manual_seed(0)
    norm = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    train = torchvision.datasets.ImageFolder(str(data / "train"), transforms.Compose([transforms.ToTensor(), norm]))
    loader = torch.utils.data.DataLoader(train, batch_size=16, shuffle=True)
    builder = torchvision.models.mobilenet_v3_large if arch == "large" else torchvision.models.mobilenet_v3_small
    model = builder(num_classes=len(train.classes), width_mult=0.35)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(epochs):
        model.train()
        for images, labels in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
    # BatchNorm statistics as a cumulative average over the training images (torchvision's momentum of 0.01
    # would leave them near their start after this few steps).
    for layer in model.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.reset_running_stats()
            layer.momentum = None
    with torch.no_grad():
        for images, _ in loader:
            model(images)
    torch.save({"state_dict": model.state_dict(), "classes": train.classes}, out)
    return out


def _shrink_search(study: Path) -> None:
    """Edit the written study as a user would for a first try: one quantized trial, few timing runs."""
    tables = tomllib.loads(study.read_text())
    # The runtimes the search compares: the trial's TorchScript program is measured against the baseline's too.
    tables["evaluation"] = {"latency_runs": 10, "latency_warmup": 2, "runtimes": ["eager", "torchscript", "executorch"]}
    # Probes (tests/test_probes.py) would lower a Large program per option before this one trial.
    tables["search"] = {"n_trials": 1, "latency_runs": 8, "retime_factor": 1, "retime_blocks": 1, "probes": False}
    # The trial's int8 program in TorchScript (1 s to write): the Large's float .pte, the trial's yardstick, is lowered
    # (an int8 .pte added ~45 s; XNNPACK int8 lowering of the same operators is tested on the Small).
    tables["space"] = {"stages": ["quantize"], "quant_types": ["static"], "quant_backends": ["x86"],
                       "linear_weight_bits": [8]}
    study.write_text(study_toml(tables))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("init")


@pytest.mark.slow
def test_a_large_trained_outside_the_product_is_searched_to_a_verified_artifact(workdir: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(workdir)
    folder = _write_folder(workdir / "colors", 32, {"train": 40, "test": 30})
    model = _train_plain(folder, "large", 32, workdir / "large.pth")
    assert main(["init", "--model", str(model), "--data", str(folder), "--name", "colors-large"]) == 0
    said = capsys.readouterr().out
    assert "MobileNetV3-Large (width 0.35), 3 classes" in said and "normalised as ImageNet" in said
    study = workdir / "studies" / "colors-large.toml"
    written = tomllib.loads(study.read_text())
    assert written["model"] == {"arch": "mobilenet_v3_large", "width_mult": 0.35}
    assert written["baseline"]["checkpoint"] == str(model) and written["data"]["image_size"] == 32
    _shrink_search(study)
    assert main(["search", "--study", str(study), "--quiet"]) == 0
    profile = json.loads((workdir / "runs" / "colors-large" / "baseline" / "metrics.json").read_text())
    assert profile["source"] == "loaded" and profile["train_seconds"] == 0.0
    assert {p.suffix for p in (workdir / "runs" / "colors-large" / "baseline").glob("float-*")} == {".pt", ".pte"}
    artifact = workdir / "runs" / "colors-large" / "export" / "model.pt"
    assert artifact.is_file()
    assert main(["verify", str(artifact), "--data", str(folder)]) == 0


def test_a_small_on_64_pixel_images_gets_a_study_at_their_size(workdir: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(workdir)
    folder = _write_folder(workdir / "colors64", 64, {"train": 24, "test": 16}, seed=1)
    model = _train_plain(folder, "small", 64, workdir / "small64.pth", epochs=5)
    assert main(["init", "--model", str(model), "--data", str(folder), "--name", "colors64"]) == 0
    written = tomllib.loads((workdir / "studies" / "colors64.toml").read_text())
    assert written["model"]["arch"] == "mobilenet_v3_small" and written["data"]["image_size"] == 64
    assert main(["check", "--study", "studies/colors64.toml"]) == 0
    # A second init would replace the study: refused unless asked.
    assert main(["init", "--model", str(model), "--data", str(folder), "--name", "colors64"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["init", "--model", str(model), "--data", str(folder), "--name", "colors64", "--force"]) == 0


def test_an_untrained_network_is_refused_at_chance(workdir: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(workdir)
    folder = _write_folder(workdir / "untrained", 32, {"train": 30, "test": 6}, seed=2)
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(num_classes=3, width_mult=0.35)
    torch.save(net.state_dict(), workdir / "untrained.pth")
    assert main(["init", "--model", str(workdir / "untrained.pth"), "--data", str(folder), "--name", "untrained"]) == 2
    error = capsys.readouterr().err
    assert "no better than chance" in error and "data.mean" in error
    assert not (workdir / "studies" / "untrained.toml").exists()  # nothing half-written


def test_bad_inputs_get_their_message_and_write_nothing(workdir: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(workdir)
    folder = _write_folder(workdir / "bad", 32, {"train": 12, "test": 4}, seed=3)
    four = torchvision.models.mobilenet_v3_small(num_classes=4, width_mult=0.35)
    torch.save(four.state_dict(), workdir / "four.pth")
    assert main(["init", "--model", str(workdir / "four.pth"), "--data", str(folder), "--name", "bad"]) == 2
    assert "classifies 4 classes" in capsys.readouterr().err
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), workdir / "resnet.pth")
    assert main(["init", "--model", str(workdir / "resnet.pth"), "--data", str(folder), "--name", "bad"]) == 2
    assert "resnet18" in capsys.readouterr().err
    (folder / "train" / "red" / "999.png").write_bytes(b"not an image")
    three = torchvision.models.mobilenet_v3_small(num_classes=3, width_mult=0.35)
    torch.save(three.state_dict(), workdir / "three.pth")
    assert main(["init", "--model", str(workdir / "three.pth"), "--data", str(folder), "--name", "bad"]) == 2
    assert "999.png" in capsys.readouterr().err
    assert not (workdir / "studies" / "bad.toml").exists()
