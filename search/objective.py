"""One trial: sample a pipeline, reject or stop it early if hopeless, build it, measure what ships."""

from __future__ import annotations

import copy
import os
import socket
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import cast

import optuna
import torch

from udacisense.common.errors import IncompatiblePipelineError
from udacisense.common.files import save_torch, sha256_of, write_bytes
from udacisense.compression.distillation import DistillationConfig
from udacisense.compression.graph import lower
from udacisense.compression.pipeline import StageRecord
from udacisense.compression.stage import CompressedModel, ModelForm, StageConfig, StageContext
from udacisense.evaluators.accuracy import AccuracyReport, accuracy_from_logits, correct_predictions, evaluate_accuracy, predict_logits
from udacisense.evaluators.exclusive import TIMING_LOCK, exclusive
from udacisense.evaluators.flops import count_flops
from udacisense.evaluators.intervals import pack_correct
from udacisense.evaluators.latency import BlockedComparison, LatencyComparison, compare_latencies, time_block
from udacisense.evaluators.parity import ParityReport, ParityRule, compare_logits, parity_rule
from udacisense.evaluators.size import SizeReport, parameter_counts, size_report, state_dict_bytes
from udacisense.evaluators.structure import Structure, structure_of
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
    runtime_for,
)
from udacisense.search.budget import duplicate_of, is_surplus
from udacisense.search.early_stopping import AccuracyMonitor, stop_rule_for
from udacisense.search.evidence import split_evidence
from udacisense.search.feasibility import Footprint, footprint, infeasibility
from udacisense.search.phases import PhaseClock
from udacisense.search.records import Attr, Fidelity, StopReason, TrialRecord, record_stop, store
from udacisense.search.screening import Estimate, ScreeningRule, could_matter, estimate
from udacisense.search.workspace import Workspace
from udacisense.spaces.sampling import sample_pipeline
from udacisense.training import TrainConfig


def trial_seed(study_seed: int, trial: TrialRecord) -> int:
    """The seed a trial's stages train with (data order, initialisations): the one it was queued with
    (a replay carries its original's), else the study seed plus its number, as every trial before
    seeds were recorded had."""
    return trial.seed if trial.seed is not None else study_seed + trial.number


def fine_tune_epochs(stage: StageConfig) -> int:
    """The epochs a stage fine-tunes for: every training stage's config carries them as ``finetune``."""
    finetune = getattr(stage, "finetune", None)
    return finetune.epochs if isinstance(finetune, TrainConfig) else 0


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


