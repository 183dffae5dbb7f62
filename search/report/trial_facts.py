"""Facts about the search's trials for the report: how they ended, what early stopping saved, where
their time went, the hypervolume over time, latency against operator count."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from optuna.trial import TrialState

from udacisense.evaluators.intervals import wilson
from udacisense.search.results.hypervolume import hypervolume
from udacisense.search.study.records import STOPPED_BY_EARLY_STOPPING, FalseStops, StopReason
from udacisense.search.study.trial_record import TrialRecord
from udacisense.search.trial.early_stopping import curve_points, stage_progress


def family(trial: TrialRecord) -> str:
    """A trial's pipeline family: the set of its stage kinds."""
    kinds = sorted(trial.stage_kinds)
    return " + ".join(kinds) if kinds else "no stage"


STOP_CATEGORIES = {
    StopReason.REJECTED: "rejected before compute (impossible stage order)",
    StopReason.NO_STUDENT: "rejected before compute (a student the search did not distil)",
    StopReason.DUPLICATE: "duplicate configuration (not run again)",
    StopReason.OVER_BUDGET: "over budget (another worker took the last trial first; nothing ran)",
    StopReason.BEFORE_TRAINING: "stopped before training (estimated to miss the size or latency target)",
    StopReason.DURING_TRAINING: "stopped early during training (accuracy hopeless)",
    StopReason.BELOW_FLOOR: "stopped after training, before lowering (clearly below the accuracy floor)",
    StopReason.HALVED: "halved (outranked at a rung of successive halving; its other epochs not trained)",
}


UNRECORDED = "pruned without a recorded reason"


def prune_category(trial: TrialRecord) -> str:
    """The report's heading for why ``trial`` stopped, from its recorded stop reason (never its prose)."""
    reason = trial.stop_reason
    return STOP_CATEGORIES[reason] if reason is not None else UNRECORDED


def state_counts(trials: Sequence[TrialRecord]) -> dict[str, int]:
    counts = Counter(t.state.name.lower() for t in trials)
    return {name: counts.get(name, 0) for name in ("complete", "pruned", "fail", "running", "waiting")}


def hypervolume_history(trials: Sequence[TrialRecord]) -> list[tuple[int, float]]:
    """(trial number, hypervolume of all trials measured up to it) for every measured trial."""
    history, points = [], []
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.is_measured:
            points.append(list(trial.values))
            history.append((trial.number, hypervolume(points)))
    return history


@dataclass(frozen=True)
class StopCost:
    """What early stopping saved on one trial it stopped: the fine-tune epochs the trial had left, costed."""

    number: int
    reason: StopReason | None
    spent: float  # seconds the trial ran before it was stopped
    planned: bool  # it stored its sampled stages' epochs (trials of older versions did not: not costed)
    epochs_left: int  # fine-tune epochs of its pipeline that it did not run
    seconds: float  # the costed estimate of those epochs
    uncosted_epochs: int  # epochs of stage kinds without a measured time between epoch ends: not in ``seconds``


def epoch_seconds_by_kind(trials: Sequence[TrialRecord]) -> dict[str, float]:
    """Median seconds per fine-tune epoch of each stage kind (the time between epoch ends), over the completed
    trials' stages that trained two epochs or more."""
    per_kind: dict[str, list[float]] = {}
    for trial in trials:
        if trial.has_values:
            for stage in stage_progress(curve_points(trial.curve)):
                if stage.seconds_per_epoch is not None:
                    per_kind.setdefault(stage.kind, []).append(stage.seconds_per_epoch)
    return {kind: statistics.median(values) for kind, values in per_kind.items()}


