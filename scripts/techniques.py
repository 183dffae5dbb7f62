"""Benchmark: each compression technique alone, and the pairs that matter, on a study's trained baseline.

    .venv/bin/python scripts/techniques.py --study studies/cifar10-offline.toml [--epochs 2] [--only ptq ...]

Prints a table of accuracy, artifact size, gzip size and latency of each technique's artifact in
its target runtime, writes it to runs/<study>/techniques/techniques.{csv,json} and stores it with
the study (study attribute ``techniques``: what ``udacisense report`` reads). One yardstick,
the search's: ``size_ratio``, ``gzip_ratio`` and ``latency_ratio`` (with its p10/p90) are to the
float baseline lowered to the study's ``evaluation.reference_runtime``, its latency timed in the
same rounds in this process; ``latency_ratio_same_runtime`` is to the float baseline in the
technique's own runtime, for information. Rows of earlier runs are kept (``--only`` measures a few)
only when they were measured on the same baseline (``baseline_key``); the others are dropped, and
the output says how many.

Operator-lean variants (the ``architecture`` stage: no squeeze-excite blocks, ReLU for the hard
activations, both; and the shelf's lean width-0.5 student) get rows alone and with int8: each full-width
one is cut from the trained baseline and recovered by distillation from it for ``--recovery-epochs``. Every row
records the operators its ``.pte`` runs (delegated and portable) and its latency ratio to the float
``.pte`` across ``--blocks`` independent timing blocks, with a 95% interval.

    .venv/bin/python scripts/techniques.py --study studies/cifar10-offline.toml --random-weights

measures only bytes, operators and latency of the variants with untrained weights (latency does not
depend on their values): no baseline is trained, nothing is fine-tuned, no accuracy is measured. It
writes runs/<study>/techniques/operators_random_weights.csv, apart from the table the report reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from torch import nn

import udacisense.compression  # noqa: F401  registers the stages
from udacisense.common.errors import UserError
from udacisense.common.files import write_json, write_text
from udacisense.common.logs import quiet_libraries
from udacisense.compression.architecture import ArchitectureConfig
from udacisense.compression.distillation import DistillationConfig
from udacisense.compression.graph import FuseConfig, lower
from udacisense.compression.pipeline import Pipeline
from udacisense.compression.pruning import GradualPruningConfig, StructuredPruningConfig, UnstructuredPruningConfig
from udacisense.compression.quantization import DynamicQuantConfig, QATConfig, StaticQuantConfig
from udacisense.compression.stage import CompressedModel, StageConfig, StageContext
from udacisense.datasources.loaders import load_data
from udacisense.evaluators.latency import BlockedComparison, compare_latencies_in_blocks
from udacisense.models.mobilenet import build_model
from udacisense.models.students import StudentArchitecture, build_student
from udacisense.runtime import Backend, Delegation, LoweredRuntime, load_runner, request_executorch_threads
from udacisense.search.study.config import StudyConfig, load_study
from udacisense.search.study.records import StudyAttr, store_study
from udacisense.search.study.storage import artifact_store, open_study
from udacisense.search.study.workspace import first_test_image, open_workspace
from udacisense.search.trial.objective import TrialRunner
from udacisense.training import TrainConfig

BASELINE = "MobileNetV3-Small"  # the random-weight table's name for the study's network
STUDENT_WIDTH = 0.5  # the shelf's students the benchmark measures (distilled once per width and architecture)
STUDENTS: tuple[StudentArchitecture, ...] = ("standard", "lean")
INT8 = StaticQuantConfig(backend="xnnpack")  # PT2E static PTQ with the XNNPACK quantizer, into a .pte


# The operator-lean cuts, untrained after the cut: the distillation that follows them recovers the accuracy.
LEAN_CUTS = (("no squeeze-excite", ArchitectureConfig(squeeze_excite="remove", activation="hard")),
             ("ReLU activations", ArchitectureConfig(squeeze_excite="keep", activation="relu")),
             ("both (lean)", ArchitectureConfig(squeeze_excite="remove", activation="relu")))


def techniques(epochs: int, lr: float, recovery_epochs: int) -> list[tuple[tuple[StageConfig, ...], LoweredRuntime]]:
    """Every technique alone, lowered to the runtime it targets, then the pairs with int8 that a phone study
    combines (structure first, int8 last), then the operator-lean variants alone and with int8."""
    tune = TrainConfig(epochs=epochs, lr=lr, schedule="cosine")
    int8 = INT8
    head_only = StructuredPruningConfig(ratio=0.0, head_ratio=0.75, finetune=tune)
    features_and_head = StructuredPruningConfig(ratio=0.25, head_ratio=0.75, finetune=tune)
    recover = DistillationConfig(alpha=0.7, temperature=4.0, finetune=tune)
    # Starts from the study's shelf: a width-0.5 student already distilled over the baseline's schedule.
    student = DistillationConfig(alpha=0.7, temperature=4.0, student_width=STUDENT_WIDTH, finetune=tune)
    int8_int4_linear = StaticQuantConfig(backend="xnnpack", linear_weight_bits=4)
    alone: list[tuple[tuple[StageConfig, ...], LoweredRuntime]] = [
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
    pairs: list[tuple[tuple[StageConfig, ...], LoweredRuntime]] = [
        ((head_only, int8), "executorch"),
        ((features_and_head, int8), "executorch"),
        ((features_and_head, recover, int8), "executorch"),
        ((head_only, int8_int4_linear), "executorch"),
        ((student, int8), "executorch"),
        ((student, int8_int4_linear), "executorch"),
    ]
    # Cut from the trained baseline, the lean networks lost what the removed blocks had learnt: distillation
    # from the baseline recovers it, for longer than a technique's fine-tune.
    recover_cut = dataclasses.replace(recover, finetune=dataclasses.replace(tune, epochs=recovery_epochs))
    lean_student = dataclasses.replace(student, student_architecture="lean")
    lean: list[tuple[tuple[StageConfig, ...], LoweredRuntime]] = [
        ((cut, recover_cut, *tail), "executorch") for _, cut in LEAN_CUTS for tail in ((), (int8,))]
    lean += [((lean_student, *tail), "executorch") for tail in ((), (int8,))]
    return alone + pairs + lean


def describe(pipeline: tuple[StageConfig, ...]) -> str:
    return " → ".join(stage.describe() for stage in pipeline) if pipeline else "baseline"


def operator_columns(delegation: Delegation | None) -> dict[str, object]:
    """The operators a ``.pte`` runs, in the delegate and on portable kernels; none for TorchScript."""
    if delegation is None:
        return {}
    return {"delegated_operators": delegation.delegated_nodes, "portable_operators": delegation.portable_nodes,
            "operators": delegation.operator_count}


def blocked_latency(artifact: bytes, runtime: LoweredRuntime, backend: Backend | None, reference: bytes,
                    example: torch.Tensor, study: StudyConfig, blocks: int) -> BlockedComparison:
    """``artifact`` against the float baseline in the study's reference runtime, in ``blocks`` independent
    blocks (fresh program loads each): the interval covers what moves between loads, not only between rounds."""
    evaluation = study.evaluation
    reference_runtime = evaluation.reference_runtime
    return compare_latencies_in_blocks(
        partial(load_runner, artifact, runtime, backend),
        {"reference": (partial(load_runner, reference, reference_runtime), reference_runtime)},
        example, candidate_runtime=runtime, blocks=blocks, warmup=evaluation.latency_warmup,
        runs=evaluation.latency_runs, threads=evaluation.threads)["reference"]


def latency_columns(timed: BlockedComparison) -> dict[str, object]:
    interval = timed.ratio.interval
    return {"blocked_latency_ms": timed.candidate_ms, "blocked_latency_ratio": timed.ratio.ratio,
            "blocked_latency_ratio_low": None if interval is None else interval[0],
            "blocked_latency_ratio_high": None if interval is None else interval[1], "timing_blocks": timed.ratio.blocks}


def random_weight_variants(study: StudyConfig, num_classes: int) -> list[tuple[str, nn.Module, tuple[StageConfig, ...]]]:
    """(name, network, cut) of the study's network and its lean variants, untrained: the operators, bytes and
    latency are those of trained ones."""
    torch.manual_seed(study.seed)
    shape_only = dataclasses.replace(study.model, pretrained="none", weights_file="")
    network = build_model(shape_only, num_classes=num_classes, image_size=study.data.image_size).eval()
    variants: list[tuple[str, nn.Module, tuple[StageConfig, ...]]] = [(BASELINE, network, ())]
    variants += [(name, network, (cut,)) for name, cut in LEAN_CUTS]
    variants += [(f"width {STUDENT_WIDTH:g}" + ("" if architecture == "standard" else ", both (lean)"),
                  build_student(network, STUDENT_WIDTH, num_classes, study.seed, architecture), ())
                 for architecture in STUDENTS]
    return variants


def random_weights(study: StudyConfig, blocks: int, only: list[str] | None) -> pd.DataFrame:
    """Bytes, operators and latency ratio of every variant, float and int8, untrained: no baseline, no training."""
    request_executorch_threads(study.evaluation.threads)  # before the first program loads
    data = load_data(study.data, study.seed, Path(study.runs_dir) / "cache")
    example = first_test_image(data)
    context = StageContext(data=data, seed=study.seed)  # int8 calibrates on train images, as in a trial
    variants = random_weight_variants(study, len(data.classes))
    reference = lower(CompressedModel(variants[0][1]), study.evaluation.reference_runtime, example_input=example).artifact
    assert reference is not None
    rows = []
    for name, network, cut in variants:
        if only and not any(text in name for text in only):
            continue
        for precision, tail in (("float", ()), ("int8", (INT8,))):
            model = CompressedModel(network)
            if cut + tail:
                model, _ = Pipeline(cut + tail).run(model, context)
            lowered = lower(model, "executorch", example_input=example)
            assert lowered.artifact is not None and lowered.delegation is not None
            timed = blocked_latency(lowered.artifact, "executorch", lowered.backend, reference, example, study, blocks)
            rows.append({"variant": name, "precision": precision, "bytes": len(lowered.artifact),
                         **operator_columns(lowered.delegation), **latency_columns(timed)})
            print(f"{name:<28} {precision:<6} {len(lowered.artifact):>10,} B  {lowered.delegation.delegated_nodes} "
                  f"delegated + {lowered.delegation.portable_nodes} portable operators  "
                  f"latency x{timed.ratio.ratio:.2f} {_interval(timed)}", flush=True)
    return pd.DataFrame(rows)


def _interval(timed: BlockedComparison) -> str:
    interval = timed.ratio.interval
    return "" if interval is None else f"[{interval[0]:.2f}-{interval[1]:.2f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/cifar10-offline.toml")
    parser.add_argument("--epochs", type=int, default=2, help="fine-tune epochs for techniques that train")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--recovery-epochs", type=int, default=None,
                        help="epochs the lean variants cut from the baseline are distilled from it "
                             "(default: a quarter of the study's baseline epochs)")
    parser.add_argument("--blocks", type=int, default=None,
                        help="independent timing blocks per row (default: the study's search.retime_blocks)")
    parser.add_argument("--random-weights", action="store_true",
                        help="only bytes, operators and latency of the lean variants, untrained: no baseline, no training")
    parser.add_argument("--only", nargs="+", metavar="TEXT", help="run only the rows whose description contains one of these")
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        study = load_study(args.study)
        blocks = args.blocks or study.search.retime_blocks
        if args.random_weights:
            lean = random_weights(study, blocks, args.only)
            path = write_text(study.run_dir / "techniques" / "operators_random_weights.csv", lean.to_csv(index=False))
            with pd.option_context("display.width", 200):
                print(lean.round(3).to_string(index=False))
            print(f"wrote {path}")
            return 0
        workspace = open_workspace(study)
        optuna_study = open_study(study)
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
    reference = workspace.baseline_artifact(study.evaluation.reference_runtime)
    recovery_epochs = args.recovery_epochs or max(1, study.baseline.epochs // 4)
    rows: list[dict] = []

    def table() -> pd.DataFrame:
        measured = {(row["technique"], row["runtime"]) for row in rows}
        kept = [row for row in earlier if (row["technique"], row["runtime"]) not in measured]
        return pd.DataFrame(kept + rows)

    def save(result: pd.DataFrame) -> None:
        write_text(csv_path, result.to_csv(index=False))
        # What `udacisense report` reads: stored with the study, so a report from a copy of its database shows it too.
        store_study(optuna_study, {StudyAttr.TECHNIQUES: json.loads(result.to_json(orient="records"))})

    for pipeline, runtime in techniques(args.epochs, args.lr, recovery_epochs):
        name = describe(pipeline)
        if args.only and not any(text in name for text in args.only):
            continue
        started = time.perf_counter()
        model = CompressedModel(workspace.baseline.model)
        try:
            if pipeline:
                model, _ = Pipeline(pipeline).run(model, context)
            candidate = runner.yardstick.evaluate(model, runtime)
            timed = blocked_latency(candidate.artifact, runtime, model.backend, reference, workspace.example_input,
                                    study, blocks)
        except Exception as error:  # one broken technique must not lose the others' measurements
            rows.append({"technique": name, "runtime": runtime, "baseline_key": key,
                         "error": f"{type(error).__name__}: {error}"})
            print(f"{rows[-1]['technique']:<40} {runtime:<12} FAILED: {rows[-1]['error']}", flush=True)
            continue
        rows.append({
            "technique": name, "runtime": runtime, "baseline_key": key,
            "val_top1": candidate.val.top1, "test_top1": candidate.test.top1,
            "baseline_val_top1": profile.val_top1, "baseline_test_top1": profile.test_top1,
            "bytes": candidate.size.bytes, "gzip_bytes": candidate.size.gzip_bytes,
            "size_ratio": candidate.size_ratio,
            "gzip_ratio": candidate.size.gzip_bytes / reference_gzip_bytes,
            **operator_columns(candidate.delegation),
            "latency_ms": candidate.latency.candidate.median_ms, "latency_ratio": candidate.latency_ratio,
            "latency_ratio_p10": candidate.latency.ratio_p10, "latency_ratio_p90": candidate.latency.ratio_p90,
            "latency_ratio_same_runtime": candidate.same_runtime_latency.ratio,
            **latency_columns(timed),
            "parity_top1": candidate.parity.top1_agreement, "seconds": time.perf_counter() - started,
        })
        operators = "" if candidate.delegation is None else f"  {candidate.delegation.operator_count} operators"
        print(f"{name:<40} {runtime:<12} val {candidate.val.top1:.3f} test {candidate.test.top1:.3f} "
              f"(baseline {profile.val_top1:.3f} / {profile.test_top1:.3f})  size x{candidate.size_ratio:.2f}{operators}  "
              f"latency x{candidate.latency_ratio:.2f} [{candidate.latency.ratio_p10:.2f}-{candidate.latency.ratio_p90:.2f}], "
              f"in {blocks} blocks x{timed.ratio.ratio:.2f} {_interval(timed)}", flush=True)
        # Written after every row: an interrupted benchmark keeps what it measured.
        save(table())
    result = table()
    save(result)
    write_json(out / "techniques.json", result.to_dict(orient="records"))
    with pd.option_context("display.width", 200):
        print(result.round(3).to_string(index=False))
    print(f"wrote {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
