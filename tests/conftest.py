"""Shared fixtures: tiny but real data and models, so every test runs real computations in seconds."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from udacisense.datasources.config import DataConfig
from udacisense.datasources.loaders import DataBundle, Split, channel_stats, stratified_split
from udacisense.runtime import request_executorch_threads

REPO = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files holding slow tests first, the longest (``@pytest.mark.slow(minutes=...)``, 1 unless said) first of all:
    xdist hands out whole files (``--dist loadfile``) in this order to whichever worker is free, so the run does not
    end on one worker finishing a long file while the other idles (the probes' test, 5-6 min, went out sixth). Only
    with ``--no-loadscope-reorder`` (pyproject's addopts): by default xdist re-sorts the files by their number of
    tests, which left one worker 170 s of tests after the other's last."""
    weight: dict[Path, float] = {}
    for item in items:
        marker = item.get_closest_marker("slow")
        if marker is not None:
            weight[item.path] = max(weight.get(item.path, 0.0), float(marker.kwargs.get("minutes", 1)))
    items.sort(key=lambda item: -weight.get(item.path, 0.0))


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


def _once_per_run(tmp_path_factory, name: str, build) -> Path:
    """A folder built once per test run, whichever xdist worker asks first (the others wait on a lock and
    reuse it): one smoke baseline and one smoke search serve every test that only reads them."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # every worker's base temp sits in the run's common folder
    root, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.is_file():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            build(root)
            done.touch()
    return root


# For tests of the search's plumbing rather than of lowering: int8 and float artifacts in TorchScript
# (1 s to write) instead of .pte files (20-40 s each to lower here); the float .pte of the baseline,
# the yardstick, comes lowered with the seeded baseline.
TORCHSCRIPT_ARTIFACTS = {'quant_backends = ["xnnpack", "x86"]': 'quant_backends = ["x86"]',
                         "latency_warmup = 3": 'latency_warmup = 3\nfloat_runtime = "torchscript"'}


def smoke_study_file(root: Path, *, n_trials: int | None = None, edits: dict[str, str] | None = None) -> Path:
    """studies/smoke.toml with its runs in ``root/runs`` and its trained baseline already there (copied from the
    run's one smoke baseline, see ``smoke_baseline``), so a test trains and profiles no baseline of its own.
    ``edits`` replaces text of the study file (e.g. a narrower space)."""
    text = (REPO / "studies" / "smoke.toml").read_text()
    if n_trials is not None:
        text = text.replace("n_trials = 4", f"n_trials = {n_trials}")
    for old, new in (edits or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    path = root / "smoke.toml"
    path.write_text(f'runs_dir = "{root / "runs"}"\n' + text)
    return path


def seed_baseline(runs_dir: Path, trained: Path) -> None:
    """Copy a trained smoke baseline (its checkpoint, metrics.json and float artifacts) and the decoded-data
    cache into ``runs_dir``: the baseline key does not depend on the search settings tests change."""
    shutil.copytree(trained / "runs" / "cache", runs_dir / "cache", dirs_exist_ok=True)
    shutil.copytree(trained / "runs" / "smoke" / "baseline", runs_dir / "smoke" / "baseline", dirs_exist_ok=True)


@pytest.fixture(scope="session")
def smoke_baseline(tmp_path_factory) -> Path:
    """The smoke study's trained and measured baseline, built once per test run (real data, real training)."""
    if not SHARED_ARCHIVE.is_file():
        pytest.skip("needs ../shared/data/cifar10-jpeg.tar.gz")
    from udacisense.search.cli import main

    def build(root: Path) -> None:
        assert main(["baseline", "--study", str(smoke_study_file(root)), "--quiet"]) == 0

    return _once_per_run(tmp_path_factory, "smoke-baseline", build)


@pytest.fixture()
def seeded_smoke(tmp_path: Path, smoke_baseline: Path):
    """A function making a smoke study file in ``tmp_path`` whose runs folder already holds the trained baseline."""
    def make(**kwargs) -> Path:
        path = smoke_study_file(tmp_path, **kwargs)
        seed_baseline(tmp_path / "runs", smoke_baseline)
        return path
    return make


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory, smoke_baseline: Path) -> Path:
    """The shipped smoke study searched once per test run (real data, real training, real .pte exports): the
    end-to-end, report and CLI tests all read this one search, so none of them may change it."""
    from udacisense.search.cli import main
    from udacisense.search.study.config import load_study
    from udacisense.search.study.storage import open_study

    def build(root: Path) -> None:
        path = smoke_study_file(root)
        seed_baseline(root / "runs", smoke_baseline)
        # One XNNPACK trial and three x86 ones, their other settings sampled: an int8 .pte lowers in 35-110 s here, a
        # TorchScript program in seconds, and the sampler alone drew anywhere from none to four XNNPACK trials.
        study = open_study(load_study(path))
        for backend in ("xnnpack", "x86", "x86", "x86"):
            study.enqueue_trial({"quant_backend": backend})
        assert main(["search", "--study", str(path), "--quiet"]) == 0

    return _once_per_run(tmp_path_factory, "smoke-search", build) / "smoke.toml"


def study_with_a_running_legal_trial(space) -> tuple:
    """A fresh three-objective study (seeded random sampler) and its first running trial whose sampled
    pipeline passes the order check: a configuration that a later trial can duplicate."""
    import optuna

    from udacisense.common.errors import IncompatiblePipelineError
    from udacisense.spaces.sampling import sample_pipeline

    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    while True:
        trial = study.ask()
        try:
            sample_pipeline(trial, space).check()
            return study, trial
        except IncompatiblePipelineError:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def unchanged(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = module.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def weight_elements(module: torch.nn.Module) -> int:
    """The convolution and Linear weights a program of ``module`` stores whatever it folds (BatchNorm into them):
    four bytes each bound its float ``.pte`` from below, without lowering it (20-40 s for a MobileNetV3)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear))


def train_briefly(model: torch.nn.Module, bundle: DataBundle, epochs: int = 15) -> torch.nn.Module:
    from udacisense.training import TrainConfig, fit

    fit(model, bundle.loader("train", train=True), TrainConfig(epochs=epochs, lr=0.05, schedule="cosine"),
        num_classes=len(bundle.classes), progress=False)
    return model.eval()
