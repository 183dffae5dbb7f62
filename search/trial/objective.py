"""One trial: sample a pipeline, reject or stop it early if hopeless, build it, measure what ships."""

from __future__ import annotations

import copy
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import optuna

from udacisense.common.errors import IncompatiblePipelineError
from udacisense.compression.distillation import DistillationConfig
from udacisense.compression.pipeline import Pipeline, StageRecord
from udacisense.compression.stage import CompressedModel, ModelForm, StageConfig, StageContext
from udacisense.evaluators.accuracy import evaluate_accuracy
from udacisense.evaluators.flops import count_flops
from udacisense.evaluators.size import parameter_counts, state_dict_bytes
from udacisense.evaluators.structure import structure_of
from udacisense.runtime import LoweredRuntime, runtime_for
from udacisense.search.study.budget import stop_if_not_needed
from udacisense.search.study.records import DISTILLED, Attr, StopReason, StudyRecord, record_stop, store
from udacisense.search.study.trial_record import TrialRecord
from udacisense.search.study.workspace import Workspace
from udacisense.search.trial.early_stopping import AccuracyMonitor, stop_if_below_floor, stop_rule_for
from udacisense.search.trial.feasibility import Footprint, footprint, stop_if_infeasible
from udacisense.search.trial.measuring import Yardstick, store_artifact, target_constraints
from udacisense.search.trial.phases import PhaseClock
from udacisense.search.trial.screening import record_screened, screen
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


