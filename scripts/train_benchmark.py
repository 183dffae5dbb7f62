"""Benchmark: training images per second of the project's ``fit`` against a bare loop, and the variants that may pay on CPU.

    .venv/bin/python scripts/train_benchmark.py --study studies/cifar10-offline.toml [--batches 20] [--threads 1 2]

Every row trains the study's network (fresh weights: weights do not change the cost) on the study's
own augmented training batches, in this process:

- ``data only``: the batch loader alone (normalise, crop, flip), the floor under every loop;
- ``bare``: a torchvision-style loop (forward, cross-entropy, backward, SGD step), in the default
  (NCHW) and the ``channels_last`` memory format, and compiled with ``torch.compile`` (``--compile``);
- ``fit``: the project's loop as the baseline trains, and as a distillation fine-tune does (the
  teacher a second network of the same shape);
- ``fit`` at each thread count and batch size, and with denormal floats flushed to zero;
- one validation pass: what evaluating after every epoch costs (compare its seconds with a full
  epoch's).

Each variant gets an untimed warm-up, then ``--rounds`` timed runs of ``--batches`` batches, taken
in turns so that load on a shared machine hits every variant alike; the table gives the median.
Prints a Markdown table and writes ``runs/<study>/train_benchmark.csv``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from udacisense.common.files import write_text
from udacisense.common.logs import quiet_libraries
from udacisense.datasources.loaders import BatchLoader, DataBundle, load_data
from udacisense.evaluators.accuracy import evaluate_accuracy
from udacisense.models.mobilenet import build_model
from udacisense.search.study.config import StudyConfig, load_study
from udacisense.training import Distillation, TrainConfig, fit


@dataclass(frozen=True)
class Variant:
    name: str
    threads: int
    batch_size: int
    run: Callable[[int], int]  # trains on (or only loads) up to that many batches; returns the images seen


def _loader(bundle: DataBundle, batch_size: int) -> BatchLoader:
    return BatchLoader(bundle.train, batch_size, bundle.mean, bundle.std, shuffle=True,
                       augment=bundle.config.augment, seed=bundle.seed)


def _fresh_model(study: StudyConfig, bundle: DataBundle) -> nn.Module:
    shape_only = dataclasses.replace(study.model, pretrained="none", weights_file="")
    return build_model(shape_only, len(bundle.classes), bundle.config.image_size)


def _images(loader: BatchLoader, batches: int) -> int:
    return min(batches * loader.batch_size, loader.num_samples)


def _data_only(loader: BatchLoader) -> Callable[[int], int]:
    def run(batches: int) -> int:
        for step, _ in enumerate(loader):
            if step + 1 >= batches:
                break
        return _images(loader, batches)
    return run


def _bare(model: nn.Module, loader: BatchLoader, channels_last: bool) -> Callable[[int], int]:
    # A small constant rate: the baseline's peak rate without its warm-up blows weights up, and
    # arithmetic on huge or denormal floats is slower, which would flatter the project's loop.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9, nesterov=True)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    def run(batches: int) -> int:
        model.train()
        for step, (images, labels) in enumerate(loader):
            if step >= batches:
                break
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return _images(loader, batches)
    return run


def _fit(model: nn.Module, loader: BatchLoader, config: TrainConfig, num_classes: int,
         distillation: Distillation | None = None) -> Callable[[int], int]:
    def run(batches: int) -> int:
        fit(model, loader, dataclasses.replace(config, epochs=1, max_batches_per_epoch=batches),
            num_classes=num_classes, distillation=distillation, progress=False)
        return _images(loader, batches)
    return run


def _flushing_denormals(run: Callable[[int], int]) -> Callable[[int], int]:
    def flushing(batches: int) -> int:
        torch.set_flush_denormal(True)
        try:
            return run(batches)
        finally:
            torch.set_flush_denormal(False)
    return flushing


def _validation(model: nn.Module, bundle: DataBundle) -> Callable[[int], int]:
    loader = bundle.loader("val")

    def run(_: int) -> int:  # always one whole pass, as fit makes after every epoch
        evaluate_accuracy(model, loader, len(bundle.classes))
        return loader.num_samples
    return run


def variants(study: StudyConfig, bundle: DataBundle, threads: list[int], batch_sizes: list[int],
             compile_model: bool) -> list[Variant]:
    size = study.data.batch_size
    loader = _loader(bundle, size)
    num_classes = len(bundle.classes)
    teacher = _fresh_model(study, bundle).eval()
    distill = Distillation(teacher, alpha=0.5, temperature=4.0)
    finetune = TrainConfig(lr=0.01, schedule="cosine", label_smoothing=0.1)
    rows: list[Variant] = []
    for count in threads:
        rows += [
            Variant("data only", count, size, _data_only(loader)),
            Variant("bare NCHW", count, size, _bare(_fresh_model(study, bundle), loader, False)),
            Variant("bare channels_last", count, size, _bare(_fresh_model(study, bundle), loader, True)),
            Variant("fit baseline", count, size, _fit(_fresh_model(study, bundle), loader, study.baseline, num_classes)),
            Variant("fit distillation", count, size,
                    _fit(_fresh_model(study, bundle), loader, finetune, num_classes, distill)),
        ]
    most = max(threads)
    rows.append(Variant("fit baseline, denormals flushed", most, size, _flushing_denormals(
        _fit(_fresh_model(study, bundle), loader, study.baseline, num_classes))))
    for other in sorted(set(batch_sizes) - {size}):
        rows.append(Variant("fit baseline", most, other,
                            _fit(_fresh_model(study, bundle), _loader(bundle, other), study.baseline, num_classes)))
    trained = _fresh_model(study, bundle)
    rows.append(Variant("validation pass", most, bundle.config.eval_batch_size, _validation(trained, bundle)))
    if compile_model:
        compiled = torch.compile(_fresh_model(study, bundle).to(memory_format=torch.channels_last))
        rows.append(Variant("bare channels_last + torch.compile", most, size, _bare(compiled, loader, True)))  # type: ignore[arg-type]  # torch.compile returns a callable typed loosely
    return rows


def _rate(variant: Variant, batches: int) -> tuple[float, int]:
    """(seconds, images) of one run of ``variant``."""
    torch.set_num_threads(variant.threads)
    start = time.perf_counter()
    images = variant.run(batches)
    return time.perf_counter() - start, images


def measure(rows: list[Variant], batches: int, rounds: int, warmup: int) -> list[dict[str, object]]:
    warmup_seconds = [_rate(v, warmup)[0] for v in rows]  # torch.compile compiles here
    timings: list[list[float]] = [[] for _ in rows]
    images = [0] * len(rows)
    for _ in range(rounds):
        for index, variant in enumerate(rows):
            seconds, images[index] = _rate(variant, batches)
            timings[index].append(seconds)
    results = []
    for variant, seconds, first, seen in zip(rows, timings, warmup_seconds, images):
        median = statistics.median(seconds)
        results.append({"variant": variant.name, "threads": variant.threads, "batch_size": variant.batch_size,
                        "images_per_s": round(seen / median, 1), "images": seen, "seconds_median": round(median, 3),
                        "seconds_spread": round(max(seconds) - min(seconds), 3), "warmup_seconds": round(first, 2),
                        "batches": batches, "rounds": rounds})
    return results


def _markdown(table: pd.DataFrame, train_images: int) -> str:
    best_bare = table[table.variant.str.startswith("bare")].groupby("threads").images_per_s.max()
    lines = ["| variant | threads | batch | images/s | vs best bare | s per training epoch (validation: per pass) "
             "| spread of runs (s) |", "|---|---|---|---|---|---|---|"]
    for row in table.itertuples():
        relative = f"{row.images_per_s / best_bare[row.threads]:.2f}" if row.threads in best_bare else ""
        epoch = row.seconds_median if row.variant == "validation pass" else train_images / row.images_per_s
        epoch = f"{epoch:.1f}"
        lines.append(f"| {row.variant} | {row.threads} | {row.batch_size} | {row.images_per_s:.0f} | {relative} "
                     f"| {epoch} | {row.seconds_spread:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/cifar10-offline.toml")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per run of a variant")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per variant, taken in turns")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches before a variant's first run")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (compiles for minutes on CPU)")
    args = parser.parse_args(argv)
    quiet_libraries()
    study = load_study(args.study)
    bundle = load_data(study.data, study.seed, Path(study.runs_dir) / "cache")
    torch.manual_seed(study.seed)
    table = pd.DataFrame(measure(variants(study, bundle, args.threads, args.batch_sizes, args.compile),
                                 args.batches, args.rounds, args.warmup))
    out = study.run_dir / "train_benchmark.csv"
    write_text(out, table.to_csv(index=False))
    print(_markdown(table, len(bundle.train)))
    print(f"{len(bundle.train)} training images of {bundle.config.image_size}x{bundle.config.image_size}; "
          f"{args.rounds} rounds of {args.batches} batches per variant (median); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
