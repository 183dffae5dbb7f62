"""What crosses the storage boundary: the objectives, every trial attribute's key, why a trial
stopped, the one writer of attributes (``store``) and the one reader of a stored trial (``TrialRecord``).

Keys and values stay the plain JSON stored so far under the same names, so studies written before
still read, and the dashboard shows the same readable attributes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import optuna
from optuna.trial import FrozenTrial, TrialState

from udacisense.runtime.backends import Backend, deployment_label


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


class Attr(enum.StrEnum):
    """The user attributes a trial carries (stored under these names)."""

    PIPELINE = "pipeline"
    PIPELINE_KEY = "pipeline_key"  # Pipeline.key(): equal for samples that differ only in unused parameters
    STAGES = "stages"
    RUNTIME = "runtime"
    BACKEND = "backend"
    WORKER = "worker"
    SAMPLER_SEED = "sampler_seed"
    RETRY_OF = "retry_of"
    SECONDS = "seconds"
    PHASE_SECONDS = "phase_seconds"
    CURVE = "curve"
    ESTIMATED_FLOPS = "estimated_flops"
    VAL = "val"
    TEST = "test"
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


class StopReason(enum.StrEnum):
    REJECTED = "rejected"  # an impossible stage order, before any compute
    DUPLICATE = "duplicate"  # another trial already has this configuration
    OVER_BUDGET = "over-budget"  # another worker took the budget's last trial first
    BEFORE_TRAINING = "before-training"  # estimated size or FLOPs miss the targets
    DURING_TRAINING = "during-training"  # validation accuracy hopeless (the early-stopping rule)
    BELOW_FLOOR = "below-floor"  # trained, but clearly below the accuracy floor: not lowered or measured


# Trials that ran no compute and spend no budget.
UNSPENT = (StopReason.REJECTED, StopReason.DUPLICATE, StopReason.OVER_BUDGET)
# Trials the early-stopping rules stopped: only these count as compute saved by early stopping.
EARLY_STOPS = (StopReason.BEFORE_TRAINING, StopReason.DURING_TRAINING, StopReason.BELOW_FLOOR)


def store(trial: optuna.Trial, attrs: Mapping[Attr, object]) -> None:
    """Store user attributes on a running trial; every writer goes through here, so each key is an ``Attr``."""
    for key, value in attrs.items():
        trial.set_user_attr(Attr(key).value, value)


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
        """Validation accuracy as (stage, epoch or None, top-1) points; older studies stored pairs."""
        return [list(point) for point in self._attr(Attr.CURVE, [])]

    @property
    def test_top1(self) -> float | None:
        return optional_float(self._report(Attr.TEST).get("top1"))

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
    def retry_of(self) -> int | None:
        """The failed trial this one retries."""
        return optional_int(self._attr(Attr.RETRY_OF))

    @property
    def stopped_trial(self) -> int | None:
        """The early-stopped trial this one runs again to completion (the false-stop benchmark)."""
        return optional_int(self._attr(Attr.STOPPED_TRIAL))


def records(trials: Iterable[FrozenTrial]) -> list[TrialRecord]:
    return [TrialRecord.of(t) for t in trials]
