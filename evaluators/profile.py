"""A full measurement of one float model in every runtime it may ship in: the baseline's metrics.json."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from udacisense.common.env import environment
from udacisense.datasources.loaders import DataBundle
from udacisense.evaluators.accuracy import evaluate_accuracy
from udacisense.evaluators.flops import count_flops, macs_from_flops
from udacisense.evaluators.latency import measure_latency
from udacisense.evaluators.memory import peak_forward_memory
from udacisense.evaluators.size import size_report, state_dict_bytes
from udacisense.runtime import Runner, artifact_bytes, load_runner


def profile_float_model(module: nn.Module, bundle: DataBundle, *, runtimes: Sequence[str], latency_runs: int,
                        latency_warmup: int, threads: int, progress: bool = True) -> dict[str, object]:
    """Accuracy (val and test), size, latency, FLOPs and peak memory, with units and environment."""
    module.eval()
    example = bundle.loader("test", limit=1).normalise(bundle.test.images[:1]).contiguous()
    num_classes = len(bundle.classes)
    flops = count_flops(module, example)
    metrics: dict[str, Any] = {
        "classes": list(bundle.classes),
        "input_shape": list(example.shape),
        "normalisation": {"mean": list(bundle.mean), "std": list(bundle.std)},
        "accuracy": {
            "val": evaluate_accuracy(module, bundle.loader("val"), num_classes).as_dict(),
            "test": evaluate_accuracy(module, bundle.loader("test"), num_classes).as_dict(),
        },
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
            artifact = artifact_bytes(copy.deepcopy(module), runtime, example_input=example)
            metrics["size"][runtime] = size_report(artifact, runtime).as_dict()
            run = load_runner(artifact, runtime)
        report = measure_latency(run, example, runtime=runtime, warmup=latency_warmup, runs=latency_runs, threads=threads)
        metrics["latency"][runtime] = report.as_dict()
        if report.executorch_threads is not None:
            metrics["threads"]["executorch_threads"] = report.executorch_threads
    return metrics
