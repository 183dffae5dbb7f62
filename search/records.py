"""What crosses the storage boundary: the objectives, every trial and study attribute's key, why a
trial stopped, the one writer of trial attributes (``store``) and of study attributes
(``store_study``), and the one reader of each (``TrialRecord``, ``StudyRecord``).

Keys and values stay the plain JSON stored so far under the same names, so studies written before
still read, and the dashboard shows the same readable attributes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from udacisense.evaluators.intervals import unpack_correct
from udacisense.evaluators.structure import Structure
from udacisense.runtime.backends import Backend, deployment_label
from udacisense.search.evidence import SplitEvidence


@dataclass(frozen=True)
class Objective:
    name: str
    direction: Literal["maximize", "minimize"]
    # Reference point of the hypervolume, in minimisation form (a maximised objective is negated).
    hv_reference: float


OBJECTIVES = (
    Objective("val_accuracy", "maximize", 0.0),  # the shipped artifact's validation top-1
    Objective("latency_ratio", "minimize", 2.0),  # to the float baseline in the reference runtime
    Objective("size_ratio", "minimize", 2.0),  # artifact bytes to the baseline's in the same runtime
)
OBJECTIVE_NAMES: tuple[str, ...] = tuple(o.name for o in OBJECTIVES)
DIRECTIONS: tuple[Literal["maximize", "minimize"], ...] = tuple(o.direction for o in OBJECTIVES)
HV_REFERENCE: tuple[float, ...] = tuple(o.hv_reference for o in OBJECTIVES)


def as_losses(values: tuple[float, ...] | list[float]) -> list[float]:
    """Objective values in minimisation form (maximised objectives negated), for dominance and hypervolume."""
    return [-v if o.direction == "maximize" else v for o, v in zip(OBJECTIVES, values, strict=True)]


def dominates_in_losses(a: Sequence[float], b: Sequence[float]) -> bool:
    """Points in minimisation form: ``a`` is no worse than ``b`` in every coordinate and better in one."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and list(a) != list(b)


class Attr(enum.StrEnum):
    """The user attributes a trial carries (stored under these names)."""

    PIPELINE = "pipeline"
    PIPELINE_KEY = "pipeline_key"  # Pipeline.key(): equal for samples that differ only in unused parameters
    STAGES = "stages"
    RUNTIME = "runtime"
    BACKEND = "backend"
    WORKER = "worker"
    SAMPLER_SEED = "sampler_seed"
    SEED = "seed"  # the seed its stages trained with; queued with a replay, so it trains as its original did
    STAGE_EPOCHS = "stage_epochs"  # [kind, fine-tune epochs] of every sampled stage, in order: what it would train
    RETRY_OF = "retry_of"
    SECONDS = "seconds"
    PHASE_SECONDS = "phase_seconds"
    CURVE = "curve"
    ESTIMATED_FLOPS = "estimated_flops"  # of the trial's final model, before it trained (search.feasibility)
    ESTIMATED_WEIGHT_BYTES = "estimated_weight_bytes"
    VAL = "val"
    TEST = "test"
    VAL_CORRECT = "val_correct"  # which validation images the artifact gets right (evaluators.intervals.pack_correct)
    TEST_CORRECT = "test_correct"
    EVIDENCE = "evidence"  # per split: accuracy with its interval, paired drop against the baseline (search.evidence)
    LATENCY = "latency"
    REFERENCE_LATENCY = "reference_latency"
    REFERENCE_LATENCY_MS = "reference_latency_ms"
    REFERENCE_RUNTIME = "reference_runtime"
    LATENCY_MS = "latency_ms"
    LATENCY_RATIO_P10 = "latency_ratio_p10"
    LATENCY_RATIO_P90 = "latency_ratio_p90"
    LATENCY_RATIO_SAME_RUNTIME = "latency_ratio_same_runtime"
    SAME_RUNTIME_LATENCY = "same_runtime_latency"
    SIZE_RATIO_SAME_RUNTIME = "size_ratio_same_runtime"
    TORCH_THREADS = "torch_threads"
    EXECUTORCH_THREADS = "executorch_threads"
    DEPLOYMENT = "deployment"
    CONSTRAINTS = "constraints"
    PARITY = "parity"
    PARITY_RULE = "parity_rule"
    PARITY_OK = "parity_ok"
    ARTIFACT_BYTES = "artifact_bytes"
    ARTIFACT_GZIP_BYTES = "artifact_gzip_bytes"
    ARTIFACT_PATH = "artifact_path"
    ARTIFACT_SHA256 = "artifact_sha256"
    ARTIFACT_ID = "artifact_id"
    DELEGATION = "delegation"
    MEETS_TARGETS = "meets_targets"
    # Why a trial stopped without a result: a StopReason (kept under its historical name).
    STOP_REASON = "stage"
    STOP_MESSAGE = "pruned_reason"
    ERROR = "error"
    TRACEBACK = "traceback"
    STOPPED_TRIAL = "stopped_trial"
    # Screening (search.screening): what the trial's model is made of, what its objectives were estimated
    # at before lowering, and whether its values were measured on a lowered artifact or only estimated.
    STRUCTURE = "structure"  # evaluators.structure.Structure.as_dict()
    ESTIMATE = "estimate"  # search.screening.Estimate.as_dict(), made before the trial was lowered or screened
    FIDELITY = "fidelity"  # a Fidelity
    PROMOTED_FROM = "promoted_from"  # the screened trial this one runs again to lower and measure it
    PORTFOLIO_ENTRY = "portfolio_entry"  # the index in search.portfolio of the known-good pipeline it was queued as


