"""A full measurement of one float model in every runtime it may ship in: the baseline's metrics.json."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from torch import nn
from tqdm.auto import tqdm

from udacisense.common.env import environment
from udacisense.datasources.loaders import DataBundle
from udacisense.evaluators.accuracy import accuracy_from_logits, correct_predictions, predict_logits
from udacisense.evaluators.flops import count_flops, macs_from_flops
from udacisense.evaluators.intervals import pack_correct
from udacisense.evaluators.latency import measure_latency
from udacisense.evaluators.memory import peak_forward_memory
from udacisense.evaluators.size import size_report, state_dict_bytes
from udacisense.runtime import LoweredRuntime, Runner, load_runner


def profile_float_model(module: nn.Module, bundle: DataBundle, *, runtimes: Sequence[str],
                        artifact_for: Callable[[LoweredRuntime], bytes], latency_runs: int, latency_warmup: int,
                        threads: int, progress: bool = True) -> dict[str, object]:
    """Accuracy (val and test), size, latency, FLOPs and peak memory, with units and environment.

    ``artifact_for`` gives the module lowered to a runtime (the caller keeps the artifacts it lowers)."""
    module.eval()
    example = bundle.loader("test", limit=1).normalise(bundle.test.images[:1]).contiguous()
    num_classes = len(bundle.classes)
    flops = count_flops(module, example)
    predictions = {split: predict_logits(module, bundle.loader(split)) for split in ("val", "test")}
    metrics: dict[str, Any] = {
        "classes": list(bundle.classes),
        "input_shape": list(example.shape),
        "normalisation": {"mean": list(bundle.mean), "std": list(bundle.std)},
        "accuracy": {split: accuracy_from_logits(logits, labels, num_classes).as_dict()
                     for split, (logits, labels) in predictions.items()},
        # Which images it gets right, and the test labels: every candidate is compared with the baseline
        # on the same images (paired), and per class, from the stored study alone.
        "correct": {split: pack_correct(correct_predictions(logits, labels)) for split, (logits, labels) in predictions.items()},
        "test_labels": predictions["test"][1].tolist(),
        "flops": {"flops": flops, "macs": macs_from_flops(flops), "unit": "operations per image"},
        "peak_memory": {"bytes": peak_forward_memory(module, example), "unit": "bytes",
                        "what": "peak bytes allocated by torch during one batch-1 eager forward pass"},
        "size": {"state_dict": size_report(state_dict_bytes(module), "state_dict", module).as_dict()},
        "latency": {},
        "threads": {"torch_threads": threads, "executorch_threads": None},
        "environment": environment(),
    }
    for runtime in tqdm(runtimes, desc="measure runtimes", disable=not progress, leave=False):
        run: Runner
        if runtime == "eager":
            run = module
        else:
            artifact = artifact_for(cast(LoweredRuntime, runtime))
            metrics["size"][runtime] = size_report(artifact, runtime).as_dict()
            run = load_runner(artifact, runtime)
        report = measure_latency(run, example, runtime=runtime, warmup=latency_warmup, runs=latency_runs, threads=threads)
        metrics["latency"][runtime] = report.as_dict()
        if report.executorch_threads is not None:
            metrics["threads"]["executorch_threads"] = report.executorch_threads
    return metrics
