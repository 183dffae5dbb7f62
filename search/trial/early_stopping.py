"""Stopping hopeless trials early in a multi-objective study.

Optuna's ``trial.report``/``should_prune`` do not support multi-objective studies, so the
intermediate validation accuracies are kept as the trial's ``curve`` user attribute (a pruned
trial keeps them), and a trial is stopped only on evidence: it is well below the floor, and every
completed trial that reached the floor was clearly higher at the same point. Points are compared
only where they mean the same thing: the same stage kind, the same occurrence of that kind in the
pipeline (the first channel pruning, the second, ...) and the same fine-tune epoch within it
(``epoch`` None: the measurement that closes the stage). Never by stage index: families absent from
a pipeline drop out of its order, so index 0 is distillation in one trial and channel pruning in
another. Without such history nothing is stopped.

A stored curve entry is ``[stage index, stage kind, epoch or None, val top-1, seconds into the
stage]``; the seconds let the report cost the epochs a stopped trial had left. Entries of older
studies (``[stage, epoch, top-1]``, ``[step, top-1]``) carry no kind: they are no evidence.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from udacisense.search.study.records import Attr, StopReason, record_stop, store
from udacisense.search.study.trial_record import TrialRecord
from udacisense.search.trial.halving import Competitor, is_rung, rank

# Where a measurement was taken: (stage kind, stages of that kind before it in the pipeline,
# fine-tune epoch within the stage or None at its end).
Point = tuple[str, int, int | None]


@dataclass(frozen=True)
class CurvePoint:
    """One measurement of a trial's validation accuracy, as stored in its curve."""

    stage: int  # index in the trial's own pipeline
    kind: str
    epoch: int | None  # fine-tune epoch within the stage; None: the measurement that closes it
    accuracy: float
    seconds: float  # since the stage began: its fine-tune epochs so far, and what it did before them

    def as_list(self) -> list[Any]:
        return [self.stage, self.kind, self.epoch, self.accuracy, round(self.seconds, 3)]


def curve_points(curve: Sequence[Sequence[Any]]) -> tuple[CurvePoint, ...]:
    """A stored curve's measurements; entries of older formats (no stage kind) are left out."""
    return tuple(CurvePoint(int(stage), str(kind), None if epoch is None else int(epoch), float(acc), float(seconds))
                 for stage, kind, epoch, acc, seconds in (p for p in curve if len(p) == 5))


def point_of(kinds: Sequence[str], stage: int, epoch: int | None) -> Point:
    """The comparable place of a measurement at stage index ``stage`` of a pipeline of ``kinds``."""
    kind = kinds[stage]
    return kind, list(kinds[:stage]).count(kind), epoch


def comparable(points: Sequence[CurvePoint]) -> tuple[tuple[Point, float], ...]:
    """A stored curve as (point, accuracy) pairs; every stage before a measured one closed with a
    measurement, so the curve itself says which kinds came before."""
    kinds = {p.stage: p.kind for p in points}
    return tuple(((p.kind, sum(1 for s, k in kinds.items() if s < p.stage and k == p.kind), p.epoch), p.accuracy)
                 for p in points)


@dataclass(frozen=True)
class StageProgress:
    """How far a trial got in one stage, from its curve."""

    stage: int
    kind: str
    epochs: int  # fine-tune epochs finished
    seconds: float  # into the stage when the last of them finished
    closed: bool  # the stage ran to its end (its closing measurement was taken)

    @property
    def seconds_per_epoch(self) -> float | None:
        # Includes what the stage did before its first epoch (a pruning cut, QAT preparation) and
        # each epoch's validation pass: the cost of an epoch of that stage as the search runs it.
        return self.seconds / self.epochs if self.epochs else None


def stage_progress(points: Sequence[CurvePoint]) -> list[StageProgress]:
    """Every stage a curve reached, in pipeline order."""
    by_stage: dict[int, list[CurvePoint]] = {}
    for point in points:
        by_stage.setdefault(point.stage, []).append(point)
    progress = []
    for stage, measured in sorted(by_stage.items()):
        epochs = [p for p in measured if p.epoch is not None]
        last = max(epochs, key=lambda p: p.epoch or 0) if epochs else None
        progress.append(StageProgress(stage, measured[0].kind, 0 if last is None else (last.epoch or 0) + 1,
                                      0.0 if last is None else last.seconds, any(p.epoch is None for p in measured)))
    return progress


@dataclass(frozen=True)
class StopRule:
    floor: float  # the accuracy the targets allow: baseline val top-1 minus the allowed drop
    margin: float  # how far below the floor a trial may sit before its recovery becomes implausible
    # (point, accuracy) curves of completed trials that ended at or above the floor.
    recovered: tuple[tuple[tuple[Point, float], ...], ...] = ()
    chance: float = 0.1  # 1 / number of classes

    def lowest_recovered_at(self, point: Point) -> float | None:
        values = [acc for curve in self.recovered for p, acc in curve if p == point]
        return min(values) if values else None

    def should_stop(self, point: Point, accuracy: float, *, first_of_stage: bool = False) -> bool:
        # A stage's first measurement follows its most destructive moment (a pruning cut, one epoch
        # of recovery): only a collapse to near chance is judged there.
        if first_of_stage and accuracy >= 1.5 * self.chance:
            return False
        if accuracy >= self.floor - self.margin:
            return False
        lowest = self.lowest_recovered_at(point)
        return lowest is not None and accuracy < lowest - 0.02


