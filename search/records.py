"""What crosses the storage boundary: the objectives, every trial attribute's key, and why a trial stopped.

Every module that writes or reads a trial's user attributes names them through ``Attr``; values
keep the plain strings stored so far, so studies written before still read, and the dashboard
shows the same readable names.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

import optuna


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


def objective(trial: optuna.trial.FrozenTrial, name: str) -> float:
    """One objective value of a finished trial, by name."""
    return float(trial.values[OBJECTIVE_NAMES.index(name)])


def as_losses(values: tuple[float, ...] | list[float]) -> list[float]:
    """Objective values in minimisation form (maximised objectives negated), for dominance and hypervolume."""
    return [-v if o.direction == "maximize" else v for o, v in zip(OBJECTIVES, values, strict=True)]


class Attr(enum.StrEnum):
    """The user attributes a trial carries (stored under these names)."""

    PIPELINE = "pipeline"
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


def record_stop(trial: optuna.Trial, reason: StopReason, message: str) -> optuna.TrialPruned:
    """Record why ``trial`` stops (the report and the budget read it back), for raising."""
    trial.set_user_attr(Attr.STOP_MESSAGE, message)
    trial.set_user_attr(Attr.STOP_REASON, reason.value)
    return optuna.TrialPruned(message)


def stop_reason(trial: optuna.trial.FrozenTrial) -> StopReason | None:
    value = trial.user_attrs.get(Attr.STOP_REASON)
    return StopReason(value) if isinstance(value, str) and value in StopReason._value2member_map_ else None