def remaining_training(trial: TrialRecord, seconds_per_epoch: dict[str, float]) -> StopCost:
    """The estimate of what a stopped trial would still have spent, and nothing more:

    - epochs: per stage of its sampled pipeline (``stage_epochs``), the fine-tune epochs it did not
      finish (none for a stage its curve closed; planned minus finished for the stage it stopped in;
      all for the stages after);
    - seconds per epoch: the time between epoch ends (``StageProgress.seconds_per_epoch``, never the
      stage's set-up such as a pruning cut): the trial's own, where its curve has two epoch ends of that
      stage, else the median over completed trials' stages of the same kind (``epoch_seconds_by_kind``);
      a kind no completed trial measured leaves its epochs uncosted (counted in ``uncosted_epochs``);
    - left out: lowering, artifact accuracy, parity and latency, which a trial stopped as hopeless would
      most likely never have reached (it would have stopped below the floor), and the stages' own
      validation passes beyond those in each epoch.
    """
    progress = {stage.stage: stage for stage in stage_progress(curve_points(trial.curve))}
    epochs_left, seconds, uncosted = 0, 0.0, 0
    for index, (kind, epochs) in enumerate(trial.stage_epochs):
        done = progress.get(index)
        if done is not None and done.closed:
            continue
        left = epochs - (done.epochs if done is not None else 0)
        if left <= 0:
            continue
        own = done.seconds_per_epoch if done is not None else None
        rate = own if own is not None else seconds_per_epoch.get(kind)
        epochs_left += left
        if rate is None:
            uncosted += left
        else:
            seconds += left * rate
    return StopCost(trial.number, trial.stop_reason, trial.seconds, bool(trial.stage_epochs), epochs_left, seconds, uncosted)


@dataclass(frozen=True)
class EarlyStoppingSavings:
    """Compute spent by the trials, and what early stopping saved: only the stops it caused
    (``STOPPED_BY_EARLY_STOPPING``), each costed by ``remaining_training``."""

    complete_total: float  # seconds of the completed trials
    median_complete: float
    pruned: dict[StopReason | None, list[TrialRecord]]  # every pruned trial, by its recorded stop reason
    costs: tuple[StopCost, ...]  # one per stop early stopping caused
    false_stops: FalseStops | None  # measured on the stopped trials themselves; None: not measured

    @property
    def pruned_count(self) -> int:
        return sum(len(trials) for trials in self.pruned.values())

    @property
    def spent(self) -> float:
        """Seconds the pruned trials ran."""
        return sum(t.seconds for trials in self.pruned.values() for t in trials)

    @property
    def stopped(self) -> int:
        return len(self.costs)

    @property
    def saved(self) -> float:
        return sum(c.seconds for c in self.costs)

    @property
    def epochs_left(self) -> int:
        return sum(c.epochs_left for c in self.costs)

    @property
    def uncosted_epochs(self) -> int:
        return sum(c.uncosted_epochs for c in self.costs)

    @property
    def unplanned(self) -> int:
        return sum(1 for c in self.costs if not c.planned)

    def costs_of(self, reason: StopReason) -> list[StopCost]:
        return [c for c in self.costs if c.reason is reason]


def early_stopping_savings(trials: Sequence[TrialRecord], false_stops: FalseStops | None = None) -> EarlyStoppingSavings:
    complete = [t.seconds for t in trials if t.state is TrialState.COMPLETE]
    pruned: dict[StopReason | None, list[TrialRecord]] = {}
    for trial in trials:
        if trial.state is TrialState.PRUNED:
            pruned.setdefault(trial.stop_reason, []).append(trial)
    rates = epoch_seconds_by_kind(trials)
    costs = tuple(remaining_training(t, rates) for reason in STOPPED_BY_EARLY_STOPPING for t in pruned.get(reason, []))
    return EarlyStoppingSavings(sum(complete), statistics.median(complete) if complete else 0.0, pruned, costs, false_stops)


# Early stopping is safe when its replays rule out, at 95%, that more than one stop in five cut a trial
# that would have reached the floor: the time saved is then worth the few front candidates lost.
SAFE_FALSE_STOP_RATE = 0.2


def false_stop_rate_bound(false_stops: FalseStops) -> float:
    """The 95% (Wilson) upper bound of early stopping's false-stop rate: the rate its replays cannot rule out."""
    return wilson(false_stops.false_stops, false_stops.measured)[1]


def early_stopping_verdict(false_stops: FalseStops) -> Literal["safe", "harmful", "undecided"]:
    """``safe``: the rate's upper bound is at most ``SAFE_FALSE_STOP_RATE``; ``harmful``: more replays than
    that share reached the floor; else too few replays to say."""
    if false_stop_rate_bound(false_stops) <= SAFE_FALSE_STOP_RATE:
        return "safe"
    return "harmful" if false_stops.false_stops > SAFE_FALSE_STOP_RATE * false_stops.measured else "undecided"


