"""What a candidate is measured against and how: the float baseline as the one yardstick, the shipped
artifact's accuracy, parity, latency and size, and the attributes a measured trial stores."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import optuna
import torch

from udacisense.common.files import save_torch, sha256_of, write_bytes
from udacisense.compression.graph import lower
from udacisense.compression.stage import CompressedModel, ModelForm
from udacisense.evaluators.accuracy import AccuracyReport, accuracy_from_logits, correct_predictions, predict_logits
from udacisense.evaluators.evidence import split_evidence
from udacisense.evaluators.exclusive import TIMING_LOCK, exclusive
from udacisense.evaluators.intervals import pack_correct
from udacisense.evaluators.latency import BlockedComparison, LatencyComparison, compare_latencies, time_block
from udacisense.evaluators.parity import ParityReport, ParityRule, compare_logits, parity_rule
from udacisense.evaluators.size import SizeReport, size_report
from udacisense.runtime import (
    ARTIFACT_SUFFIX,
    Backend,
    Delegation,
    LoweredRuntime,
    Runner,
    deployment_label,
    executorch_threads,
    load_runner,
    quantized_engine,
)
from udacisense.search.study.config import TargetsConfig
from udacisense.search.study.records import Attr, Fidelity, store
from udacisense.search.study.workspace import Workspace
from udacisense.search.trial.phases import PhaseClock


@dataclass(frozen=True)
class Candidate:
    """A compressed model as shipped: its artifact and what was measured of it."""

    runtime: LoweredRuntime
    artifact: bytes
    val: AccuracyReport
    test: AccuracyReport
    val_correct: torch.Tensor  # which images the artifact gets right, in the split's order
    test_correct: torch.Tensor
    reference_logits: torch.Tensor  # the PyTorch model's test logits, for parity checks after export
    parity: ParityReport
    parity_rule: ParityRule
    latency: LatencyComparison  # against the float baseline in the study's reference runtime
    same_runtime_latency: LatencyComparison  # against the float baseline in the candidate's runtime (information)
    size: SizeReport
    size_ratio: float  # to the float baseline in the reference runtime
    size_ratio_same_runtime: float
    delegation: Delegation | None  # None for TorchScript, which has no delegate

    @property
    def latency_ratio(self) -> float:
        return self.latency.ratio


@dataclass(frozen=True)
class TrialLatency:
    """A candidate timed in the same rounds as the float baseline in the reference runtime and in its own."""

    reference: LatencyComparison
    same_runtime: LatencyComparison


def target_constraints(targets: TargetsConfig, floor: float, accuracy: float, latency_ratio: float, size_ratio: float,
                       parity_shortfall: float = 0.0) -> dict[str, float]:
    """Optuna's constraints (feasible when every one is <= 0): how far each objective is from its target."""
    return {"accuracy": floor - accuracy, "size": size_ratio - targets.max_size_ratio,
            "latency": latency_ratio - targets.max_latency_ratio, "parity": parity_shortfall}


