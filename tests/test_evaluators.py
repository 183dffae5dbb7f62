"""Evaluators measure real things: logits to accuracy, saved bytes, FLOPs that follow resolution, latency."""

from __future__ import annotations

import contextlib
import gzip
import multiprocessing
import time
from pathlib import Path

import torch
import torchvision

from udacisense.evaluators.accuracy import accuracy_from_logits, evaluate_accuracy
from udacisense.evaluators.exclusive import exclusive
from udacisense.evaluators.flops import count_flops
from udacisense.evaluators.latency import compare_latencies_in_blocks, compare_latency, measure_latency
from udacisense.evaluators.memory import peak_forward_memory
from udacisense.evaluators.size import size_report, state_dict_bytes
from udacisense.models.config import ModelConfig
from udacisense.models.mobilenet import build_model


def test_accuracy_top1_top5_and_per_class() -> None:
    logits = torch.tensor([[9.0, 1, 0, 0, 0, 0], [0, 9.0, 1, 0, 0, 0], [1, 0, 9.0, 0, 0, 0], [9.0, 8, 7, 6, 5, 0]])
    labels = torch.tensor([0, 2, 2, 5])
    report = accuracy_from_logits(logits, labels, num_classes=6)
    assert report.top1 == 0.5
    assert report.top5 == 0.75  # label 5 is the 6th-ranked logit in the last row
    assert report.per_class[0] == 1.0 and report.per_class[2] == 0.5 and report.per_class[5] == 0.0


def test_evaluate_accuracy_of_a_model_matches_its_argmax(tiny_bundle, tiny_model) -> None:
    report = evaluate_accuracy(tiny_model, tiny_bundle.loader("test"), 4)
    with torch.no_grad():
        images = tiny_bundle.loader("test").normalise(tiny_bundle.test.images)
        expected = (tiny_model(images).argmax(1) == tiny_bundle.test.labels).float().mean()
    assert abs(report.top1 - float(expected)) < 1e-6 and report.samples == len(tiny_bundle.test)


def test_size_is_serialized_bytes_and_gzip_reveals_sparsity(tiny_model) -> None:
    dense = size_report(state_dict_bytes(tiny_model), "state_dict", tiny_model)
    assert dense.bytes > 4 * dense.parameters  # float32 weights plus buffers and pickle framing
    with torch.no_grad():
        for parameter in tiny_model.parameters():
            parameter[parameter.abs() < parameter.abs().median()] = 0
    sparse_bytes = state_dict_bytes(tiny_model)
    sparse = size_report(sparse_bytes, "state_dict", tiny_model)
    assert abs(sparse.bytes - dense.bytes) < 0.01 * dense.bytes  # dense storage: no smaller on disk
    assert sparse.gzip_bytes < 0.8 * dense.gzip_bytes
    assert sparse.gzip_bytes == len(gzip.compress(sparse_bytes, compresslevel=6))
    assert sparse.nonzero_parameters < 0.6 * sparse.parameters


def test_flops_follow_input_resolution() -> None:
    native = build_model(ModelConfig(width_mult=0.5), 10, 32)
    upsampled = build_model(ModelConfig(width_mult=0.5, input_resolution=128), 10, 32)
    x = torch.randn(1, 3, 32, 32)
    assert count_flops(upsampled, x) > 8 * count_flops(native, x)
    full = torchvision.models.mobilenet_v3_small(num_classes=1000)
    # torchvision documents 0.06 GFLOPs (multiply-adds) for MobileNetV3-Small at 224x224.
    macs = count_flops(full, torch.randn(1, 3, 224, 224)) / 2
    assert 50e6 < macs < 65e6