def stop_rule_for(study: optuna.Study, floor: float, margin: float, num_classes: int) -> StopRule:
    curves = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        record = TrialRecord.of(trial)
        if record.has_values and record.val_accuracy >= floor:
            curves.append(comparable(curve_points(record.curve)))
    return StopRule(floor, margin, tuple(c for c in curves if c), chance=1.0 / num_classes)


def competitors_at(point: Point, history: Sequence[TrialRecord]) -> list[Competitor]:
    """Every trial with a footprint that measured its validation accuracy at ``point`` (``search.halving``)."""
    found = []
    for record in history:
        footprint = record.footprint
        accuracy = next((acc for p, acc in comparable(curve_points(record.curve)) if p == point), None)
        if footprint is not None and accuracy is not None:
            found.append(Competitor(record.number, accuracy, *footprint))
    return found


@dataclass
class AccuracyMonitor:
    """Collects a trial's validation curve (after every fine-tune epoch and every stage) and stops it early.

    ``start`` marks the first stage's beginning, ``observe`` closes a stage, ``on_epoch_end`` reports
    a fine-tune epoch of the stage running now; at a rung of successive halving (``search.halving``) the
    trial is ranked against every trial of the study that reached the same point.
    """

    trial: optuna.Trial
    rule: StopRule
    kinds: tuple[str, ...]  # the kind of every stage of the trial's pipeline, in order
    enabled: bool = True
    epochs: tuple[int, ...] = ()  # the fine-tune epochs of every stage, in order; empty: no halving
    halving_rate: int = 0  # η of successive halving; below 2: off
    curve: list[CurvePoint] = field(default_factory=list)
    stage: int = 0
    stage_started: float = field(default_factory=time.perf_counter)

    @property
    def seconds_in_stage(self) -> float:
        return time.perf_counter() - self.stage_started

    def start(self) -> None:
        # What runs between sampling and the first stage (the feasibility estimate, a student's
        # distillation) is no stage's time.
        self.stage_started = time.perf_counter()

    def _add(self, epoch: int | None, accuracy: float, where: str) -> None:
        point = CurvePoint(self.stage, self.kinds[self.stage], epoch, accuracy, self.seconds_in_stage)
        first_of_stage = not any(p.stage == point.stage for p in self.curve)
        self.curve.append(point)
        store(self.trial, {Attr.CURVE: [p.as_list() for p in self.curve]})
        if self.enabled and self.rule.should_stop(point_of(self.kinds, self.stage, epoch), accuracy,
                                                  first_of_stage=first_of_stage):
            message = (f"val top-1 {accuracy:.3f} at stage {self.stage + 1} {point.kind} ({where}) is hopeless: floor "
                       f"{self.rule.floor:.3f}, margin {self.rule.margin:.2f}, and every completed trial that "
                       f"reached the floor was higher there")
            raise record_stop(self.trial, StopReason.DURING_TRAINING, message)

    def observe(self, accuracy: float, where: str) -> None:
        self._add(None, accuracy, where)
        self.stage += 1
        self.stage_started = time.perf_counter()

    def on_epoch_end(self, epoch: int, accuracy: float) -> None:
        self._add(epoch, accuracy, f"fine-tune epoch {epoch + 1}")
        if self.enabled and self.epochs and is_rung(epoch + 1, self.epochs[self.stage], self.halving_rate):
            self._halve_unless_promising(epoch, accuracy)

    def _halve_unless_promising(self, epoch: int, accuracy: float) -> None:
        history = [TrialRecord.of(t) for t in self.trial.study.get_trials(deepcopy=False)]
        point = point_of(self.kinds, self.stage, epoch)
        ranking = rank(self.trial.number, competitors_at(point, history), self.halving_rate)
        if ranking is not None and not ranking.goes_on:
            message = (f"halved after fine-tune epoch {epoch + 1} of {self.epochs[self.stage]} of stage {self.stage + 1} "
                       f"{self.kinds[self.stage]} (val top-1 {accuracy:.3f}): {ranking.describe(self.halving_rate)}")
            raise record_stop(self.trial, StopReason.HALVED, message)


def stop_if_below_floor(trial: optuna.Trial, val_top1: float, floor: float, margin: float) -> None:
    """Stop a trained model more than ``margin`` below the accuracy floor. The artifact's accuracy follows its
    PyTorch model's within the parity rule (a point or so for int8), so such a model cannot ship: lowering it
    only costs time."""
    if val_top1 < floor - margin:
        trial.set_constraint("accuracy", floor - val_top1)
        raise record_stop(trial, StopReason.BELOW_FLOOR,
                          f"val top-1 {val_top1:.3f} after the last stage is more than {margin:.2f} below the "
                          f"accuracy floor {floor:.3f}: infeasible whatever its size, so not lowered")
