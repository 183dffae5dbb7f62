"""Latency of any callable at batch 1 on CPU: fixed threads, warm-up, median and spread of many runs.

Compare candidates as ratios to a reference timed in alternating rounds in the same process:
absolute numbers drift with the machine's load, ratios much less. The spread of the per-round
ratios says how steady one run was; rounds of one run are correlated, though, and a ratio also
moves between program loads (memory placement, the machine's state). Timing in several
independent blocks, each with freshly loaded programs, gives an interval across blocks that
covers that run-to-run spread.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch

from udacisense.common.threads import torch_threads
from udacisense.evaluators.intervals import BlockedRatio, blocked_ratio
from udacisense.runtime import executorch_threads, request_executorch_threads

# How far one program load's memory placement can shift a sub-millisecond latency ratio (several percent seen
# between loads of one program): a smaller difference between two single timing runs is no evidence.
LOAD_SPREAD = 0.10

Timed = Callable[[torch.Tensor], object]
Loader = Callable[[], Timed]  # loads a fresh runner (a new program load) on each call


@dataclass(frozen=True)
class LatencyReport:
    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    runs: int
    torch_threads: int
    executorch_threads: int | None  # the XNNPACK pool in force while timing; None when no program ran
    runtime: str

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "unit": "milliseconds"}

    def ratio_to(self, reference: LatencyReport) -> float:
        return self.median_ms / reference.median_ms


@dataclass(frozen=True)
class LatencyComparison:
    """A candidate against a reference timed in the same alternating rounds."""

    candidate: LatencyReport
    reference: LatencyReport
    ratio: float  # median over all the candidate's runs / median over all the reference's runs
    ratio_p10: float  # deciles of the per-round ratios: how far the ratio moves between rounds
    ratio_p90: float
    rounds: int

    def as_dict(self) -> dict[str, object]:
        return {"ratio": self.ratio, "ratio_p10": self.ratio_p10, "ratio_p90": self.ratio_p90, "rounds": self.rounds,
                "candidate": self.candidate.as_dict(), "reference": self.reference.as_dict()}


@dataclass(frozen=True)
class BlockedComparison:
    """A candidate against a reference in independent blocks, each a fresh load timed in alternating rounds."""

    blocks: tuple[LatencyComparison, ...]
    ratio: BlockedRatio  # across the blocks' ratios: the figure to quote, with its interval

    @classmethod
    def of(cls, blocks: Sequence[LatencyComparison], confidence: float = 0.95) -> BlockedComparison:
        return cls(tuple(blocks), blocked_ratio([block.ratio for block in blocks], confidence))

    @property
    def candidate_ms(self) -> float:
        """The candidate's typical milliseconds: the median of its blocks' medians."""
        return statistics.median(block.candidate.median_ms for block in self.blocks)

    @property
    def reference_ms(self) -> float:
        return statistics.median(block.reference.median_ms for block in self.blocks)

    def as_dict(self) -> dict[str, object]:
        return {**self.ratio.as_dict(), "block_comparisons": [block.as_dict() for block in self.blocks]}


def _pool_for(runtime: str, threads: int) -> int | None:
    """The XNNPACK pool size while timing ``runtime``, checked against the requested ``threads``."""
    if runtime != "executorch":
        return None
    # The pool cannot be resized once programs are loaded (see runtime.threads): this only checks it.
    request_executorch_threads(threads)
    return executorch_threads()


def measure_latency(run: Timed, example_input: torch.Tensor, *, runtime: str,
                    warmup: int = 10, runs: int = 100, threads: int = 1) -> LatencyReport:
    """Time ``run(example_input)``; ``runtime`` names what was timed (eager, torchscript, executorch)."""
    pool = _pool_for(runtime, threads)
    example_input = example_input.contiguous()
    samples: list[float] = []
    with torch_threads(threads), torch.inference_mode():
        for _ in range(warmup):
            run(example_input)
        for _ in range(runs):
            start = time.perf_counter()
            run(example_input)
            samples.append((time.perf_counter() - start) * 1000.0)
    return _report(samples, threads, pool, runtime)


def compare_latency(candidate: Timed, reference: Timed, example_input: torch.Tensor, *, candidate_runtime: str,
                    reference_runtime: str, warmup: int = 10, runs: int = 100, threads: int = 1,
                    rounds: int | None = None) -> LatencyComparison:
    """Time a candidate and its reference in alternating rounds, so load on a shared machine hits both alike."""
    return compare_latencies(candidate, {"reference": (reference, reference_runtime)}, example_input,
                             candidate_runtime=candidate_runtime, warmup=warmup, runs=runs, threads=threads,
                             rounds=rounds)["reference"]


def compare_latencies(candidate: Timed, references: Mapping[str, tuple[Timed, str]], example_input: torch.Tensor, *,
                      candidate_runtime: str, warmup: int = 10, runs: int = 100, threads: int = 1,
                      rounds: int | None = None) -> dict[str, LatencyComparison]:
    """The candidate against each named ``(runner, runtime)`` reference, all timed in the same rounds.

    ``rounds`` defaults to one per 10 runs (at least 5), so the per-round ratios have a spread.
    """
    rounds = rounds or max(5, runs // 10)
    per_round = max(1, runs // rounds)
    timed = {"": (candidate, candidate_runtime), **references}
    pools = {name: _pool_for(runtime, threads) for name, (_, runtime) in timed.items()}
    samples: dict[str, list[list[float]]] = {name: [] for name in timed}
    example_input = example_input.contiguous()
    with torch_threads(threads), torch.inference_mode():
        for run, _ in timed.values():
            for _ in range(warmup):
                run(example_input)
        for _ in range(rounds):
            for name, (run, _) in timed.items():
                round_samples = []
                for _ in range(per_round):
                    start = time.perf_counter()
                    run(example_input)
                    round_samples.append((time.perf_counter() - start) * 1000.0)
                samples[name].append(round_samples)
    flat = {name: [s for r in rounds_ for s in r] for name, rounds_ in samples.items()}
    candidate_report = _report(flat[""], threads, pools[""], candidate_runtime)
    comparisons = {}
    for name, (_, runtime) in references.items():
        reference_report = _report(flat[name], threads, pools[name], runtime)
        per_round_ratios = [statistics.median(c) / statistics.median(r) for c, r in zip(samples[""], samples[name])]
        low, high = _deciles(per_round_ratios)
        comparisons[name] = LatencyComparison(candidate_report, reference_report, candidate_report.ratio_to(reference_report),
                                              low, high, rounds)
    return comparisons


def compare_latencies_in_blocks(load_candidate: Loader, references: Mapping[str, tuple[Loader, str]],
                                example_input: torch.Tensor, *, candidate_runtime: str, blocks: int = 5,
                                warmup: int = 10, runs: int = 100, threads: int = 1, rounds: int | None = None,
                                confidence: float = 0.95) -> dict[str, BlockedComparison]:
    """``compare_latencies`` ``blocks`` times, each block on runners freshly made by the loaders (``runs``
    per block), and each reference's ratio with an interval across blocks."""
    if blocks < 1:
        raise ValueError(f"need at least one timing block, got {blocks}")
    timed: dict[str, list[LatencyComparison]] = {name: [] for name in references}
    for block in range(blocks):
        # Whichever program loads first may get warmer memory: alternate so that no side always does.
        for name, comparison in time_block(load_candidate, references, example_input, candidate_first=block % 2 == 0,
                                           candidate_runtime=candidate_runtime, warmup=warmup, runs=runs,
                                           threads=threads, rounds=rounds).items():
            timed[name].append(comparison)
    return {name: BlockedComparison.of(comparisons, confidence) for name, comparisons in timed.items()}


def time_block(load_candidate: Loader, references: Mapping[str, tuple[Loader, str]], example_input: torch.Tensor, *,
               candidate_first: bool, candidate_runtime: str, warmup: int, runs: int, threads: int,
               rounds: int | None = None) -> dict[str, LatencyComparison]:
    """One block: load every runner afresh, time them, and let them go when it returns. Whichever program loads
    first may get warmer memory: callers timing several blocks alternate ``candidate_first``."""
    candidate = load_candidate() if candidate_first else None
    loaded = {name: (load(), runtime) for name, (load, runtime) in references.items()}
    if candidate is None:
        candidate = load_candidate()
    return compare_latencies(candidate, loaded, example_input, candidate_runtime=candidate_runtime, warmup=warmup,
                             runs=runs, threads=threads, rounds=rounds)


def _deciles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    return deciles[0], deciles[-1]


def _report(samples: list[float], threads: int, pool: int | None, runtime: str) -> LatencyReport:
    low, high = _deciles(samples)
    return LatencyReport(median_ms=statistics.median(samples), p10_ms=low, p90_ms=high,
                         mean_ms=statistics.fmean(samples), runs=len(samples), torch_threads=threads,
                         executorch_threads=pool, runtime=runtime)
