"""The study's trial budget, shared by every worker: which trials spend it, and which are surplus."""

from __future__ import annotations

import optuna

TrialState = optuna.trial.TrialState
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.FAIL, TrialState.WAITING)
# Trials that ran no compute and spend no budget: impossible stage orders, and a worker's trial that
# started after the budget was already taken by others.
REJECTED, OVER_BUDGET = "rejected", "over-budget"


def is_rejected(trial: optuna.trial.FrozenTrial) -> bool:
    return trial.user_attrs.get("stage") == REJECTED


def counted_trials(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The trials that spend the budget, in trial-number order."""
    # A trial whose worker died is re-queued by the heartbeat callback: count it once, through its retry.
    retried = {number for t in trials for number in t.system_attrs.get("retry_history", [])}
    return [t for t in sorted(trials, key=lambda t: t.number) if t.state in COUNTED and t.number not in retried
            and t.user_attrs.get("stage") not in (REJECTED, OVER_BUDGET)]


def budget_left(study: optuna.Study, n_trials: int) -> int:
    """Trials still to start: the budget counts every worker's trials, running and queued ones included."""
    return n_trials - len(counted_trials(study.get_trials(deepcopy=False)))


def is_surplus(study: optuna.Study, number: int, n_trials: int) -> bool:
    """Whether trial ``number`` came after the budget was spent, by workers that asked at the same moment.

    Trial numbers are handed out by the storage in one order for all workers, so the first
    ``n_trials`` counted trials by number are the budget's, and every worker agrees on the rest.
    """
    return len([t for t in counted_trials(study.get_trials(deepcopy=False)) if t.number < number]) >= n_trials
