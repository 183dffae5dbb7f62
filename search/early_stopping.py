"""Stopping hopeless trials early in a multi-objective study.

Optuna's ``trial.report``/``should_prune`` do not support multi-objective studies, so the
intermediate validation accuracies are kept as the trial's ``curve`` user attribute (a pruned
trial keeps them), and a trial is stopped when its accuracy cannot plausibly reach the floor:
it is well below the floor, and no completed trial that was as low at the same step recovered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import optuna


@dataclass(frozen=True)
class StopRule:
    floor: float  # the accuracy the targets allow: baseline val top-1 minus the allowed drop
    margin: float  # how far below the floor a trial may sit before its recovery becomes implausible
    # (step, accuracy) curves of completed trials that ended at or above the floor.
    recovered: tuple[tuple[tuple[int, float], ...], ...] = ()
    chance: float = 0.1  # 1 / number of classes

    def lowest_recovered_at(self, step: int) -> float | None:
        values = [acc for curve in self.recovered for s, acc in curve if s == step]
        return min(values) if values else None

    def should_stop(self, step: int, accuracy: float) -> bool:
        # The first measurement follows the most destructive moment (a pruning cut, one epoch of
        # recovery): only a collapse to near chance is judged there.
        if step == 0 and accuracy >= 1.5 * self.chance:
            return False
        if accuracy >= self.floor - self.margin:
            return False
        lowest = self.lowest_recovered_at(step)
        return lowest is None or accuracy < lowest - 0.02


def stop_rule_for(study: optuna.Study, floor: float, margin: float, num_classes: int) -> StopRule:
    curves = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if trial.values and trial.values[0] >= floor:
            curves.append(tuple((int(s), float(a)) for s, a in trial.user_attrs.get("curve", [])))
    return StopRule(floor, margin, tuple(curves), chance=1.0 / num_classes)


@dataclass
class AccuracyMonitor:
    """Collects a trial's validation curve (after every fine-tune epoch and every stage) and stops it early."""

    trial: optuna.Trial
    rule: StopRule
    enabled: bool = True
    curve: list[tuple[int, float]] = field(default_factory=list)

    def observe(self, accuracy: float, where: str) -> None:
        step = len(self.curve)
        self.curve.append((step, accuracy))
        self.trial.set_user_attr("curve", [list(point) for point in self.curve])
        if self.enabled and self.rule.should_stop(step, accuracy):
            message = (f"val top-1 {accuracy:.3f} at step {step} ({where}) is hopeless: floor {self.rule.floor:.3f}, "
                       f"margin {self.rule.margin:.2f}")
            self.trial.set_user_attr("pruned_reason", message)
            raise optuna.TrialPruned(message)

    def on_epoch_end(self, epoch: int, accuracy: float) -> None:
        self.observe(accuracy, f"fine-tune epoch {epoch + 1}")

    def history(self) -> Sequence[tuple[int, float]]:
        return tuple(self.curve)