@dataclass
class Yardstick:
    """The float baseline that every candidate of a study is measured against, in one process: its programs
    are lowered once per baseline (``Workspace.baseline_artifact``) and loaded once here."""

    workspace: Workspace
    _reference: dict[str, Runner] = field(default_factory=dict)

    @property
    def floor(self) -> float:
        return self.workspace.profile.val_top1 - self.workspace.study.targets.max_accuracy_drop

    def reference_runner(self, runtime: LoweredRuntime) -> Runner:
        if runtime not in self._reference:
            self._reference[runtime] = load_runner(self.workspace.baseline_artifact(runtime), runtime)
        return self._reference[runtime]

    def baseline_size(self, runtime: str) -> int:
        return self.workspace.profile.bytes(runtime)

    def parity_rule(self, quantized: bool) -> ParityRule:
        evaluation = self.workspace.study.evaluation
        return parity_rule(quantized, float_logit_tolerance=evaluation.float_logit_tolerance,
                           int8_min_agreement=evaluation.int8_min_agreement)

    def measure_latency(self, run: Runner, runtime: LoweredRuntime, runs: int | None = None) -> TrialLatency:
        """The candidate against the float baseline in the reference runtime (the one yardstick) and in
        ``runtime`` (information only), timed in alternating rounds in this process."""
        study = self.workspace.study
        reference_runtime = study.evaluation.reference_runtime
        references = {"reference": (self.reference_runner(reference_runtime), reference_runtime)}
        if runtime != reference_runtime:
            references["same_runtime"] = (self.reference_runner(runtime), runtime)
        with exclusive(study.run_dir / TIMING_LOCK):  # never while another worker of the study times
            timed = compare_latencies(run, references, self.workspace.example_input, candidate_runtime=runtime,
                                      warmup=study.evaluation.latency_warmup, runs=runs or study.search.latency_runs,
                                      threads=study.evaluation.threads)
        return TrialLatency(timed["reference"], timed.get("same_runtime", timed["reference"]))

    def time_in_blocks(self, artifacts: Mapping[int, tuple[bytes, LoweredRuntime, Backend | None]]) -> dict[int, BlockedComparison]:
        """Each artifact against the float reference in ``search.retime_blocks`` independent blocks of
        ``search.retime_factor`` times the trial runs in all: every block loads both programs afresh, and the
        artifacts' blocks are interleaved, so drift over the minutes of timing falls on every candidate alike."""
        study = self.workspace.study
        search, evaluation = study.search, study.evaluation
        runs = max(3, search.latency_runs * search.retime_factor // search.retime_blocks)
        reference_runtime = evaluation.reference_runtime
        reference = self.workspace.baseline_artifact(reference_runtime)
        timed: dict[int, list[LatencyComparison]] = {number: [] for number in artifacts}
        for block in range(search.retime_blocks):
            for number, (artifact, runtime, backend) in artifacts.items():
                with exclusive(study.run_dir / TIMING_LOCK):
                    timed[number].append(time_block(
                        partial(load_runner, artifact, runtime, backend),
                        {"reference": (partial(load_runner, reference, reference_runtime), reference_runtime)},
                        self.workspace.example_input, candidate_first=block % 2 == 0, candidate_runtime=runtime,
                        warmup=evaluation.latency_warmup, runs=runs, threads=evaluation.threads)["reference"])
        return {number: BlockedComparison.of(blocks) for number, blocks in timed.items()}

    def evaluate(self, model: CompressedModel, runtime: LoweredRuntime, phases: PhaseClock | None = None) -> Candidate:
        """Lower ``model`` to ``runtime`` and measure the artifact itself: accuracy, parity, latency, size."""
        data, phases = self.workspace.data, phases or PhaseClock()
        with phases.phase("lowering"):
            lowered = lower(model, runtime, example_input=self.workspace.example_input)
            assert lowered.artifact is not None
            run = load_runner(lowered.artifact, runtime, lowered.backend)
        # Accuracy is that of the shipped artifact in its runtime, not of the PyTorch model.
        with phases.phase("artifact accuracy"):
            val_logits, val_labels = predict_logits(run, data.loader("val"))
            test_logits, test_labels = predict_logits(run, data.loader("test"))
        with phases.phase("parity"), quantized_engine(model.backend):
            reference_logits, _ = predict_logits(model.module, data.loader("test"))
        with phases.phase("latency"):
            latency = self.measure_latency(run, runtime)
        reference_runtime = self.workspace.study.evaluation.reference_runtime
        return Candidate(
            runtime=runtime, artifact=lowered.artifact, val=accuracy_from_logits(val_logits, val_labels, len(data.classes)),
            test=accuracy_from_logits(test_logits, test_labels, len(data.classes)),
            val_correct=correct_predictions(val_logits, val_labels), test_correct=correct_predictions(test_logits, test_labels),
            reference_logits=reference_logits, parity=compare_logits(reference_logits, test_logits),
            parity_rule=self.parity_rule(model.form is ModelForm.QUANTIZED),
            latency=latency.reference, same_runtime_latency=latency.same_runtime,
            size=size_report(lowered.artifact, runtime),
            size_ratio=len(lowered.artifact) / self.baseline_size(reference_runtime),
            size_ratio_same_runtime=len(lowered.artifact) / self.baseline_size(runtime),
            delegation=lowered.delegation,
        )

    def constraints(self, candidate: Candidate) -> dict[str, float]:
        return target_constraints(self.workspace.study.targets, self.floor, candidate.val.top1, candidate.latency_ratio,
                                  candidate.size_ratio, candidate.parity_rule.shortfall(candidate.parity))

    def measured_attrs(self, candidate: Candidate, backend: Backend | None, constraints: Mapping[str, float]) -> dict[Attr, object]:
        """Everything a measured trial stores of its candidate, with the paired evidence against the baseline."""
        latency, profile = candidate.latency, self.workspace.profile
        return {
            Attr.VAL: candidate.val.as_dict(), Attr.TEST: candidate.test.as_dict(),
            Attr.VAL_CORRECT: pack_correct(candidate.val_correct), Attr.TEST_CORRECT: pack_correct(candidate.test_correct),
            Attr.EVIDENCE: {split: split_evidence(correct, profile.correct(split)).as_dict()
                            for split, correct in (("val", candidate.val_correct), ("test", candidate.test_correct))},
            Attr.LATENCY: latency.candidate.as_dict(), Attr.REFERENCE_LATENCY: latency.reference.as_dict(),
            Attr.LATENCY_MS: latency.candidate.median_ms, Attr.REFERENCE_LATENCY_MS: latency.reference.median_ms,
            Attr.REFERENCE_RUNTIME: latency.reference.runtime,
            Attr.LATENCY_RATIO_P10: latency.ratio_p10, Attr.LATENCY_RATIO_P90: latency.ratio_p90,
            Attr.LATENCY_RATIO_SAME_RUNTIME: candidate.same_runtime_latency.ratio,
            Attr.SAME_RUNTIME_LATENCY: candidate.same_runtime_latency.reference.as_dict(),
            Attr.TORCH_THREADS: latency.candidate.torch_threads,
            Attr.EXECUTORCH_THREADS: executorch_threads(),  # the pool every program of this process runs on
            Attr.SIZE_RATIO_SAME_RUNTIME: candidate.size_ratio_same_runtime,
            Attr.DEPLOYMENT: deployment_label(candidate.runtime, backend),
            Attr.PARITY: candidate.parity.as_dict(), Attr.PARITY_RULE: candidate.parity_rule.as_dict(),
            Attr.PARITY_OK: candidate.parity_rule.passes(candidate.parity),
            Attr.ARTIFACT_BYTES: candidate.size.bytes, Attr.ARTIFACT_GZIP_BYTES: candidate.size.gzip_bytes,
            Attr.DELEGATION: candidate.delegation.as_dict() if candidate.delegation else None,
            Attr.CONSTRAINTS: dict(constraints), Attr.MEETS_TARGETS: all(c <= 0 for c in constraints.values()),
            Attr.FIDELITY: Fidelity.MEASURED.value,
        }


def store_artifact(trial: optuna.Trial, candidate: Candidate, trials_dir: Path,
                   artifact_store: optuna.artifacts.FileSystemArtifactStore) -> None:
    """Keep the artifact (and the logits export checks it against) under ``trials_dir``, in a folder named for the
    trial's number; only parity-checked ones are kept."""
    artifact_dir = trials_dir / f"{trial.number:05d}"
    save_torch(artifact_dir / "reference_logits.pt", candidate.reference_logits)
    path = write_bytes(artifact_dir / f"model{ARTIFACT_SUFFIX[candidate.runtime]}", candidate.artifact)
    store(trial, {Attr.ARTIFACT_PATH: str(path), Attr.ARTIFACT_SHA256: sha256_of(path)})
    artifact_id = optuna.artifacts.upload_artifact(artifact_store=artifact_store, file_path=str(path), study_or_trial=trial)
    store(trial, {Attr.ARTIFACT_ID: artifact_id})