class StudyAttr(enum.StrEnum):
    """The user attributes a study carries: what read-only commands need besides the trials, so that
    ``front``, ``report`` and ``verify`` work from the storage alone on any machine that reaches it."""

    SETTINGS = "settings"  # the settings its trials were measured under (see storage.check_settings)
    BASELINE_PROFILE = "baseline_profile"  # the baseline's metrics.json document
    EXPORTED_CARD = "exported_card"  # the model card of the latest `udacisense export`
    RETIMED_FRONT = "retimed_front"  # the front as re-timed before the latest pick
    FALSE_STOPS = "false_stops"  # the stopped trials continued to the end, to measure false stops


class Fidelity(enum.StrEnum):
    """How a completed trial's objective values were obtained."""

    MEASURED = "measured"  # its artifact was lowered, run and timed itself
    ESTIMATED = "estimated"  # screened: its PyTorch model's accuracy and its structure's known or modelled cost


class StopReason(enum.StrEnum):
    REJECTED = "rejected"  # an impossible stage order, before any compute
    DUPLICATE = "duplicate"  # another trial already has this configuration
    OVER_BUDGET = "over-budget"  # another worker took the budget's last trial first
    BEFORE_TRAINING = "before-training"  # estimated size or FLOPs miss the targets
    DURING_TRAINING = "during-training"  # validation accuracy hopeless (the early-stopping rule)
    BELOW_FLOOR = "below-floor"  # trained, but clearly below the accuracy floor: not lowered or measured
    HALVED = "halved"  # outranked where successive halving looked at it: its other epochs not trained (search.halving)


# Trials that ran no compute and spend no budget.
UNSPENT = (StopReason.REJECTED, StopReason.DUPLICATE, StopReason.OVER_BUDGET)
# Stops that happen only with `search.early_stopping` on: the compute they cut is its saving. A
# below-floor stop is not one of them: it happens whatever early stopping is set to.
STOPPED_BY_EARLY_STOPPING = (StopReason.BEFORE_TRAINING, StopReason.DURING_TRAINING, StopReason.HALVED)


def store(trial: optuna.Trial, attrs: Mapping[Attr, object]) -> None:
    """Store user attributes on a running trial; every writer goes through here, so each key is an ``Attr``."""
    for key, value in attrs.items():
        trial.set_user_attr(Attr(key).value, value)


def queued_attrs(attrs: Mapping[Attr, object]) -> dict[str, object]:
    """User attributes for a trial queued before it runs (``enqueue_trial``, ``create_trial``), keyed as ``store`` keys them."""
    return {Attr(key).value: value for key, value in attrs.items() if value is not None}


def store_study(study: optuna.Study, attrs: Mapping[StudyAttr, object]) -> None:
    """Store user attributes on a study; every writer goes through here, so each key is a ``StudyAttr``."""
    for key, value in attrs.items():
        study.set_user_attr(StudyAttr(key).value, value)


def record_stop(trial: optuna.Trial, reason: StopReason, message: str) -> optuna.TrialPruned:
    """Record why ``trial`` stops (the report and the budget read it back), for raising."""
    store(trial, {Attr.STOP_MESSAGE: message, Attr.STOP_REASON: reason.value})
    return optuna.TrialPruned(message)


def optional_float(value: Any) -> float | None:
    """A stored number that may be absent (null)."""
    return None if value is None else float(value)


def optional_int(value: object) -> int | None:
    """A stored count that may be absent (null)."""
    return None if value is None else int(value)  # type: ignore[call-overload]