@dataclass
class TrialRunner:
    """Runs trials of one study in one process; the baseline reference latencies are measured here too."""

    workspace: Workspace
    artifact_store: optuna.artifacts.FileSystemArtifactStore
    progress: bool = False
    budget: int | None = None  # the study's trial budget, shared by every worker; None: no check
    current_trial: int | None = None  # the trial this process is running, for clean interruption
    sampler_seed: int | None = None  # this process's sampler seed, recorded so its trials can be replayed
    failure: Exception | None = None  # why the last trial failed, for the worker to judge (Optuna keeps only text)
    phases: PhaseClock = field(default_factory=PhaseClock)  # the running trial's seconds per phase
    _reference: dict[str, Runner] = field(default_factory=dict)
    _baseline_footprint: Footprint | None = None

    @property
    def floor(self) -> float:
        return self.workspace.profile.val_top1 - self.workspace.study.targets.max_accuracy_drop

    def reference_runner(self, runtime: LoweredRuntime) -> Runner:
        """The baseline lowered to ``runtime`` (lowered once per baseline, see ``Workspace.baseline_artifact``),
        loaded once per process."""
        if runtime not in self._reference:
            self._reference[runtime] = load_runner(self.workspace.baseline_artifact(runtime), runtime)
        return self._reference[runtime]

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

    def baseline_size(self, runtime: str) -> int:
        return self.workspace.profile.bytes(runtime)

    def parity_rule(self, quantized: bool) -> ParityRule:
        evaluation = self.workspace.study.evaluation
        return parity_rule(quantized, float_logit_tolerance=evaluation.float_logit_tolerance,
                           int8_min_agreement=evaluation.int8_min_agreement)

    def _stage_meter(self, model: CompressedModel, stage: StageConfig) -> dict[str, object]:
        data = self.workspace.data
        with self.phases.phase("validation"):
            top1 = evaluate_accuracy(model.module, data.loader("val"), len(data.classes)).top1
        metrics: dict[str, object] = {
            "val_top1": top1,
            "state_dict_bytes": len(state_dict_bytes(model.module)),
            "form": model.form.value,
        }
        if model.form is ModelForm.FLOAT:
            params, nonzero = parameter_counts(model.module)
            metrics.update(parameters=params, nonzero_parameters=nonzero,
                           flops=count_flops(model.module, self.workspace.example_input))
        return metrics

    def __call__(self, trial: optuna.Trial) -> tuple[float, float, float]:
        started = time.perf_counter()
        self.current_trial, self.failure, self.phases = trial.number, None, PhaseClock()
        frozen = trial.study.get_trials(deepcopy=False)[trial.number]
        queued = TrialRecord.of(frozen)  # what it was queued with: a seed, the screened trial it promotes
        seed = trial_seed(self.workspace.study.seed, queued)
        store(trial, {Attr.RETRY_OF: frozen.system_attrs.get("failed_trial"), Attr.SEED: seed,
                      Attr.WORKER: f"{socket.gethostname()}:{os.getpid()}", Attr.SAMPLER_SEED: self.sampler_seed})
        try:
            return self._run(trial, seed, queued.promoted_from)
        except optuna.TrialPruned:
            store(trial, {Attr.SECONDS: time.perf_counter() - started})
            raise
        except Exception as error:
            self.failure = error
            store(trial, {Attr.SECONDS: time.perf_counter() - started, Attr.ERROR: f"{type(error).__name__}: {error}",
                          Attr.TRACEBACK: traceback.format_exc()[-4000:]})
            raise
        finally:
            store(trial, {Attr.PHASE_SECONDS: self.phases.summary()})

    def _run(self, trial: optuna.Trial, seed: int, promoted_from: int | None) -> tuple[float, float, float]:
        """``promoted_from``: the screened trial this one runs again, to be lowered and measured; None if none."""
        study, data, baseline = self.workspace.study, self.workspace.data, self.workspace.baseline
        started = time.perf_counter()
        try:
            pipeline = sample_pipeline(trial, study.space)
            pipeline_key = pipeline.key()
            store(trial, {Attr.PIPELINE: pipeline.describe(), Attr.PIPELINE_KEY: pipeline_key,
                          Attr.STAGE_EPOCHS: [[s.kind, fine_tune_epochs(s)] for s in pipeline.stages]})
            signature = pipeline.check()
        except IncompatiblePipelineError as error:
            raise record_stop(trial, StopReason.REJECTED, f"rejected before compute: {error.problem}") from None
        original = duplicate_of(trial.study, trial.number, trial.params, pipeline_key,
                                exempt=promoted_from)
        if original is not None:
            raise record_stop(trial, StopReason.DUPLICATE, f"duplicate of trial {original}: not run again")
        if self.budget is not None and is_surplus(trial.study, trial.number, self.budget):
            # Another worker took the last trial of the budget at the same moment: run nothing.
            reason = f"over budget: {self.budget} trials were already taken by other workers"
            raise record_stop(trial, StopReason.OVER_BUDGET, reason)
        runtime = runtime_for(signature.backend, study.evaluation.float_runtime)
        store(trial, {Attr.RUNTIME: runtime, Attr.BACKEND: signature.backend})
        # Halving a promotion again would undo it.
        halving_rate = study.search.halving_rate if promoted_from is None else 0
        monitor = AccuracyMonitor(trial, stop_rule_for(trial.study, self.floor, study.search.patience_margin, len(data.classes)),
                                  tuple(s.kind for s in pipeline.stages), enabled=study.search.early_stopping,
                                  epochs=tuple(fine_tune_epochs(s) for s in pipeline.stages), halving_rate=halving_rate)
        students = self.workspace.students
        context = StageContext(data=data, teacher=baseline.model, seed=seed,
                               progress=self.progress, epoch_end_hooks=(monitor.on_epoch_end,), students=students.student)
        if study.search.early_stopping:
            with self.phases.phase("feasibility"):
                self._stop_if_infeasible(trial, pipeline, context)
        for width, architecture in sorted({(s.student_width, s.student_architecture) for s in pipeline.stages
                                           if isinstance(s, DistillationConfig) and s.student_width}):
            # The first trial of a student distils it over the full schedule: a phase of its own, so the
            # report does not charge those minutes to this trial's fine-tune.
            with self.phases.phase("student training"):
                students.student(width, architecture)

        records: list[StageRecord] = []

        def observe(record: StageRecord) -> None:
            records.append(record)
            self.phases.add(f"stage {len(records)} {record.kind}", record.seconds)
            store(trial, {Attr.STAGES: [vars(r) for r in records]})
            monitor.observe(cast(float, record.metrics["val_top1"]), record.description)

        monitor.start()
        try:
            model, _ = pipeline.run(CompressedModel(copy.deepcopy(baseline.model)), context,
                                    meter=self._stage_meter, observers=(observe,))
        except optuna.TrialPruned:
            # A stage stopped midway (early stopping, halving) trained until then: its time is that stage's.
            # (A stop at a stage's closing measurement comes after `observe` counted the stage.)
            if monitor.stage == len(records):
                self.phases.add(f"stage {len(records) + 1} {pipeline.stages[len(records)].kind}", monitor.seconds_in_stage)
            raise
        model_val = cast(float, records[-1].metrics["val_top1"]) if records else self.workspace.profile.val_top1
        if records and not study.search.lower_below_floor:
            self._stop_if_below_floor(trial, model_val)
        with self.phases.phase("screening"):
            structure = structure_of(model.module, runtime, str(model.backend))
            history = [TrialRecord.of(t) for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
            estimate = self._estimate(trial, structure, model, runtime, model_val, history)
            # Screened only when screening is on, the trial is no promotion, and it could not join the measured front.
            screens = (estimate is not None and study.search.screening and promoted_from is None
                       and not could_matter(estimate, structure, history))
        if estimate is not None and screens:
            return self._screened(trial, estimate, started)
        return self._measure(trial, model, runtime, started)

    def _estimate(self, trial: optuna.Trial, structure: Structure, model: CompressedModel, runtime: LoweredRuntime,
                  model_val: float, history: list[TrialRecord]) -> Estimate | None:
        """Estimate the would-be artifact's objectives from the study's completed trials (see ``search.screening``)."""
        estimated = estimate(structure, model_val, runtime, model.backend is not None, history,
                             ScreeningRule.of(self.workspace.study.search))
        store(trial, {Attr.STRUCTURE: structure.as_dict(), Attr.ESTIMATE: None if estimated is None else estimated.as_dict()})
        return estimated

    def _screened(self, trial: optuna.Trial, estimated: Estimate, started: float) -> tuple[float, float, float]:
        """Record a screened candidate: its estimated objectives and constraints (so the sampler learns from
        it), fidelity "estimated", no artifact and no target verdict."""
        targets = self.workspace.study.targets
        accuracy, latency, size = estimated.values
        constraints = {"accuracy": self.floor - accuracy, "size": size - (1 - targets.size_reduction),
                       "latency": latency - (1 - targets.latency_reduction), "parity": 0.0}
        for key, value in constraints.items():
            trial.set_constraint(key, value)
        store(trial, {Attr.FIDELITY: Fidelity.ESTIMATED.value, Attr.CONSTRAINTS: constraints,
                      Attr.SECONDS: time.perf_counter() - started})
        return estimated.values

    def _stop_if_below_floor(self, trial: optuna.Trial, val_top1: float) -> None:
        # The artifact's accuracy follows its PyTorch model's within the parity rule (a point or so
        # for int8), so a model this far below the floor cannot ship: lowering it only costs time.
        margin = self.workspace.study.search.below_floor_margin
        if val_top1 < self.floor - margin:
            trial.set_constraint("accuracy", self.floor - val_top1)
            raise record_stop(trial, StopReason.BELOW_FLOOR,
                              f"val top-1 {val_top1:.3f} after the last stage is more than {margin:.2f} below the "
                              f"accuracy floor {self.floor:.3f}: infeasible whatever its size, so not lowered")

    def _stop_if_infeasible(self, trial: optuna.Trial, pipeline, context: StageContext) -> None:
        example = self.workspace.example_input
        if self._baseline_footprint is None:
            self._baseline_footprint = footprint(type(pipeline)(()), self.workspace.baseline.model, context, example)
        candidate = footprint(pipeline, self.workspace.baseline.model, context, example)
        store(trial, {Attr.ESTIMATED_FLOPS: candidate.flops, Attr.ESTIMATED_WEIGHT_BYTES: candidate.weight_bytes})
        targets = self.workspace.study.targets
        reason = infeasibility(candidate, self._baseline_footprint, 1 - targets.size_reduction, 1 - targets.latency_reduction)
        if reason:
            raise record_stop(trial, StopReason.BEFORE_TRAINING, f"stopped before training: {reason}")

    def evaluate(self, model: CompressedModel, runtime: LoweredRuntime) -> Candidate:
        """Lower ``model`` to ``runtime`` and measure the artifact itself: accuracy, parity, latency, size."""
        data = self.workspace.data
        with self.phases.phase("lowering"):
            lowered = lower(model, runtime, example_input=self.workspace.example_input)
            assert lowered.artifact is not None
            run = load_runner(lowered.artifact, runtime, lowered.backend)
        # Accuracy is that of the shipped artifact in its runtime, not of the PyTorch model.
        with self.phases.phase("artifact accuracy"):
            val_logits, val_labels = predict_logits(run, data.loader("val"))
            test_logits, test_labels = predict_logits(run, data.loader("test"))
        with self.phases.phase("parity"), quantized_engine(model.backend):
            reference_logits, _ = predict_logits(model.module, data.loader("test"))
        with self.phases.phase("latency"):
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

    def _measure(self, trial: optuna.Trial, model: CompressedModel, runtime: LoweredRuntime, started: float) -> tuple[float, float, float]:
        study = self.workspace.study
        candidate = self.evaluate(model, runtime)
        targets = study.targets
        constraints = {
            "accuracy": self.floor - candidate.val.top1,
            "size": candidate.size_ratio - (1 - targets.size_reduction),
            "latency": candidate.latency_ratio - (1 - targets.latency_reduction),
            "parity": candidate.parity_rule.shortfall(candidate.parity),
        }
        for key, value in constraints.items():
            trial.set_constraint(key, value)
        latency = candidate.latency
        attrs: dict[Attr, object] = {
            Attr.VAL: candidate.val.as_dict(), Attr.TEST: candidate.test.as_dict(),
            Attr.VAL_CORRECT: pack_correct(candidate.val_correct), Attr.TEST_CORRECT: pack_correct(candidate.test_correct),
            Attr.EVIDENCE: {split: split_evidence(correct, self.workspace.profile.correct(split)).as_dict()
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
            Attr.DEPLOYMENT: deployment_label(runtime, model.backend),
            Attr.PARITY: candidate.parity.as_dict(), Attr.PARITY_RULE: candidate.parity_rule.as_dict(),
            Attr.PARITY_OK: candidate.parity_rule.passes(candidate.parity),
            Attr.ARTIFACT_BYTES: candidate.size.bytes, Attr.ARTIFACT_GZIP_BYTES: candidate.size.gzip_bytes,
            Attr.DELEGATION: candidate.delegation.as_dict() if candidate.delegation else None,
            Attr.CONSTRAINTS: constraints, Attr.MEETS_TARGETS: all(c <= 0 for c in constraints.values()),
            Attr.FIDELITY: Fidelity.MEASURED.value,
        }
        store(trial, attrs)
        if attrs[Attr.PARITY_OK]:
            self._store_artifact(trial, candidate)
        store(trial, {Attr.SECONDS: time.perf_counter() - started})
        return candidate.val.top1, candidate.latency_ratio, candidate.size_ratio

    def _store_artifact(self, trial: optuna.Trial, candidate: Candidate) -> None:
        """Keep the artifact (and the logits export checks it against); only parity-checked ones are kept."""
        artifact_dir = self.workspace.study.run_dir / "trials" / f"{trial.number:05d}"
        save_torch(artifact_dir / "reference_logits.pt", candidate.reference_logits)
        path = write_bytes(artifact_dir / f"model{ARTIFACT_SUFFIX[candidate.runtime]}", candidate.artifact)
        store(trial, {Attr.ARTIFACT_PATH: str(path), Attr.ARTIFACT_SHA256: sha256_of(path)})
        artifact_id = optuna.artifacts.upload_artifact(artifact_store=self.artifact_store, file_path=str(path),
                                                      study_or_trial=trial)
        store(trial, {Attr.ARTIFACT_ID: artifact_id})
