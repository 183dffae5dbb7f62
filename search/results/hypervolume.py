"""Hypervolume of a study's objective values, in minimisation form against a fixed reference point."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import optuna

from udacisense.search.study.budget import finished_in_budget
from udacisense.search.study.config import TargetsConfig
from udacisense.search.study.records import HV_REFERENCE, OBJECTIVES, as_losses
from udacisense.search.study.trial_record import TrialRecord


def _hypervolume_slices(points: np.ndarray, reference: np.ndarray) -> float:
    """Exact hypervolume (minimisation) of 3-D points by slicing along the last axis."""
    if len(points) == 0:
        return 0.0
    if points.shape[1] == 1:
        return float(reference[0] - points[:, 0].min())
    if points.shape[1] == 2:
        ordered = points[np.argsort(points[:, 0])]
        volume, best_y = 0.0, reference[1]
        for x, y in ordered:
            if y < best_y:
                volume += (reference[0] - x) * (best_y - y)
                best_y = y
        return float(volume)
    ordered = points[np.argsort(points[:, -1])]
    volume = 0.0
    for i, point in enumerate(ordered):
        upper = ordered[i + 1, -1] if i + 1 < len(ordered) else reference[-1]
        if upper > point[-1]:
            volume += _hypervolume_slices(ordered[: i + 1, :-1], reference[:-1]) * (upper - point[-1])
    return float(volume)


def hypervolume(values: Sequence[Sequence[float]], reference: Sequence[float] = HV_REFERENCE) -> float:
    """Hypervolume of (accuracy, latency ratio, size ratio) triples, in the minimisation form above."""
    ref = np.asarray(reference, dtype=float)
    loss = np.asarray([as_losses(list(v)) for v in values], dtype=float).reshape(-1, len(OBJECTIVES))
    loss = loss[np.all(loss < ref, axis=1)] if len(loss) else loss  # points beyond the reference add nothing
    if len(loss) == 0:
        return 0.0
    try:
        from optuna._hypervolume import (
            compute_hypervolume,  # private API; exact (WFG) when present
        )
    except ImportError:  # pragma: no cover - depends on the optuna version
        return _hypervolume_slices(loss, ref)
    return float(compute_hypervolume(loss, ref))



def measured_values(trials: list[optuna.trial.FrozenTrial], n: int, floor: float | None = None, *,
                    shippable: bool = False) -> list[list[float]]:
    """Objective values of the measured trials (screened ones' estimates are no result) among the first ``n`` that spent
    the budget; with ``floor``, only of those whose accuracy reaches it (what a user can ship); ``shippable``: only of
    those that meet every target, artifact parity included."""
    return [t.values for t in finished_in_budget(trials)[:n] if (record := TrialRecord.of(t)).is_measured
            and (floor is None or t.values[0] >= floor) and (not shippable or record.meets_targets)]


def hypervolume_of_first(trials: list[optuna.trial.FrozenTrial], n: int, floor: float | None = None,
                         reference: Sequence[float] = HV_REFERENCE, *, shippable: bool = False) -> float:
    """Hypervolume of ``measured_values``, so searches compare at equal budget."""
    values = measured_values(trials, n, floor, shippable=shippable)
    return hypervolume(values, reference) if values else 0.0


def target_region(floor: float, targets: TargetsConfig) -> tuple[float, float, float]:
    """The reference point (minimisation form) whose hypervolume counts only what meets every target: accuracy
    above the floor, latency and bytes within their allowances. ``HV_REFERENCE`` counts accuracy from 0 and the
    ratios from x2, so fronts that all meet the targets barely differ there: at equal accuracy, going from x0.15
    latency and x0.12 bytes to x0.10 and x0.06 gains 6% of its volume, and 23% of the targets' region at
    x0.60 and x0.70."""
    return (-floor, targets.max_latency_ratio, targets.max_size_ratio)