@dataclass(frozen=True)
class TrialRecord:
    """A stored trial as its readers see it: objective values by name and typed attributes.

    An attribute the trial never stored (a study from an older version, a trial that stopped before
    it was measured) reads as None, an empty container, or the default named on its property.
    """

    trial: FrozenTrial

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialRecord:
        return cls(trial)

    def _attr(self, key: Attr, default: Any = None) -> Any:
        return self.trial.user_attrs.get(key.value, default)

    def _report(self, key: Attr) -> dict[str, Any]:
        """A stored report (a dict of measurements); empty when absent."""
        value = self._attr(key)
        return dict(value) if isinstance(value, Mapping) else {}

    @property
    def number(self) -> int:
        return self.trial.number

    @property
    def state(self) -> TrialState:
        return self.trial.state

    @property
    def has_values(self) -> bool:
        """Completed with objective values: a point of the trade-off."""
        return self.state is TrialState.COMPLETE and bool(self.trial.values)

    @property
    def fidelity(self) -> Fidelity:
        """Trials stored before screening existed were all lowered: measured."""
        return Fidelity(self._attr(Attr.FIDELITY, Fidelity.MEASURED.value))

    @property
    def is_measured(self) -> bool:
        """Completed with values measured on its own lowered artifact: a point that can be picked, exported or reported."""
        return self.has_values and self.fidelity is Fidelity.MEASURED

    @property
    def structure(self) -> Structure | None:
        document = self._attr(Attr.STRUCTURE)
        return Structure.from_dict(document) if isinstance(document, Mapping) else None

    @property
    def estimate(self) -> dict[str, Any]:
        """The objectives as estimated before lowering (see ``search.screening.Estimate``); empty when none was made."""
        return self._report(Attr.ESTIMATE)

    @property
    def model_val_top1(self) -> float | None:
        """Validation top-1 of the PyTorch model after the last stage (before lowering); None without stages."""
        stages = self.stages
        return optional_float(stages[-1].get("metrics", {}).get("val_top1")) if stages else None

    @property
    def promoted_from(self) -> int | None:
        return optional_int(self._attr(Attr.PROMOTED_FROM))

    @property
    def portfolio_entry(self) -> int | None:
        return optional_int(self._attr(Attr.PORTFOLIO_ENTRY))

    @property
    def values(self) -> tuple[float, ...]:
        """The objective values in ``OBJECTIVE_NAMES`` order."""
        if not self.has_values:
            raise ValueError(f"trial {self.number} is {self.state.name.lower()}: it has no objective values")
        return tuple(float(v) for v in self.trial.values)

    def value(self, name: str) -> float:
        """One objective value, by name."""
        return self.values[OBJECTIVE_NAMES.index(name)]

    @property
    def val_accuracy(self) -> float:
        return self.value("val_accuracy")

    @property
    def latency_ratio(self) -> float:
        return self.value("latency_ratio")

    @property
    def size_ratio(self) -> float:
        return self.value("size_ratio")

    @property
    def pipeline(self) -> str:
        return str(self._attr(Attr.PIPELINE, ""))

    @property
    def stages(self) -> list[dict[str, Any]]:
        """Each stage as stored: kind, description, seconds, metrics measured after it."""
        return list(self._attr(Attr.STAGES, []))

    @property
    def stage_kinds(self) -> frozenset[str]:
        return frozenset(str(s.get("kind")) for s in self.stages)

    @property
    def runtime(self) -> str:
        """The runtime the artifact ships in; empty before the trial chose one."""
        return str(self._attr(Attr.RUNTIME, ""))

    @property
    def backend(self) -> Backend | None:
        """The quantization backend; None for a float model."""
        return cast("Backend | None", self._attr(Attr.BACKEND))

    def deployment(self, short: bool = False) -> str:
        return deployment_label(self.runtime, self.backend, short=short)

    @property
    def seconds(self) -> float:
        """Seconds the trial took: as it measured itself, else from its timestamps, else 0."""
        seconds = self._attr(Attr.SECONDS)
        if seconds is not None:
            return float(seconds)
        if self.trial.datetime_start and self.trial.datetime_complete:
            return (self.trial.datetime_complete - self.trial.datetime_start).total_seconds()
        return 0.0

    @property
    def phase_seconds(self) -> dict[str, float]:
        return {str(k): float(v) for k, v in self._report(Attr.PHASE_SECONDS).items()}

    @property
    def curve(self) -> list[list[Any]]:
        """Validation accuracy as [stage index, stage kind, epoch or None, top-1, seconds into the stage]
        points (see ``early_stopping``); older studies stored [stage, epoch, top-1] or [step, top-1]."""
        return [list(point) for point in self._attr(Attr.CURVE, [])]

    @property
    def footprint(self) -> tuple[int, int] | None:
        """(FLOPs, weight bytes) of the trial's final model, estimated before it trained; None without the estimate."""
        flops, weight_bytes = optional_int(self._attr(Attr.ESTIMATED_FLOPS)), optional_int(self._attr(Attr.ESTIMATED_WEIGHT_BYTES))
        return None if flops is None or weight_bytes is None else (flops, weight_bytes)

    @property
    def stage_epochs(self) -> list[tuple[str, int]]:
        """(kind, fine-tune epochs) of every stage the trial sampled, run or not; empty for older trials."""
        return [(str(kind), int(epochs)) for kind, epochs in self._attr(Attr.STAGE_EPOCHS, [])]

    @property
    def test_top1(self) -> float | None:
        return optional_float(self._report(Attr.TEST).get("top1"))

    def evidence(self, split: Literal["val", "test"]) -> SplitEvidence | None:
        """The artifact's accuracy on ``split`` with its interval and its paired drop against the baseline;
        None for a trial that was not measured, or stored before intervals were."""
        document = self._report(Attr.EVIDENCE).get(split)
        return SplitEvidence.from_dict(document) if isinstance(document, Mapping) else None

    def correct(self, split: Literal["val", "test"]) -> torch.Tensor | None:
        """Which images of ``split`` the artifact gets right; None when not stored."""
        text = self._attr(Attr.VAL_CORRECT if split == "val" else Attr.TEST_CORRECT)
        return unpack_correct(text) if isinstance(text, str) else None

    @property
    def test_per_class(self) -> list[float]:
        return [float(v) for v in self._report(Attr.TEST).get("per_class", [])]

    @property
    def latency_ms(self) -> float | None:
        """Median ms of the artifact at batch 1 (from the full latency report the flat attribute copies)."""
        return optional_float(self._report(Attr.LATENCY).get("median_ms"))

    @property
    def latency_p10_ms(self) -> float | None:
        return optional_float(self._report(Attr.LATENCY).get("p10_ms"))

    @property
    def latency_p90_ms(self) -> float | None:
        return optional_float(self._report(Attr.LATENCY).get("p90_ms"))

    @property
    def reference_latency_ms(self) -> float | None:
        """Median ms of the float baseline in the reference runtime, timed alongside."""
        return optional_float(self._report(Attr.REFERENCE_LATENCY).get("median_ms"))

    @property
    def reference_runtime(self) -> str | None:
        return self._attr(Attr.REFERENCE_RUNTIME)

    @property
    def latency_ratio_p10(self) -> float | None:
        return optional_float(self._attr(Attr.LATENCY_RATIO_P10))

    @property
    def latency_ratio_p90(self) -> float | None:
        return optional_float(self._attr(Attr.LATENCY_RATIO_P90))

    @property
    def latency_ratio_same_runtime(self) -> float | None:
        return optional_float(self._attr(Attr.LATENCY_RATIO_SAME_RUNTIME))

    @property
    def artifact_path(self) -> Path | None:
        """Where the artifact was kept; None when it was not (a parity failure keeps none)."""
        path = self._attr(Attr.ARTIFACT_PATH)
        return None if path is None else Path(path)

    @property
    def artifact_bytes(self) -> int | None:
        return optional_int(self._attr(Attr.ARTIFACT_BYTES))

    @property
    def artifact_gzip_bytes(self) -> int | None:
        return optional_int(self._attr(Attr.ARTIFACT_GZIP_BYTES))

    @property
    def artifact_sha256(self) -> str | None:
        return self._attr(Attr.ARTIFACT_SHA256)

    @property
    def delegation(self) -> dict[str, Any] | None:
        """XNNPACK coverage of a ``.pte`` (None: a TorchScript artifact, or a trial from before it was recorded)."""
        value = self._attr(Attr.DELEGATION)
        return value if isinstance(value, dict) else None

    @property
    def operator_count(self) -> int | None:
        """Operators the ``.pte`` runs, delegated and portable; None for TorchScript, or a trial stored before it was counted."""
        return optional_int((self.delegation or {}).get("operator_count"))

    @property
    def parity(self) -> dict[str, Any]:
        """The artifact against its PyTorch model on the test split: top1_agreement, max_abs_diff, samples."""
        return self._report(Attr.PARITY)

    @property
    def parity_ok(self) -> bool:
        # Trials from before parity was a trial constraint were only checked at export: True.
        return bool(self._attr(Attr.PARITY_OK, True))

    @property
    def meets_targets(self) -> bool | None:
        """Whether every constraint was met; None for trials that recorded no verdict."""
        value = self._attr(Attr.MEETS_TARGETS)
        return None if value is None else bool(value)

    @property
    def constraints(self) -> dict[str, float]:
        """Each target's shortfall (<= 0 meets it)."""
        return {str(k): float(v) for k, v in self._report(Attr.CONSTRAINTS).items()}

    @property
    def stop_reason(self) -> StopReason | None:
        value = self._attr(Attr.STOP_REASON)
        return StopReason(value) if isinstance(value, str) and value in StopReason._value2member_map_ else None

    @property
    def stop_message(self) -> str:
        return str(self._attr(Attr.STOP_MESSAGE, ""))

    @property
    def error(self) -> str | None:
        """The exception a failed trial raised, as ``Type: message``."""
        return self._attr(Attr.ERROR)

    @property
    def worker(self) -> str | None:
        """``host:pid`` of the process that ran the trial."""
        return self._attr(Attr.WORKER)

    @property
    def sampler_seed(self) -> int | None:
        return optional_int(self._attr(Attr.SAMPLER_SEED))

    @property
    def seed(self) -> int | None:
        """The seed its stages train with; None for a trial stored before seeds were recorded (or not yet started)."""
        return optional_int(self._attr(Attr.SEED))

    @property
    def retry_of(self) -> int | None:
        """The failed trial this one retries."""
        return optional_int(self._attr(Attr.RETRY_OF))

    @property
    def stopped_trial(self) -> int | None:
        """The early-stopped trial this one runs again to completion (``search.false_stops``)."""
        return optional_int(self._attr(Attr.STOPPED_TRIAL))


