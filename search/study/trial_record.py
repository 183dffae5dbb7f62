"""The one typed reader of a stored trial (``TrialRecord``): objective values by name and every
attribute ``records.store`` writes, typed, with the default an older study reads as."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
from optuna.trial import FrozenTrial, TrialState

from udacisense.evaluators.evidence import SplitEvidence
from udacisense.evaluators.intervals import unpack_correct
from udacisense.evaluators.structure import Structure
from udacisense.runtime.backends import Backend, deployment_label
from udacisense.search.study.records import (
    OBJECTIVE_NAMES,
    STOP_WORDS,
    Attr,
    Fidelity,
    StopReason,
    optional_float,
    optional_int,
)


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
    def opening(self) -> bool:
        """Whether it ran before the probes, as one of the search's opening trials (``workers.opening``)."""
        return bool(self._attr(Attr.OPENING))

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
    def pipeline_key(self) -> str | None:
        """``Pipeline.key()`` of what it ran; None if it stopped before sampling one."""
        key = self._attr(Attr.PIPELINE_KEY)
        return None if key is None else str(key)

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
    def outcome(self) -> str:
        """How the trial ended, in the product's words (its log line, its ``outcome`` attribute on the dashboard):
        measured, screened, how it stopped, failed, or interrupted (it recorded no end: its worker was stopped)."""
        reason = self.stop_reason
        if reason is not None:
            where = self._where_training_stopped() if reason in (StopReason.HALVED, StopReason.DURING_TRAINING) else ""
            return STOP_WORDS[reason] + where
        if self.error is not None:
            return "failed"
        if Attr.FIDELITY.value in self.trial.user_attrs or self.has_values:
            return "measured" if self.fidelity is Fidelity.MEASURED else "screened on estimates, not lowered"
        return "interrupted"

    def _where_training_stopped(self) -> str:
        """" at epoch 2 of 4" (of which stage, in a pipeline of several) from the curve's last point; "" for a
        curve of an older study, which names no stage kind."""
        points = [point for point in self.curve if len(point) == 5]
        if not points:
            return ""
        stage, kind, epoch = int(points[-1][0]), str(points[-1][1]), points[-1][2]
        if epoch is None:
            return f" after stage {stage + 1} ({kind})"
        planned = [epochs for _, epochs in self.stage_epochs]
        of_planned = f" of {planned[stage]}" if stage < len(planned) else ""
        of_stage = f" of stage {stage + 1} ({kind})" if len(planned) > 1 else ""
        return f" at epoch {int(epoch) + 1}{of_planned}{of_stage}"

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


def records(trials: Iterable[FrozenTrial]) -> list[TrialRecord]:
    return [TrialRecord.of(t) for t in trials]


def describe_trial(trial: FrozenTrial, *, numbered: bool = True) -> str:
    """The trial in one line, as a worker logs it when it ends (``numbered``: after its number in the study)."""
    record = TrialRecord.of(trial)
    pipeline = (f"#{trial.number} " if numbered else "") + (record.pipeline or "?")
    if record.has_values and not record.is_measured:
        accuracy, latency, size = record.values
        return (f"{pipeline}: screened, not lowered (a measured trial dominates its optimistic point; "
                f"estimated from the {record.estimate.get('source', '?')}: acc {accuracy:.3f} latency x{latency:.2f} size x{size:.2f})")
    if record.has_values:
        parity = "" if record.parity_ok else " FAILS PARITY (infeasible, artifact not kept)"
        latency_ms = float("nan") if record.latency_ms is None else record.latency_ms
        return (f"{pipeline}: acc {record.val_accuracy:.3f} latency {latency_ms:.3f} ms "
                f"x{record.latency_ratio:.2f} of the float {record.reference_runtime or 'baseline'} "
                f"size x{record.size_ratio:.2f}{parity}")
    reason = record.stop_message or record.error or ""
    return f"{pipeline}: {record.outcome}" + (f" — {reason}" if reason else "")
