"""Benchmark: what each in-model resize target costs, in FLOPs and latency, for a study's model shape.

    .venv/bin/python scripts/resolution_benchmark.py --study studies/udacisense-offline.toml [--resolutions 224 160 128 96 64 32]

The study's architecture (e.g. the starter kit's MobileNetV3-Small upsampling 32 -> 224) is built
with freshly initialised weights, since weights change neither FLOPs nor latency, so this needs no
trained baseline. Each resolution is timed eagerly, in TorchScript and in ExecuTorch/XNNPACK, single thread,
batch 1, in alternating rounds with the study's own resolution in the same runtime and process.
Accuracy at each resolution needs fine-tuning: that is the search's `resolution` stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import pandas as pd
import torch

from udacisense.common.errors import UserError
from udacisense.common.files import write_text
from udacisense.common.logs import quiet_libraries
from udacisense.compression.resolution import set_resolution
from udacisense.evaluators.flops import count_flops, macs_from_flops
from udacisense.evaluators.latency import compare_latency
from udacisense.models.mobilenet import build_model
from udacisense.runtime import executorch_bytes, load_runner, request_executorch_threads, torchscript_bytes
from udacisense.search.study.config import StudyConfig, load_study


def measure(study: StudyConfig, resolutions: list[int], runs: int) -> pd.DataFrame:
    native = study.data.image_size
    request_executorch_threads(study.evaluation.threads)  # before the first program loads
    example = torch.rand(1, 3, native, native)
    torch.manual_seed(study.seed)
    # Untrained weights: nothing to download or train, and the same FLOPs and latency.
    shape_only = dataclasses.replace(study.model, pretrained="none", weights_file="")
    reference = build_model(shape_only, num_classes=10, image_size=native).eval()
    reference_resolution = study.model.input_resolution or native
    artifacts = {
        "eager": lambda m: load_runner(m, "eager"),
        "torchscript": lambda m: load_runner(torchscript_bytes(m, None, example), "torchscript"),
        "executorch": lambda m: load_runner(executorch_bytes(m, example), "executorch"),
    }
    reference_runners = {runtime: make(reference) for runtime, make in artifacts.items()}
    reference_flops = count_flops(reference, example)
    rows = []
    for size in resolutions:
        model = set_resolution(reference, size, native).eval()
        flops = count_flops(model, example)
        row = {"resolution": size, "mmacs": macs_from_flops(flops) / 1e6, "flops_ratio": flops / reference_flops}
        for runtime, make in artifacts.items():
            timed = compare_latency(make(model), reference_runners[runtime], example,
                                    candidate_runtime=runtime, reference_runtime=runtime,
                                    runs=runs, warmup=max(2, runs // 10), threads=study.evaluation.threads)
            row[f"{runtime}_ms"] = timed.candidate.median_ms
            row[f"{runtime}_ratio"] = timed.ratio
        rows.append(row)
        timings = "  ".join(f"{runtime} {row[f'{runtime}_ms']:6.2f} ms x{row[f'{runtime}_ratio']:.2f}" for runtime in artifacts)
        print(f"{size:>4}px  {row['mmacs']:5.1f} MMACs x{row['flops_ratio']:.3f}  {timings}  (ratios to {reference_resolution}px)",
              flush=True)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/udacisense-offline.toml")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[224, 160, 128, 96, 64, 32])
    parser.add_argument("--runs", type=int, default=200, help="timed runs per resolution and runtime")
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        study = load_study(args.study)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = measure(study, args.resolutions, args.runs)
    out = study.run_dir / "resolution_benchmark.csv"
    write_text(out, table.to_csv(index=False))
    print(table.round(3).to_string(index=False))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
