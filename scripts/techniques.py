"""Benchmark: each compression technique alone, and the pairs that matter, on a study's trained baseline.

    .venv/bin/python scripts/techniques.py --study studies/cifar10-offline.toml [--epochs 2] [--only ptq ...]

Prints a table of accuracy, artifact size, gzip size and latency of each technique's artifact in
its target runtime, and writes it to runs/<study>/techniques/techniques.{csv,json}. One yardstick,
the search's: ``size_ratio``, ``gzip_ratio`` and ``latency_ratio`` (with its p10/p90) are to the
float baseline lowered to the study's ``evaluation.reference_runtime``, its latency timed in the
same rounds in this process; ``latency_ratio_same_runtime`` is to the float baseline in the
technique's own runtime, for information. Rows of earlier runs are kept (``--only`` measures a few)
only when they were measured on the same baseline (``baseline_key``); the others are dropped, and
the output says how many.
"""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd

import udacisense.compression  # noqa: F401  registers the stages
from udacisense.common.errors import UserError
from udacisense.common.files import write_json, write_text
from udacisense.common.logs import quiet_libraries
from udacisense.compression.distillation import DistillationConfig
from udacisense.compression.graph import FuseConfig
from udacisense.compression.pipeline import Pipeline
from udacisense.compression.pruning import GradualPruningConfig, StructuredPruningConfig, UnstructuredPruningConfig
from udacisense.compression.quantization import DynamicQuantConfig, QATConfig, StaticQuantConfig
from udacisense.compression.stage import CompressedModel, StageConfig, StageContext
from udacisense.search.objective import TrialRunner
from udacisense.search.storage import artifact_store
from udacisense.search.study import load_study
from udacisense.search.workspace import open_workspace
from udacisense.training import TrainConfig


def techniques(epochs: int, lr: float) -> list[tuple[tuple[StageConfig, ...], str]]:
    """(pipeline, runtime) pairs: every technique alone, lowered to the runtime it targets, then the
    pairs with int8 that a phone study combines (structure first, int8 last)."""
    tune = TrainConfig(epochs=epochs, lr=lr, schedule="cosine")
    int8 = StaticQuantConfig(backend="xnnpack")
    head_only = StructuredPruningConfig(ratio=0.0, head_ratio=0.75, finetune=tune)
    features_and_head = StructuredPruningConfig(ratio=0.25, head_ratio=0.75, finetune=tune)
    recover = DistillationConfig(alpha=0.7, temperature=4.0, finetune=tune)
    # Starts from the study's shelf: a width-0.5 student already distilled over the baseline's schedule.
    student = DistillationConfig(alpha=0.7, temperature=4.0, student_width=0.5, finetune=tune)
    int8_int4_linear = StaticQuantConfig(backend="xnnpack", linear_weight_bits=4)
    alone: list[tuple[tuple[StageConfig, ...], str]] = [
        ((), "torchscript"), ((), "executorch"),
        ((FuseConfig(),), "torchscript"),
        ((UnstructuredPruningConfig(amount=0.5, scope="global", finetune=tune),), "executorch"),
        ((GradualPruningConfig(final_sparsity=0.7, end_epoch=max(0, epochs - 1), finetune=tune),), "executorch"),
        ((StructuredPruningConfig(ratio=0.3, finetune=tune),), "executorch"),
        ((StructuredPruningConfig(ratio=0.5, finetune=tune),), "executorch"),
        ((head_only,), "executorch"),
        ((features_and_head,), "executorch"),
        ((student,), "executorch"),
        ((DynamicQuantConfig(backend="x86"),), "torchscript"),
        ((DynamicQuantConfig(backend="xnnpack"),), "executorch"),
        ((StaticQuantConfig(backend="x86"),), "torchscript"),
        ((StaticQuantConfig(backend="qnnpack"),), "torchscript"),
        ((int8,), "executorch"),
        # Mixed precision by measurement: the two units int8 changes most, on this model, stay float.
        ((StaticQuantConfig(backend="xnnpack", float_sensitive_units=2),), "executorch"),
        ((QATConfig(backend="x86", finetune=tune, freeze_bn_epoch=max(1, epochs - 1)),), "torchscript"),
        ((QATConfig(backend="xnnpack", finetune=tune, freeze_bn_epoch=max(1, epochs - 1)),), "executorch"),
    ]
    pairs: list[tuple[tuple[StageConfig, ...], str]] = [
        ((head_only, int8), "executorch"),
        ((features_and_head, int8), "executorch"),
        ((features_and_head, recover, int8), "executorch"),
        ((head_only, int8_int4_linear), "executorch"),
        ((student, int8), "executorch"),
        ((student, int8_int4_linear), "executorch"),
    ]
    return alone + pairs