@dataclass(frozen=True)
class FalseStopTrial:
    """A trial the early-stopping rule stopped, run again to the end: same parameters, same seed, early stopping off."""

    original: int  # the stopped trial
    rerun: int  # its replay, in the sibling study the replays ran in
    final_val: float  # validation top-1 the replay ended with (its model's where it stopped below the floor)
    floor: float  # the accuracy floor of the original study
    reached: bool  # it reached the floor: the stop was a false one


@dataclass(frozen=True)
class FalseStops:
    """How many stopped trials would have reached the floor, as ``search.false_stops`` measured it."""

    trials: tuple[FalseStopTrial, ...]

    @property
    def measured(self) -> int:
        return len(self.trials)

    @property
    def false_stops(self) -> int:
        return sum(1 for t in self.trials if t.reached)

    def as_dict(self) -> dict[str, Any]:
        return {"measured": self.measured, "false_stops": self.false_stops, "trials": [vars(t) for t in self.trials]}

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> FalseStops:
        return cls(tuple(FalseStopTrial(int(t["original"]), int(t["rerun"]), float(t["final_val"]), float(t["floor"]),
                                        bool(t["reached"])) for t in document.get("trials", [])))


@dataclass(frozen=True)
class StudyRecord:
    """A stored study's user attributes as their readers see them; one an older study lacks reads as None."""

    attrs: Mapping[str, Any]

    @classmethod
    def of(cls, study: optuna.Study) -> StudyRecord:
        return cls(study.user_attrs)  # one read of the storage for every attribute

    def _document(self, key: StudyAttr) -> dict[str, Any] | None:
        value = self.attrs.get(key.value)
        return dict(value) if isinstance(value, Mapping) else None

    @property
    def settings(self) -> dict[str, Any] | None:
        """The settings the stored trials were measured under, as dotted keys."""
        return self._document(StudyAttr.SETTINGS)

    @property
    def baseline_profile(self) -> dict[str, Any] | None:
        """The float baseline's measurements (the ``metrics.json`` document) the trials were measured against."""
        return self._document(StudyAttr.BASELINE_PROFILE)

    @property
    def exported_card(self) -> dict[str, Any] | None:
        """The model card of the latest ``udacisense export``."""
        return self._document(StudyAttr.EXPORTED_CARD)

    @property
    def retimed_front(self) -> list[dict[str, Any]] | None:
        """The front's rows as re-timed before the latest pick (``retimed`` says which were); None when never re-timed."""
        rows = self.attrs.get(StudyAttr.RETIMED_FRONT.value)
        return [dict(row) for row in rows if isinstance(row, Mapping)] if isinstance(rows, list) else None

    @property
    def false_stops(self) -> FalseStops | None:
        """The stopped trials re-run to the end (``search.false_stops``); None when never measured."""
        document = self._document(StudyAttr.FALSE_STOPS)
        return None if document is None else FalseStops.from_dict(document)


def records(trials: Iterable[FrozenTrial]) -> list[TrialRecord]:
    return [TrialRecord.of(t) for t in trials]
