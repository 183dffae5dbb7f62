"""What crosses the storage boundary: the objectives, every trial and study attribute's key, why a
trial stopped, the one writer of trial attributes (``store``) and of study attributes
(``store_study``), and the one reader of each (``TrialRecord``, ``StudyRecord``).

Keys and values stay the plain JSON stored so far under the same names, so studies written before
still read, and the dashboard shows the same readable attributes.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import optuna

from udacisense.evaluators.structure import Structure


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


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is no worse than ``b`` in every objective and better in one (directions from ``OBJECTIVES``)."""
    return dominates_in_losses(as_losses(list(a)), as_losses(list(b)))


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
    OPENING = "opening"  # True: run before the probes, as an opening trial (workers.opening)
    # How it ended, in the product's words (TrialRecord.outcome): the dashboard shows user attributes, not our stop reasons.
    OUTCOME = "outcome"


class StudyAttr(enum.StrEnum):
    """The user attributes a study carries: what read-only commands need besides the trials, so that
    ``front``, ``report`` and ``verify`` work from the storage alone on any machine that reaches it."""

    SETTINGS = "settings"  # the settings its trials were measured under (see storage.check_settings)
    BASELINE_PROFILE = "baseline_profile"  # the baseline's metrics.json document
    EXPORTED_CARD = "exported_card"  # the model card of the latest `udacisense export`
    RETIMED_FRONT = "retimed_front"  # the front as re-timed before the latest pick
    FALSE_STOPS = "false_stops"  # the stopped trials continued to the end, to measure false stops
    TECHNIQUES = "techniques"  # the rows of scripts/techniques.py: every technique alone on the baseline
    PROBES = "probes"  # what each structural option costs, the options dropped and the students ranked (workers.probes)
    STUDENTS = "students"  # the search's decision on each ranked student: distilled, or why not (workers.students)


class Fidelity(enum.StrEnum):
    """How a completed trial's objective values were obtained."""

    MEASURED = "measured"  # its artifact was lowered, run and timed itself
    ESTIMATED = "estimated"  # screened: its PyTorch model's accuracy and its structure's known or modelled cost


class StopReason(enum.StrEnum):
    REJECTED = "rejected"  # an impossible stage order, before any compute
    NO_STUDENT = "no-student"  # its student was not distilled (workers.students decided so), before any compute
    DUPLICATE = "duplicate"  # another trial already has this configuration
    OVER_BUDGET = "over-budget"  # another worker took the budget's last trial first
    BEFORE_TRAINING = "before-training"  # estimated size or FLOPs miss the targets
    DURING_TRAINING = "during-training"  # validation accuracy hopeless (the early-stopping rule)
    BELOW_FLOOR = "below-floor"  # trained, but clearly below the accuracy floor: not lowered or measured
    HALVED = "halved"  # outranked where successive halving looked at it: its other epochs not trained (search.halving)


# How a stopped trial ended, as log lines and the dashboard say it: Optuna calls every one of them "pruned",
# which reads like a pruning stage of the pipeline.
STOP_WORDS = {
    StopReason.REJECTED: "rejected, an impossible stage order",
    StopReason.NO_STUDENT: "rejected, its student was not distilled",
    StopReason.DUPLICATE: "duplicate, not run again",
    StopReason.OVER_BUDGET: "over budget, not run",
    StopReason.BEFORE_TRAINING: "stopped before training",
    StopReason.DURING_TRAINING: "stopped during training",
    StopReason.BELOW_FLOOR: "below the accuracy floor, not lowered",
    StopReason.HALVED: "halved",
}

# A student's decision (``StudyAttr.STUDENTS``) when the search distilled it; any other is why it did not.
DISTILLED = "distilled"

# Trials that ran no compute and spend no budget.
UNSPENT = (StopReason.REJECTED, StopReason.NO_STUDENT, StopReason.DUPLICATE, StopReason.OVER_BUDGET)
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
class FalseStopTrial:
    """A trial early stopping stopped, run again to the end: same parameters, same seed, early stopping,
    halving and screening off."""

    original: int  # the stopped trial
    rerun: int  # its replay, in the sibling study the replays ran in
    final_val: float  # validation top-1 the replay ended with (its model's where it stopped below the floor)
    floor: float  # the accuracy floor of the original study
    reached: bool  # it reached the floor: the stop was a false one
    # How the original stopped; documents of older versions replayed stops during training only.
    reason: StopReason = StopReason.DURING_TRAINING


@dataclass(frozen=True)
class FalseStops:
    """How many of a random sample of stopped trials would have reached the floor, as ``search.false_stops``
    measured it."""

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
                                        bool(t["reached"]), StopReason(t.get("reason", StopReason.DURING_TRAINING)))
                         for t in document.get("trials", [])))


@dataclass(frozen=True)
class Probe:
    """One program the probes lowered and timed before any trial trained (``workers.probes``): a structure in one
    form, its costs against the float baseline's ``.pte`` (timed in the same alternating rounds as a trial's)."""

    structure: str
    form: str
    latency_ratio: float
    latency_ratio_p10: float
    latency_ratio_p90: float
    size_ratio: float  # artifact bytes / the float baseline .pte's
    seconds: float  # to build, lower and time it
    # What lowering saw, keyed as a trial keys its model (``evaluators.structure``): the screen's memo and cost
    # model start from it. None for the float baseline (the yardstick itself) and in reports stored before.
    program: Structure | None = None
    runtime: str | None = None
    backend: str | None = None

    def latency(self, *, slow: bool = False) -> float:
        """Its latency ratio (``slow``: at the 90th percentile of its timing rounds)."""
        return self.latency_ratio_p90 if slow else self.latency_ratio

    def meets(self, max_latency: float, max_size: float, *, slow: bool = False) -> bool:
        """Within both allowances (``slow``: see ``latency``)."""
        return self.latency(slow=slow) <= max_latency and self.size_ratio <= max_size

    def cost(self, max_latency: float, max_size: float, *, slow: bool = False) -> float:
        """Distance from zero latency and bytes in units of the allowances: how much room it leaves for accuracy
        (``slow``: its latency at the 90th percentile of its rounds)."""
        return math.hypot(self.latency(slow=slow) / max_latency, self.size_ratio / max_size)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> Probe:
        program = document.get("program")
        return cls(**{**document, "program": None if program is None else Structure.from_dict(program)})


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

    @property
    def probes(self) -> dict[str, Any] | None:
        """The probe report (``workers.probes.ProbeReport.as_dict``); None before the study was probed."""
        return self._document(StudyAttr.PROBES)

    @property
    def probed(self) -> tuple[Probe, ...]:
        """The probe report's programs; none before the study was probed."""
        return tuple(Probe.from_dict(p) for p in (self.probes or {}).get("probes", []))

    @property
    def student_decisions(self) -> dict[str, str]:
        """Each ranked student's decision by name (``width 0.5 lean``): ``distilled``, or why it was not."""
        return {str(k): str(v) for k, v in (self._document(StudyAttr.STUDENTS) or {}).items()}

    @property
    def techniques(self) -> list[dict[str, Any]] | None:
        """The techniques benchmark's rows (``scripts/techniques.py``); None when it never ran on this study."""
        rows = self.attrs.get(StudyAttr.TECHNIQUES.value)
        return [dict(row) for row in rows if isinstance(row, Mapping)] if isinstance(rows, list) else None