def describe(pipeline: tuple[StageConfig, ...]) -> str:
    return " → ".join(stage.describe() for stage in pipeline) if pipeline else "baseline"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/cifar10-offline.toml")
    parser.add_argument("--epochs", type=int, default=2, help="fine-tune epochs for techniques that train")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--only", nargs="+", metavar="TEXT", help="run only the rows whose description contains one of these")
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        study = load_study(args.study)
        workspace = open_workspace(study)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    runner = TrialRunner(workspace, artifact_store(study))
    profile = workspace.profile
    out = study.run_dir / "techniques"
    context = StageContext(data=workspace.data, teacher=workspace.baseline.model, seed=study.seed,
                           students=workspace.students.student)
    # Rows of earlier runs stay unless this run measures the same technique again (--only runs a few),
    # and only if measured on this baseline: ratios to another one do not compare.
    csv_path = out / "techniques.csv"
    key = workspace.baseline.key
    stored = pd.read_csv(csv_path, dtype={"baseline_key": str}).to_dict(orient="records") if csv_path.is_file() else []
    earlier = [row for row in stored if row.get("baseline_key") == key]
    if len(earlier) < len(stored):
        print(f"dropped {len(stored) - len(earlier)} row(s) of {csv_path}: measured on another baseline than this one "
              f"(baseline_key {key})", flush=True)
    reference_gzip_bytes = profile.sizes[study.evaluation.reference_runtime].gzip_bytes  # every runtime is measured
    rows: list[dict] = []

    def table() -> pd.DataFrame:
        measured = {(row["technique"], row["runtime"]) for row in rows}
        kept = [row for row in earlier if (row["technique"], row["runtime"]) not in measured]
        return pd.DataFrame(kept + rows)

    for pipeline, runtime in techniques(args.epochs, args.lr):
        if args.only and not any(text in describe(pipeline) for text in args.only):
            continue
        started = time.perf_counter()
        model = CompressedModel(workspace.baseline.model)
        try:
            if pipeline:
                model, _ = Pipeline(pipeline).run(model, context)
            candidate = runner.evaluate(model, runtime)
        except Exception as error:  # one broken technique must not lose the others' measurements
            rows.append({"technique": describe(pipeline), "runtime": runtime, "baseline_key": key,
                         "error": f"{type(error).__name__}: {error}"})
            print(f"{rows[-1]['technique']:<40} {runtime:<12} FAILED: {rows[-1]['error']}", flush=True)
            continue
        rows.append({
            "technique": describe(pipeline), "runtime": runtime, "baseline_key": key,
            "val_top1": candidate.val.top1, "test_top1": candidate.test.top1,
            "bytes": candidate.size.bytes, "gzip_bytes": candidate.size.gzip_bytes,
            "size_ratio": candidate.size_ratio,
            "gzip_ratio": candidate.size.gzip_bytes / reference_gzip_bytes,
            "latency_ms": candidate.latency.candidate.median_ms, "latency_ratio": candidate.latency_ratio,
            "latency_ratio_p10": candidate.latency.ratio_p10, "latency_ratio_p90": candidate.latency.ratio_p90,
            "latency_ratio_same_runtime": candidate.same_runtime_latency.ratio,
            "parity_top1": candidate.parity.top1_agreement, "seconds": time.perf_counter() - started,
        })
        print(f"{rows[-1]['technique']:<40} {runtime:<12} val {candidate.val.top1:.3f} test {candidate.test.top1:.3f}  "
              f"size x{candidate.size_ratio:.2f}  latency x{candidate.latency_ratio:.2f} "
              f"[{candidate.latency.ratio_p10:.2f}-{candidate.latency.ratio_p90:.2f}]", flush=True)
        # Written after every row: an interrupted benchmark keeps what it measured.
        write_text(csv_path, table().to_csv(index=False))
    result = table()
    write_text(csv_path, result.to_csv(index=False))
    write_json(out / "techniques.json", result.to_dict(orient="records"))
    with pd.option_context("display.width", 200):
        print(result.round(3).to_string(index=False))
    print(f"wrote {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