def test_latency_statistics_threads_and_alternating_comparison() -> None:
    # Sleeps give known lower bounds, so nothing here depends on how loaded the machine is.
    x = torch.zeros(1, 3, 8, 8)
    threads_before = torch.get_num_threads()
    report = measure_latency(lambda t: time.sleep(0.004), x, runtime="eager", warmup=1, runs=9, threads=1)
    assert report.median_ms >= 4.0 and report.p10_ms <= report.median_ms <= report.p90_ms
    assert report.runs == 9 and report.torch_threads == 1 and report.as_dict()["unit"] == "milliseconds"
    timed = compare_latency(lambda t: time.sleep(0.004), lambda t: time.sleep(0.001), x,
                            candidate_runtime="eager", reference_runtime="eager", warmup=1, runs=10, rounds=5)
    candidate, reference = timed.candidate, timed.reference
    assert candidate.runs == reference.runs == 10 and timed.rounds == 5
    assert candidate.median_ms >= 4.0 and reference.median_ms >= 1.0
    assert 1.5 < timed.ratio_p10 <= timed.ratio_p90  # every round saw the candidate slower
    assert torch.get_num_threads() == threads_before  # restored after timing single-threaded


def test_latency_blocks_load_fresh_runners_and_give_an_interval_across_blocks() -> None:
    loads: list[str] = []

    def loader(name: str, seconds: float):
        def load():
            loads.append(name)
            return lambda t: time.sleep(seconds)
        return load

    timed = compare_latencies_in_blocks(loader("candidate", 0.004), {"reference": (loader("reference", 0.001), "eager")},
                                        torch.zeros(1, 3, 8, 8), candidate_runtime="eager", blocks=3, warmup=1, runs=4,
                                        rounds=2)
    # Every block loads both afresh, the first loader alternating between blocks.
    assert loads == ["candidate", "reference", "reference", "candidate", "candidate", "reference"]
    blocked = timed["reference"]
    assert len(blocked.blocks) == blocked.ratio.blocks == 3
    assert all(block.candidate.median_ms >= 4.0 and block.rounds == 2 and block.candidate.runs == 4 for block in blocked.blocks)
    assert blocked.ratio.ratios == tuple(block.ratio for block in blocked.blocks)
    assert min(blocked.ratio.ratios) <= blocked.ratio.ratio <= max(blocked.ratio.ratios) and blocked.ratio.ratio > 1.5
    assert blocked.ratio.interval is not None and blocked.ratio.interval[0] <= blocked.ratio.ratio <= blocked.ratio.interval[1]
    assert len(blocked.as_dict()["block_comparisons"]) == 3
    single = compare_latencies_in_blocks(loader("candidate", 0.001), {"reference": (loader("reference", 0.001), "eager")},
                                         torch.zeros(1, 3, 8, 8), candidate_runtime="eager", blocks=1, warmup=0, runs=2,
                                         rounds=1)
    assert single["reference"].ratio.interval is None  # one block says nothing about the spread between blocks


def _time_latency(lock: str, barrier, results) -> None:
    for locked in (False, True):
        barrier.wait()  # both processes reach the timing at the same moment
        with exclusive(Path(lock)) if locked else contextlib.nullcontext():
            start = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the machine
            compare_latency(lambda t: time.sleep(0.01), lambda t: time.sleep(0.01), torch.zeros(1, 3, 8, 8),
                            candidate_runtime="eager", reference_runtime="eager", warmup=1, runs=15, rounds=3)
            results.put((locked, start, time.monotonic()))


def test_latency_timings_of_two_processes_take_turns_under_the_lock(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")  # fresh interpreters, as the search's loky workers are
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_time_latency, args=(str(tmp_path / "run" / "timing.lock"), barrier, results))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    spans = sorted(results.get(timeout=120) for _ in range(4))
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    (_, _, first_end), (_, second_start, _) = spans[:2]
    assert second_start < first_end  # without the lock the two timings overlap: the check below can fail
    (_, _, first_end), (_, second_start, second_end) = spans[2:]
    assert first_end <= second_start < second_end


def test_peak_memory_grows_with_resolution(tiny_model) -> None:
    small = peak_forward_memory(tiny_model, torch.randn(1, 3, 32, 32))
    large = peak_forward_memory(tiny_model, torch.randn(1, 3, 128, 128))
    assert 0 < small < large
