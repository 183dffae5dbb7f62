"""Stopping hopeless trials early in a multi-objective study.

Optuna's ``trial.report``/``should_prune`` do not support multi-objective studies, so the
intermediate validation accuracies are kept as the trial's ``curve`` user attribute (a pruned
trial keeps them), and a trial is stopped only on evidence: it is well below the floor, and every
measured trial that reached the floor was clearly higher at the same point. Points are compared
only where they mean the same thing: the same stage kind, the same occurrence of that kind in the
pipeline (the first channel pruning, the second, ...), the same planned fine-tune epochs of that
stage and the same fine-tune epoch within it (``epoch`` None: the measurement that closes the
stage). Never by stage index: families absent from a pipeline drop out of its order, so index 0 is
distillation in one trial and channel pruning in another. Never across schedules: the learning rate
(and a gradual-pruning ramp) stretches over the stage's planned epochs, so after epoch 1 a 1-epoch
stage is annealed while a 4-epoch one still trains near its peak rate. Without such history nothing
is stopped.

A stored curve entry is ``[stage index, stage kind, epoch or None, val top-1, seconds into the
stage]``; the stage's planned epochs are its trial's ``stage_epochs`` at that index (a trial stored
before plans were has none: its points match no current one). The seconds at consecutive epoch ends
let the report cost the epochs a stopped trial had left. Entries of older studies (``[stage, epoch,
top-1]``, ``[step, top-1]``) carry no kind: they are no evidence.
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

# Where a measurement was taken: (stage kind, stages of that kind before it in the pipeline, the
# stage's planned fine-tune epochs (None: not stored), fine-tune epoch within the stage or None at its end).
Point = tuple[str, int, int | None, int | None]


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


def point_of(kinds: Sequence[str], planned: Sequence[int], stage: int, epoch: int | None) -> Point:
    """The comparable place of a measurement at stage index ``stage`` of a pipeline of ``kinds`` whose
    stages plan ``planned`` fine-tune epochs."""
    kind = kinds[stage]
    return kind, list(kinds[:stage]).count(kind), planned[stage], epoch


def comparable(points: Sequence[CurvePoint], planned: Sequence[int]) -> tuple[tuple[Point, float], ...]:
    """A stored curve as (point, accuracy) pairs; every stage before a measured one closed with a
    measurement, so the curve itself says which kinds came before. ``planned``: the fine-tune epochs of
    every stage of the trial's pipeline; a stage beyond it has none."""
    kinds = {p.stage: p.kind for p in points}
    return tuple(((p.kind, sum(1 for s, k in kinds.items() if s < p.stage and k == p.kind),
                   planned[p.stage] if p.stage < len(planned) else None, p.epoch), p.accuracy)
                 for p in points)


def trial_curve(record: TrialRecord) -> tuple[tuple[Point, float], ...]:
    """A stored trial's curve as (point, accuracy) pairs, its stages' planned epochs from its ``stage_epochs``."""
    return comparable(curve_points(record.curve), [epochs for _, epochs in record.stage_epochs])


@dataclass(frozen=True)
class StageProgress:
    """How far a trial got in one stage, from its curve."""

    stage: int
    kind: str
    epoch_ends: tuple[tuple[int, float], ...]  # (epoch, seconds into the stage at its end) of each finished epoch
    closed: bool  # the stage ran to its end (its closing measurement was taken)

    @property
    def epochs(self) -> int:
        """Fine-tune epochs finished."""
        return self.epoch_ends[-1][0] + 1 if self.epoch_ends else 0

    @property
    def seconds_per_epoch(self) -> float | None:
        """The measured time between epoch ends: an epoch's training and its validation pass. Seconds
        into the stage over epochs done would also hold what the stage did before its first epoch (a
        pruning cut, QAT preparation) and charge a share of it to every epoch left. None before two
        epoch ends."""
        if len(self.epoch_ends) < 2:
            return None
        (first, start), (last, end) = self.epoch_ends[0], self.epoch_ends[-1]
        return (end - start) / (last - first)


def stage_progress(points: Sequence[CurvePoint]) -> list[StageProgress]:
    """Every stage a curve reached, in pipeline order."""
    by_stage: dict[int, list[CurvePoint]] = {}
    for point in points:
        by_stage.setdefault(point.stage, []).append(point)
    progress = []
    for stage, measured in sorted(by_stage.items()):
        ends = tuple(sorted((p.epoch, p.seconds) for p in measured if p.epoch is not None))
        progress.append(StageProgress(stage, measured[0].kind, ends, any(p.epoch is None for p in measured)))
    return progress


@dataclass(frozen=True)
class StopRule:
    floor: float  # the accuracy the targets allow: baseline val top-1 minus the allowed drop
    margin: float  # how far below the floor a trial may sit before its recovery becomes implausible
    # (point, accuracy) curves of measured trials that ended at or above the floor.
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
        # Only a measured accuracy says a trial recovered: a screened trial's is an estimate.
        if record.is_measured and record.val_accuracy >= floor:
            curves.append(trial_curve(record))
    return StopRule(floor, margin, tuple(c for c in curves if c), chance=1.0 / num_classes)


def competitors_at(point: Point, history: Sequence[TrialRecord]) -> list[Competitor]:
    """Every trial with a footprint that measured its validation accuracy at ``point`` (``search.halving``)."""
    found = []
    for record in history:
        footprint = record.footprint
        accuracy = next((acc for p, acc in trial_curve(record) if p == point), None)
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
    epochs: tuple[int, ...]  # the planned fine-tune epochs of every stage, in order
    enabled: bool = True
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
        if self.enabled and self.rule.should_stop(point_of(self.kinds, self.epochs, self.stage, epoch), accuracy,
                                                  first_of_stage=first_of_stage):
            message = (f"val top-1 {accuracy:.3f} at stage {self.stage + 1} {point.kind} ({where}) is hopeless: floor "
                       f"{self.rule.floor:.3f}, margin {self.rule.margin:.2f}, and every measured trial that "
                       f"reached the floor was higher there")
            raise record_stop(self.trial, StopReason.DURING_TRAINING, message)

    def observe(self, accuracy: float, where: str) -> None:
        self._add(None, accuracy, where)
        self.stage += 1
        self.stage_started = time.perf_counter()

    def on_epoch_end(self, epoch: int, accuracy: float) -> None:
        self._add(epoch, accuracy, f"fine-tune epoch {epoch + 1}")
        if self.enabled and is_rung(epoch + 1, self.epochs[self.stage], self.halving_rate):
            self._halve_unless_promising(epoch, accuracy)

    def _halve_unless_promising(self, epoch: int, accuracy: float) -> None:
        history = [TrialRecord.of(t) for t in self.trial.study.get_trials(deepcopy=False)]
        point = point_of(self.kinds, self.epochs, self.stage, epoch)
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