# Stage kinds whose phase is (mostly) gradient steps; the others calibrate, convert or rewrite.
TRAINING_KINDS = frozenset({"distill", "prune", "gradual", "channels", "resolution", "architecture", "qat"})


@dataclass(frozen=True)
class PhaseTotal:
    name: str  # a measuring phase (lowering, latency, ...) or `stage: <kind>`
    seconds: float  # summed over every finished trial that recorded phases
    trials: int  # trials in which the phase ran
    training: bool
    by_outcome: Mapping[str, float]  # its seconds in measured, screened and stopped trials (``trial_outcome``)

    def share(self, total: float) -> float:
        return self.seconds / total if total else 0.0


def phase_totals(trials: Sequence[TrialRecord]) -> list[PhaseTotal]:
    """Seconds per phase over the finished trials, stages grouped by kind, largest first.

    Pruned trials count too: their compute was spent. A stage's seconds include its validation
    passes only where the stage itself measured them; the per-stage `validation` phase is separate.
    """
    seconds: dict[str, float] = {}
    by_outcome: dict[str, dict[str, float]] = {}
    present: Counter[str] = Counter()
    for trial in trials:
        if not trial.state.is_finished():
            continue
        for name, value in trial.phase_seconds.items():
            # Stage phases are named `stage <index> <kind>`: the kind is what is comparable across trials.
            key = f"stage: {name.split(' ', 2)[2]}" if name.startswith("stage ") and name.count(" ") >= 2 else name
            seconds[key] = seconds.get(key, 0.0) + float(value)
            outcome = by_outcome.setdefault(key, {})
            outcome[trial_outcome(trial)] = outcome.get(trial_outcome(trial), 0.0) + float(value)
            present[key] += 1
    return [PhaseTotal(name, value, present[name], name.startswith("stage: ") and name[7:] in TRAINING_KINDS,
                       dict(by_outcome[name]))
            for name, value in sorted(seconds.items(), key=lambda item: -item[1])]


OUTCOMES = ("measured", "screened", "stopped")


def trial_outcome(trial: TrialRecord) -> str:
    """A finished trial's fidelity: ``measured`` (lowered and measured), ``screened`` (completed on estimates),
    or ``stopped`` (pruned or failed: no values)."""
    if trial.has_values:
        return "measured" if trial.is_measured else "screened"
    return "stopped"


@dataclass(frozen=True)
class OperatorFit:
    """The latency ratio against the operator count of the measured ``.pte`` trials, fitted by least squares."""

    trials: int
    per_operator: float  # latency ratio per operator: the slope
    intercept: float
    r2: float
    # Median milliseconds of the float baseline the trials were timed against: the slope times it is ms per operator.
    reference_ms: float | None


def operator_trials(trials: Sequence[TrialRecord]) -> list[tuple[int, TrialRecord]]:
    """(operators, trial) of the completed trials whose program's operators were counted (``.pte`` trials since
    the counts are stored)."""
    return [(count, t) for t in trials if t.is_measured and (count := t.operator_count) is not None]


def operator_latency_fit(trials: Sequence[TrialRecord]) -> OperatorFit | None:
    """Least squares of the latency ratio on the operator count; None without three trials of two counts at least."""
    points = operator_trials(trials)
    counts = np.array([count for count, _ in points], dtype=float)
    if len(points) < 3 or np.ptp(counts) == 0:
        return None
    ratios = np.array([t.latency_ratio for _, t in points])
    slope, intercept = np.polyfit(counts, ratios, 1)
    spread = float(((ratios - ratios.mean()) ** 2).sum())
    residual = float(((ratios - (slope * counts + intercept)) ** 2).sum())
    references = [ms for ms in (t.reference_latency_ms for _, t in points) if ms is not None]
    return OperatorFit(len(points), float(slope), float(intercept), 1.0 - residual / spread if spread > 0 else 1.0,
                       statistics.median(references) if references else None)