@dataclass
class TrialRunner:
    """Runs trials of one study in one process: build the candidate, judge it, measure it, store it."""

    workspace: Workspace
    artifact_store: optuna.artifacts.FileSystemArtifactStore
    progress: bool = False
    budget: int | None = None  # the study's trial budget, shared by every worker; None: no check
    current_trial: int | None = None  # the trial this process is running, for clean interruption
    sampler_seed: int | None = None  # this process's sampler seed, recorded so its trials can be replayed
    failure: Exception | None = None  # why the last trial failed, for the worker to judge (Optuna keeps only text)
    phases: PhaseClock = field(default_factory=PhaseClock)  # the running trial's seconds per phase
    trials_dir: Path | None = None  # where artifacts are kept, a folder per trial; None: the study's ``trials`` folder
    yardstick: Yardstick = field(init=False)
    _baseline_footprint: Footprint | None = None

    def __post_init__(self) -> None:
        self.yardstick = Yardstick(self.workspace)

    @property
    def floor(self) -> float:
        return self.yardstick.floor

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
            raise
        except Exception as error:
            self.failure = error
            store(trial, {Attr.ERROR: f"{type(error).__name__}: {error}", Attr.TRACEBACK: traceback.format_exc()[-4000:]})
            raise
        finally:
            store(trial, {Attr.SECONDS: time.perf_counter() - started, Attr.PHASE_SECONDS: self.phases.summary()})
            # Read back from what it stored (its stop reason, error or fidelity), so the words match its log line.
            ended = TrialRecord.of(trial.study.get_trials(deepcopy=False)[trial.number])
            store(trial, {Attr.OUTCOME: ended.outcome})

    def _run(self, trial: optuna.Trial, seed: int, promoted_from: int | None) -> tuple[float, float, float]:
        """``promoted_from``: the screened trial this one runs again, to be lowered and measured; None if none."""
        study = self.workspace.study
        pipeline, runtime = self._sample(trial, promoted_from)
        model, model_val = self._build(trial, pipeline, seed, promoted_from)
        if model_val is not None and not study.search.lower_below_floor:
            stop_if_below_floor(trial, model_val, self.floor, study.search.below_floor_margin)
        with self.phases.phase("screening"):
            structure = structure_of(model.module, runtime, str(model.backend))
            estimated = screen(trial, structure, self.workspace.profile.val_top1 if model_val is None else model_val,
                               runtime, model.backend is not None, study.search, promoted_from)
        if estimated is not None:
            accuracy, latency, size = estimated.values
            return record_screened(trial, estimated, target_constraints(study.targets, self.floor, accuracy, latency, size))
        return self._measure(trial, model, runtime)

    def _sample(self, trial: optuna.Trial, promoted_from: int | None) -> tuple[Pipeline, LoweredRuntime]:
        """The trial's pipeline and the runtime it ships in; stopped here if it needs no compute."""
        study = self.workspace.study
        try:
            pipeline = sample_pipeline(trial, study.space)
            pipeline_key = pipeline.key()
            store(trial, {Attr.PIPELINE: pipeline.describe(), Attr.PIPELINE_KEY: pipeline_key,
                          Attr.STAGE_EPOCHS: [[s.kind, fine_tune_epochs(s)] for s in pipeline.stages]})
            signature = pipeline.check()
        except IncompatiblePipelineError as error:
            raise record_stop(trial, StopReason.REJECTED, f"rejected before compute: {error.problem}") from None
        self._stop_if_student_not_distilled(trial, pipeline)
        stop_if_not_needed(trial, pipeline_key, promoted_from, self.budget)
        runtime = runtime_for(signature.backend, study.evaluation.float_runtime)
        store(trial, {Attr.RUNTIME: runtime, Attr.BACKEND: signature.backend})
        return pipeline, runtime

    def _stop_if_student_not_distilled(self, trial: optuna.Trial, pipeline: Pipeline) -> None:
        """In a probed study the first worker decides which students to distil (``workers.students``); a trial that
        samples one it has not distilled is rejected rather than distilling it on the spot. One it distilled but
        this machine lacks (a ``udacisense worker`` elsewhere) is distilled here, as the trial's own phase."""
        stored = StudyRecord.of(trial.study)
        if stored.probes is None:
            return
        shelf, decisions = self.workspace.students, stored.student_decisions
        for stage in pipeline.stages:
            if isinstance(stage, DistillationConfig) and stage.student_width:
                name = shelf.name(stage.student_width, stage.student_architecture)
                if decisions.get(name) != DISTILLED and not shelf.trained(stage.student_width, stage.student_architecture):
                    why = decisions.get(name, "not distilled yet: the first worker decides the students in their probes' order")
                    raise record_stop(trial, StopReason.NO_STUDENT, f"rejected before compute: student {name} {why}")

    def _build(self, trial: optuna.Trial, pipeline: Pipeline, seed: int,
               promoted_from: int | None) -> tuple[CompressedModel, float | None]:
        """Run the pipeline's stages on a copy of the baseline under early stopping and halving; returns the
        model and its validation top-1 after the last stage (None for a pipeline without stages)."""
        study, data, baseline = self.workspace.study, self.workspace.data, self.workspace.baseline
        epochs = tuple(fine_tune_epochs(s) for s in pipeline.stages)
        monitor = AccuracyMonitor(trial, stop_rule_for(trial.study, self.floor, study.search.patience_margin, len(data.classes)),
                                  tuple(s.kind for s in pipeline.stages), enabled=study.search.early_stopping, epochs=epochs,
                                  halving_rate=study.search.halving_rate if promoted_from is None else 0)  # halving a promotion would undo it
        students = self.workspace.students
        context = StageContext(data=data, teacher=baseline.model, seed=seed, progress=self.progress,
                               epoch_end_hooks=(monitor.on_epoch_end,), students=students.student)
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
        return model, cast(float, records[-1].metrics["val_top1"]) if records else None

    def _stage_meter(self, model: CompressedModel, stage: StageConfig) -> dict[str, object]:
        data = self.workspace.data
        with self.phases.phase("validation"):
            top1 = evaluate_accuracy(model.module, data.loader("val"), len(data.classes)).top1
        metrics: dict[str, object] = {"val_top1": top1, "state_dict_bytes": len(state_dict_bytes(model.module)),
                                      "form": model.form.value}
        if model.form is ModelForm.FLOAT:
            params, nonzero = parameter_counts(model.module)
            metrics.update(parameters=params, nonzero_parameters=nonzero,
                           flops=count_flops(model.module, self.workspace.example_input))
        return metrics

    def _stop_if_infeasible(self, trial: optuna.Trial, pipeline: Pipeline, context: StageContext) -> None:
        example, model = self.workspace.example_input, self.workspace.baseline.model
        if self._baseline_footprint is None:
            self._baseline_footprint = footprint(type(pipeline)(()), model, context, example)
        targets = self.workspace.study.targets
        stop_if_infeasible(trial, footprint(pipeline, model, context, example), self._baseline_footprint,
                           targets.max_size_ratio, targets.max_latency_ratio)

    def _measure(self, trial: optuna.Trial, model: CompressedModel, runtime: LoweredRuntime) -> tuple[float, float, float]:
        candidate = self.yardstick.evaluate(model, runtime, self.phases)
        constraints = self.yardstick.constraints(candidate)
        for key, value in constraints.items():
            trial.set_constraint(key, value)
        attrs = self.yardstick.measured_attrs(candidate, model.backend, constraints)
        store(trial, attrs)
        if attrs[Attr.PARITY_OK]:
            store_artifact(trial, candidate, self.trials_dir or self.workspace.study.run_dir / "trials", self.artifact_store)
        return candidate.val.top1, candidate.latency_ratio, candidate.size_ratio
