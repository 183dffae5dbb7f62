"""Latency of any callable at batch 1 on CPU: single thread, warm-up, median and spread of many runs.

Compare candidates as ratios to a reference measured in the same process: absolute numbers drift
with the machine's load, ratios much less.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import torch


@dataclass(frozen=True)
class LatencyReport:
    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    runs: int
    threads: int
    runtime: str

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "unit": "milliseconds"}

    def ratio_to(self, reference: "LatencyReport") -> float:
        return self.median_ms / reference.median_ms


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def measure_latency(run: Callable[[torch.Tensor], object], example_input: torch.Tensor, *, runtime: str,
                    warmup: int = 10, runs: int = 100, threads: int = 1) -> LatencyReport:
    """Time ``run(example_input)``; ``runtime`` names what was timed (eager, torchscript, executorch)."""
    example_input = example_input.contiguous()
    samples: list[float] = []
    with torch_threads(threads), torch.inference_mode():
        for _ in range(warmup):
            run(example_input)
        for _ in range(runs):
            start = time.perf_counter()
            run(example_input)
            samples.append((time.perf_counter() - start) * 1000.0)
    return _report(samples, threads, runtime)


def compare_latency(candidate: Callable[[torch.Tensor], object], reference: Callable[[torch.Tensor], object],
                    example_input: torch.Tensor, *, candidate_runtime: str, reference_runtime: str,
                    warmup: int = 10, runs: int = 100, threads: int = 1, rounds: int = 5) -> tuple[LatencyReport, LatencyReport]:
    """Time a candidate and its reference in alternating rounds, so load on a shared machine hits both alike.

    Returns (candidate, reference) reports over all rounds; use ``candidate.ratio_to(reference)``.
    """
    per_round = max(1, runs // rounds)
    samples: dict[str, list[float]] = {"candidate": [], "reference": []}
    example_input = example_input.contiguous()
    with torch_threads(threads), torch.inference_mode():
        for run in (candidate, reference):
            for _ in range(warmup):
                run(example_input)
        for _ in range(rounds):
            for name, run in (("candidate", candidate), ("reference", reference)):
                for _ in range(per_round):
                    start = time.perf_counter()
                    run(example_input)
                    samples[name].append((time.perf_counter() - start) * 1000.0)
    return (_report(samples["candidate"], threads, candidate_runtime),
            _report(samples["reference"], threads, reference_runtime))


def _report(samples: list[float], threads: int, runtime: str) -> LatencyReport:
    deciles = statistics.quantiles(samples, n=10) if len(samples) >= 2 else samples * 9
    return LatencyReport(median_ms=statistics.median(samples), p10_ms=deciles[0], p90_ms=deciles[-1],
                         mean_ms=statistics.fmean(samples), runs=len(samples), threads=threads, runtime=runtime)
