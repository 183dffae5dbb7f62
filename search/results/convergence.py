"""Whether a search's measured front has stopped improving: its hypervolume over the search's minutes against
the noise of the front's own measurements. Both the report and the end of ``udacisense search`` say it from here.

Minutes, not trial counts: a search is bounded by its time (``search.timeout_minutes``) as often as by its
trials, and halved, screened and rejected trials make one trial count stand for very different compute.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import optuna

from udacisense.search.results.front import pareto_trials
from udacisense.search.results.hypervolume import hypervolume
from udacisense.search.study.trial_record import TrialRecord


def _optimistic(record: TrialRecord) -> list[float]:
    """The trial's point at the lucky end of its measurements: validation top-1 at the top of its 95% (Wilson)
    interval, latency ratio at the 10th percentile of its timing rounds; bytes are exact. Never worse than the
    point itself: the objective's ratio is the ratio of medians over all runs, which can fall below the 10th
    percentile of the per-round ratios when rounds are few (a negative noise would leave no minute settled)."""
    val = record.evidence("val")
    accuracy = max(record.val_accuracy, val.top1_ci95[1]) if val is not None else record.val_accuracy
    p10 = record.latency_ratio_p10
    latency = min(record.latency_ratio, p10) if p10 is not None else record.latency_ratio
    return [accuracy, latency, record.size_ratio]


def front_noise(front: Sequence[optuna.trial.FrozenTrial]) -> float:
    """The hypervolume the front's points could gain by being measured again, each at the lucky end of its own
    noise (``_optimistic``): a growth no larger than that could be the same models measured again, so it is no
    evidence of a better front. The accuracy interval is the widest noise of the three (about ±2 points on
    2,000 validation images), which errs towards calling a front converged only where a new point would not
    stand out from the old ones' measurement spread."""
    records = [TrialRecord.of(t) for t in front]
    return hypervolume([_optimistic(r) for r in records]) - hypervolume([list(r.values) for r in records])


@dataclass(frozen=True)
class Convergence:
    """The measured front's hypervolume over the search's minutes (from the first trial's start to the last one's end)."""

    minutes: float
    hypervolume: float  # of the measured front at the end
    noise: float  # see ``front_noise``
    growth: float  # hypervolume gained over the last half of the minutes
    settled_at: float  # the minute from which the hypervolume grew by no more than ``noise`` to the end

    @property
    def converged(self) -> bool:
        return self.growth <= self.noise

    def describe(self) -> str:
        span = f"minute {self.settled_at:.0f} of {self.minutes:.0f}"
        if self.converged:
            return (f"the measured front converged: it stopped improving beyond its noise at {span} (hypervolume "
                    f"{self.hypervolume:.3f}; over the last half of the search it grew {self.growth:.3f}, within the "
                    f"{self.noise:.3f} that measuring its points again could add)")
        return (f"the measured front has not converged: over the last half of the search (from minute "
                f"{self.minutes / 2:.0f}) its hypervolume grew {self.growth:.3f} to {self.hypervolume:.3f}, beyond the "
                f"{self.noise:.3f} that measuring its points again could add, and it last improved beyond that at {span}")


def convergence(trials: Sequence[optuna.trial.FrozenTrial]) -> Convergence | None:
    """The measured front's convergence (estimates and parity failures are no point of it); None before any
    trial was measured."""
    measured = sorted(((t.datetime_complete, t) for t in trials if t.datetime_complete is not None
                       and (r := TrialRecord.of(t)).is_measured and r.parity_ok), key=lambda done: done[0])
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    if not measured or not starts:
        return None
    start = min(starts)
    minutes = max(t.datetime_complete for t in trials if t.datetime_complete is not None) - start
    steps = [((end - start).total_seconds() / 60, hypervolume([list(t.values) for _, t in measured[:i + 1]]))
             for i, (end, _) in enumerate(measured)]
    final, half = steps[-1][1], minutes.total_seconds() / 120
    noise = front_noise(pareto_trials([t for _, t in measured]))
    grown_by_half = max((volume for minute, volume in steps if minute <= half), default=0.0)
    settled_at = next(minute for minute, volume in steps if final - volume <= noise)
    return Convergence(minutes.total_seconds() / 60, final, noise, final - grown_by_half, settled_at)


def plateau_stop(plateau_minutes: float, study: optuna.Study) -> str | None:
    """Why a search may end now: its measured front converged and has grown no more than its noise for
    ``plateau_minutes``; None while it may still improve (or with ``plateau_minutes`` 0: never)."""
    if plateau_minutes <= 0:
        return None
    state = convergence(study.get_trials(deepcopy=False))
    if state is None or not state.converged or state.minutes - state.settled_at < plateau_minutes:
        return None
    return (f"ended at minute {state.minutes:.0f} of the search, {state.minutes - state.settled_at:.0f} min into a "
            f"plateau (search.plateau_minutes = {plateau_minutes:g}): {state.describe()}")
