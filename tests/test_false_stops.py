"""The false-stop rate of early stopping, measured on the stopped trials themselves: same parameters, same seed."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest

from tests.conftest import REPO, study_with_a_running_legal_trial
from tests.test_report import _synthetic_study
from udacisense.search.study.budget import budget_left
from udacisense.search.study.config import load_study
from udacisense.search.study.records import Attr, StopReason, StudyRecord, queued_attrs, record_stop, store
from udacisense.search.study.storage import open_study
from udacisense.search.study.trial_record import TrialRecord
from udacisense.search.study.workspace import Workspace
from udacisense.search.trial.objective import TrialRunner, trial_seed
from udacisense.search.workers.false_stops import measure_false_stops
from udacisense.search.workers.runner import requeue

TrialState = optuna.trial.TrialState
X = optuna.distributions.FloatDistribution(0, 10)


def test_a_replay_trains_with_its_originals_seed_and_every_trial_records_its_seed(tmp_path: Path) -> None:
    config = load_study(REPO / "studies" / "smoke.toml", {"runs_dir": str(tmp_path), "seed": 40})
    study, first = study_with_a_running_legal_trial(config.space)  # the trials below duplicate its configuration
    # No data and no baseline: the seed is settled before either is touched (the duplicate stops it there).
    runner = TrialRunner(Workspace(config, None, None, {}, None), None)  # type: ignore[arg-type]  # sampling only
    study.enqueue_trial(first.params, user_attrs=queued_attrs({Attr.SEED: 1234, Attr.STOPPED_TRIAL: 7}))
    study.enqueue_trial(first.params)
    for _ in range(2):
        with pytest.raises(optuna.TrialPruned):
            runner(study.ask())
    replay, plain = (TrialRecord.of(t) for t in study.get_trials()[-2:])
    assert (replay.seed, replay.stopped_trial) == (1234, 7)
    assert plain.seed == 40 + plain.number and plain.stopped_trial is None
    # A replay that fails is queued again as the same replay, with the same seed.
    study.tell(replay.number, state=TrialState.FAIL)
    requeue(study, replay.number)
    retry = TrialRecord.of(study.get_trials()[-1])
    assert retry.state is TrialState.WAITING and (retry.seed, retry.stopped_trial) == (1234, 7)


def test_stopped_trials_are_replayed_to_the_end_and_those_that_reach_the_floor_counted_as_false_stops(tmp_path: Path) -> None:
    path = _synthetic_study(tmp_path, complete=False)  # baseline val top-1 0.8, allowed drop 0.1: floor 0.7
    config = load_study(path)
    original = open_study(config, create=False)
    stopped = {1: 101, 3: None, 4: 104, 5: 105}  # trial -> the seed it stored (3: stored before seeds were)
    for number in range(6):
        reason = "during-training" if number in stopped else "below-floor" if number == 2 else None
        attrs: dict[str, Any] = {} if reason is None else {"stage": reason}
        if stopped.get(number) is not None:
            attrs["seed"] = stopped[number]
        original.add_trial(optuna.trial.create_trial(
            state=TrialState.PRUNED if reason else TrialState.COMPLETE, values=None if reason else [0.8, 0.5, 0.5],
            params={"x": float(number)}, distributions={"x": X}, user_attrs=attrs))
    # What each configuration ends at, run to the end: x=3 stops below the floor before lowering.
    final = {1.0: 0.75, 3.0: 0.5, 4.0: 0.65, 5.0: 0.71}
    seen: dict[int, tuple[float, int]] = {}

    def replay(study_path: str, overrides: Mapping[str, Any]) -> None:
        sibling = load_study(study_path, overrides)
        assert sibling.name == "synthetic-false-stops" and not sibling.search.early_stopping
        study = open_study(sibling)

        def objective(trial: optuna.Trial) -> tuple[float, float, float]:
            x = trial.suggest_float("x", 0, 10)
            record = TrialRecord.of(trial.study.get_trials(deepcopy=False)[trial.number])  # as TrialRunner reads it
            assert record.stopped_trial is not None
            seen[record.stopped_trial] = (x, trial_seed(sibling.seed, record))
            if final[x] < 0.7 - sibling.search.below_floor_margin:
                store(trial, {Attr.STAGES: [{"kind": "channels", "metrics": {"val_top1": final[x]}}]})
                raise record_stop(trial, StopReason.BELOW_FLOOR, "clearly below the floor")
            return final[x], 0.5, 0.5

        # As the workers do: the queued trials run, and the budget (exactly the replays) has no room for more.
        assert budget_left(study, sibling.search.n_trials) == 0
        study.optimize(objective, n_trials=len(study.get_trials(states=(TrialState.WAITING,))))

    result = measure_false_stops(path, 3, run=replay)
    # The first three stopped trials, each with its own parameters and seed (trial 3's: study seed + 3).
    assert seen == {1: (1.0, 101), 3: (3.0, 3), 4: (4.0, 104)}
    assert [(t.original, t.final_val, t.reached) for t in result.trials] == [(1, 0.75, True), (3, 0.5, False), (4, 0.65, False)]
    assert (result.measured, result.false_stops) == (3, 1) and all(t.floor == pytest.approx(0.7) for t in result.trials)
    assert StudyRecord.of(open_study(config, create=False)).false_stops == result
    # Asked for more later: only the trial not replayed yet runs; the count covers all four.
    seen.clear()
    result = measure_false_stops(path, 4, run=replay)
    assert seen == {5: (5.0, 105)}
    assert (result.measured, result.false_stops) == (4, 2)
    assert StudyRecord.of(open_study(config, create=False)).false_stops == result
