"""Stopping hopeless trials early in a multi-objective study.

Optuna's ``trial.report``/``should_prune`` do not support multi-objective studies, so the
intermediate validation accuracies are kept as the trial's ``curve`` user attribute (a pruned
trial keeps them), and a trial is stopped only on evidence: it is well below the floor, and every
completed trial that reached the floor was clearly higher at the same point. Points are compared
only where they mean the same thing: the same stage index and the same fine-tune epoch within it
(``epoch`` None: the measurement that closes the stage). Without such history nothing is stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from udacisense.search.records import Attr, StopReason, TrialRecord, record_stop, store

# Where a measurement was taken: (stage index, fine-tune epoch within the stage or None at its end).
Point = tuple[int, int | None]


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


def _curve_points(curve: Sequence[Sequence[Any]]) -> tuple[tuple[Point, float], ...]:
    # Curves of older studies hold (step, accuracy) pairs whose steps mix stages: they are no evidence.
    return tuple(((int(stage), None if epoch is None else int(epoch)), float(acc))
                 for stage, epoch, acc in (p for p in curve if len(p) == 3))


def stop_rule_for(study: optuna.Study, floor: float, margin: float, num_classes: int) -> StopRule:
    curves = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        record = TrialRecord.of(trial)
        if record.has_values and record.val_accuracy >= floor:
            curves.append(_curve_points(record.curve))
    return StopRule(floor, margin, tuple(c for c in curves if c), chance=1.0 / num_classes)


@dataclass
class AccuracyMonitor:
    """Collects a trial's validation curve (after every fine-tune epoch and every stage) and stops it early.

    ``observe`` closes a stage; ``on_epoch_end`` reports a fine-tune epoch of the stage running now.
    """

    trial: optuna.Trial
    rule: StopRule
    enabled: bool = True
    curve: list[tuple[Point, float]] = field(default_factory=list)
    stage: int = 0

    def _add(self, point: Point, accuracy: float, where: str) -> None:
        first_of_stage = not any(p[0] == point[0] for p, _ in self.curve)
        self.curve.append((point, accuracy))
        store(self.trial, {Attr.CURVE: [[p[0], p[1], acc] for p, acc in self.curve]})
        if self.enabled and self.rule.should_stop(point, accuracy, first_of_stage=first_of_stage):
            message = (f"val top-1 {accuracy:.3f} at stage {point[0] + 1} ({where}) is hopeless: floor "
                       f"{self.rule.floor:.3f}, margin {self.rule.margin:.2f}, and every completed trial that "
                       f"reached the floor was higher there")
            raise record_stop(self.trial, StopReason.DURING_TRAINING, message)

    def observe(self, accuracy: float, where: str) -> None:
        stage, self.stage = self.stage, self.stage + 1
        self._add((stage, None), accuracy, where)

    def on_epoch_end(self, epoch: int, accuracy: float) -> None:
        self._add((self.stage, epoch), accuracy, f"fine-tune epoch {epoch + 1}")

    def history(self) -> Sequence[tuple[Point, float]]:
        return tuple(self.curve)
