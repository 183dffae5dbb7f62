"""The study's trial budget, shared by every worker: which trials spend it, and which are surplus."""

from __future__ import annotations

import optuna

from udacisense.search.study.records import UNSPENT, StopReason, record_stop
from udacisense.search.study.trial_record import TrialRecord

TrialState = optuna.trial.TrialState
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.FAIL, TrialState.WAITING)
# A configuration is taken once one of these trials has it (a waiting one is a queued retry), or a
# stopped one that ran compute (see ``holds_configuration``).
HOLDERS = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING, TrialState.PRUNED)


def is_rejected(trial: optuna.trial.FrozenTrial) -> bool:
    return TrialRecord.of(trial).stop_reason is StopReason.REJECTED


def is_wasted_sample(trial: optuna.trial.FrozenTrial) -> bool:
    """A sample the search could not use: an impossible order, a student it did not distil, or a configuration it
    already has."""
    return TrialRecord.of(trial).stop_reason in (StopReason.REJECTED, StopReason.NO_STUDENT, StopReason.DUPLICATE)


def holds_configuration(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether ``trial`` has its configuration for good: complete, running or queued, or stopped after
    it ran compute: the search judged that configuration once, and running it again would spend budget
    on a verdict it has (whether the early-stopping verdicts are right is measured on the stopped trials
    themselves, with their own seeds, by ``search.false_stops``). A failed trial holds nothing: its
    retry runs it again. Rejected orders, duplicates and over-budget samples ran nothing, so hold nothing."""
    if trial.state is TrialState.PRUNED:
        return TrialRecord.of(trial).stop_reason not in UNSPENT
    return trial.state in HOLDERS


def duplicate_of(study: optuna.Study, number: int, params: dict[str, object], pipeline_key: str | None = None,
                 exempt: int | None = None) -> int | None:
    """The trial that already holds trial ``number``'s configuration (its parameters, or the pipeline
    they make: the order of two absent stages is a parameter that changes nothing), or None when it is new.

    Two workers that sample the same configuration at the same moment may each see the other and
    both stop: that costs a sample, never budget, and neither runs a repeat. ``exempt``: the trial this
    one runs again on purpose (a screened trial it promotes).
    """
    for trial in study.get_trials(deepcopy=False, states=HOLDERS):
        if not holds_configuration(trial):
            continue
        same_pipeline = pipeline_key is not None and TrialRecord.of(trial).pipeline_key == pipeline_key
        if trial.number not in (number, exempt) and (trial.params == params or same_pipeline):
            return trial.number
    return None


def counted_trials(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The trials that spend the budget, in trial-number order."""
    # A trial whose worker died is re-queued by the heartbeat callback: count it once, through its retry.
    retried = {number for t in trials for number in t.system_attrs.get("retry_history", [])}
    return [t for t in sorted(trials, key=lambda t: t.number) if t.state in COUNTED and t.number not in retried
            and TrialRecord.of(t).stop_reason not in UNSPENT]


def finished_in_budget(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The finished trials that spent the budget, in the order they were started."""
    return [t for t in counted_trials(trials) if t.state.is_finished()]


def budget_left(study: optuna.Study, n_trials: int) -> int:
    """Trials still to start: the budget counts every worker's trials, running and queued ones included."""
    return n_trials - len(counted_trials(study.get_trials(deepcopy=False)))


def is_surplus(study: optuna.Study, number: int, n_trials: int) -> bool:
    """Whether trial ``number`` came after the budget was spent, by workers that asked at the same moment.

    Trial numbers are handed out by the storage in one order for all workers, so the first
    ``n_trials`` counted trials by number are the budget's, and every worker agrees on the rest.
    """
    return len([t for t in counted_trials(study.get_trials(deepcopy=False)) if t.number < number]) >= n_trials


def stop_if_not_needed(trial: optuna.Trial, pipeline_key: str, promoted_from: int | None, budget: int | None) -> None:
    """Stop a sample that must run no compute: a duplicate of a configuration the study holds (a promotion
    duplicates its screened original by design), or one beyond the trial budget."""
    original = duplicate_of(trial.study, trial.number, trial.params, pipeline_key, exempt=promoted_from)
    if original is not None:
        raise record_stop(trial, StopReason.DUPLICATE, f"duplicate of trial {original}: not run again")
    if budget is not None and is_surplus(trial.study, trial.number, budget):
        # Another worker took the last trial of the budget at the same moment: run nothing.
        raise record_stop(trial, StopReason.OVER_BUDGET, f"over budget: {budget} trials were already taken by other workers")
