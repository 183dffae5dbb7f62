"""How often early stopping stops a trial that would have reached the accuracy floor, measured on
the stopped trials themselves.

A random sample (drawn with the study's seed) of the stops whose compute the report counts as saved
(``STOPPED_BY_EARLY_STOPPING``: halved, during training, before training) runs again, in a sibling
study (``<name>-false-stops``, on a copy of the same baseline and students), with its own parameters
and its own seed, to its end. Early stopping is off there, and with it halving and the feasibility
stop; so is screening, so that a replay's final accuracy is its lowered artifact's measurement, never
an estimate. A replay that ends below the floor, or stops clearly below it before lowering, confirms
the stop; one that reaches the floor was a false stop. The count is stored on the original study
(``StudyAttr.FALSE_STOPS``), where the report reads it.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna

from udacisense.search.study.baseline_profile import FILE_NAME, BaselineProfile
from udacisense.search.study.config import StudyConfig, load_study
from udacisense.search.study.records import (
    STOPPED_BY_EARLY_STOPPING,
    Attr,
    FalseStops,
    FalseStopTrial,
    StopReason,
    StudyAttr,
    queued_attrs,
    store_study,
)
from udacisense.search.study.storage import open_study
from udacisense.search.study.trial_record import TrialRecord, records
from udacisense.search.trial.objective import trial_seed
from udacisense.search.workers.runner import run_search

# Runs the sibling study's queued replays: (study file, overrides that make it the sibling) -> anything.
RunReplays = Callable[[str, Mapping[str, Any]], object]


def sibling_overrides(config: StudyConfig, overrides: Mapping[str, Any], replays: int) -> dict[str, Any]:
    """The study-file overrides that make the replays' study: its own name (and storage), early stopping
    (hence halving) and screening off, a budget of exactly the replays (the sampler never adds a trial of
    its own)."""
    return {**overrides, "name": f"{config.name}-false-stops", "search.early_stopping": False,
            "search.screening": False, "search.n_trials": replays}


def sample_of_stops(trials: Sequence[TrialRecord], size: int, seed: int) -> list[TrialRecord]:
    """A random sample of ``size`` of the trials early stopping stopped, every kind alike. Each trial's
    place in the draw depends on ``seed`` and its number only: a larger sample asked for later holds
    the smaller one, and trials stopped since do not reshuffle it."""
    stopped = [t for t in trials if t.stop_reason in STOPPED_BY_EARLY_STOPPING]
    return sorted(stopped, key=lambda t: random.Random(f"{seed}-{t.number}").random())[:size]


def queue_replays(sibling: optuna.Study, stopped: Sequence[TrialRecord], study_seed: int) -> int:
    """Queue in ``sibling`` a replay of every trial of ``stopped`` it has none of yet (same parameters,
    same seed); returns how many trials it replays in all, earlier runs' included."""
    replayed = {r.stopped_trial for r in records(sibling.get_trials(deepcopy=False))} - {None}
    for trial in stopped:
        if trial.number not in replayed:
            sibling.enqueue_trial(trial.trial.params, user_attrs=queued_attrs(
                {Attr.STOPPED_TRIAL: trial.number, Attr.SEED: trial_seed(study_seed, trial)}))
            replayed.add(trial.number)
    return len(replayed)


def count_false_stops(replays: Sequence[TrialRecord], floor: float, reasons: Mapping[int, StopReason]) -> FalseStops:
    """Judge every replay that finished: measured at or above ``floor`` was a false stop; measured below
    it, or stopped below it before lowering, a correct one. A replay that failed, is still to run or was
    skipped measures nothing. ``reasons``: how each original stopped."""
    judged = []
    for replay in sorted(replays, key=lambda r: r.number):
        if replay.stopped_trial is None:
            continue
        if replay.is_measured:
            final = replay.val_accuracy
        elif replay.stop_reason is StopReason.BELOW_FLOOR and replay.stages:
            final = float(replay.stages[-1]["metrics"]["val_top1"])
        else:
            continue
        judged.append(FalseStopTrial(replay.stopped_trial, replay.number, final, floor, final >= floor,
                                     reasons[replay.stopped_trial]))
    return FalseStops(tuple(judged))


def _copy_shelves(config: StudyConfig, sibling: StudyConfig) -> None:
    # The replays must start from the very baseline (and distilled students) the stopped trials did.
    for shelf in ("baseline", "students"):
        if (config.run_dir / shelf).is_dir():
            shutil.copytree(config.run_dir / shelf, sibling.run_dir / shelf, dirs_exist_ok=True)


def measure_false_stops(study_path: str | Path, sample: int, *, overrides: Mapping[str, Any] | None = None,
                        storage: str | None = None, n_jobs: int | None = 1, run: RunReplays | None = None) -> FalseStops:
    """Replay a random sample of up to ``sample`` trials early stopping stopped (see the module) and store
    the count on the study.

    ``run`` runs the sibling study's queued trials; by default a real search (``run_search``).
    """
    overrides = dict(overrides or {})
    config = load_study(study_path, overrides)
    original = open_study(config, storage, create=False)
    trials = records(original.get_trials(deepcopy=False))
    stopped = sample_of_stops(trials, sample, config.seed)
    profile = BaselineProfile.of_study(original, config.run_dir / "baseline" / FILE_NAME)
    floor = profile.val_top1 - config.targets.max_accuracy_drop
    sibling_config = load_study(study_path, sibling_overrides(config, overrides, max(1, len(stopped))))
    _copy_shelves(config, sibling_config)
    sibling = open_study(sibling_config, storage)
    replays = queue_replays(sibling, stopped, config.seed)
    if replays:
        rerun = sibling_overrides(config, overrides, replays)
        if run is None:
            run_search(str(study_path), n_jobs=n_jobs, storage=storage, overrides=rerun)
        else:
            run(str(study_path), rerun)
    reasons = {t.number: t.stop_reason for t in trials if t.stop_reason is not None}
    result = count_false_stops(records(open_study(sibling_config, storage, create=False).get_trials()), floor, reasons)
    store_study(original, {StudyAttr.FALSE_STOPS: result.as_dict()})
    return result
