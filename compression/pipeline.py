"""An ordered list of stages: checked for compatibility before any work, recorded stage by stage."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from udacisense.compression.stage import CompressedModel, Signature, StageConfig, StageContext, apply_stage


@dataclass(frozen=True)
class StageRecord:
    """What one stage did: its readable description, how long it took, and metrics measured after it."""

    kind: str
    description: str
    seconds: float
    metrics: dict[str, object] = field(default_factory=dict)


# Measures a model after a stage (accuracy, size, ...); the search and the benchmarks supply it.
StageMeter = Callable[[CompressedModel, StageConfig], dict[str, object]]
# Called after each stage with its record; may raise to stop the run (early stopping).
StageObserver = Callable[[StageRecord], None]


# What every pipeline starts from unless told otherwise: a trainable float model.
FLOAT_MODEL = Signature()


@dataclass(frozen=True)
class Pipeline:
    stages: tuple[StageConfig, ...]

    def describe(self) -> str:
        return " → ".join(stage.describe() for stage in self.stages) or "baseline"

    def key(self) -> str:
        """Every stage with every setting, hashed: equal keys compute the same pipeline (up to seeds)."""
        # Stage configs are frozen dataclasses, whose repr holds every field, nested configs too.
        return hashlib.sha256(repr(self.stages).encode()).hexdigest()[:16]

    def check(self, start: Signature = FLOAT_MODEL) -> Signature:
        """Walk the stage signatures without compute; raises IncompatiblePipelineError on an impossible order."""
        signature = start
        for stage in self.stages:
            signature = stage.transition(signature)
        return signature

    def run(self, model: CompressedModel, context: StageContext, *, meter: StageMeter | None = None,
            observers: Sequence[StageObserver] = ()) -> tuple[CompressedModel, list[StageRecord]]:
        """Apply every stage in order to a copy of ``model``; returns the result and a record per stage."""
        self.check(Signature(model.form, model.backend))
        records: list[StageRecord] = []
        for stage in self.stages:
            start = time.perf_counter()
            model = apply_stage(model, stage, context)
            seconds = time.perf_counter() - start
            record = StageRecord(stage.kind, stage.describe(), seconds, meter(model, stage) if meter else {})
            records.append(record)
            for observe in observers:
                observe(record)
        return model, records
