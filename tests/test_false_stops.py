"""The false-stop rate of early stopping, measured on a random sample of the stopped trials themselves: same parameters,
same seed, screening off; and how the report judges it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest

from tests.conftest import REPO, study_with_a_running_legal_trial
from tests.test_report import _synthetic_study
from udacisense.search.report.search_sections import false_stops_line
from udacisense.search.report.trial_facts import EarlyStoppingSavings, early_stopping_verdict
from udacisense.search.study.budget import budget_left
from udacisense.search.study.config import load_study
from udacisense.search.study.records import (
    Attr,
    FalseStops,
    FalseStopTrial,
    StopReason,
    StudyRecord,
    queued_attrs,
    record_stop,
    store,
)
from udacisense.search.study.storage import open_study
from udacisense.search.study.trial_record import TrialRecord, records
from udacisense.search.study.workspace import Workspace
from udacisense.search.trial.objective import TrialRunner, trial_seed
from udacisense.search.workers.false_stops import measure_false_stops, sample_of_stops
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


def test_a_random_sample_of_every_kind_of_stop_is_replayed_with_screening_off_and_those_that_reach_the_floor_counted(
        tmp_path: Path) -> None:
    path = _synthetic_study(tmp_path, complete=False)  # baseline val top-1 0.8, allowed drop 0.1: floor 0.7
    config = load_study(path)
    original = open_study(config, create=False)
    # trial -> (how early stopping stopped it, the seed it stored; 3: stored before seeds were)
    stopped = {1: ("during-training", 101), 3: ("halved", None), 4: ("during-training", 104), 5: ("before-training", 105)}
    for number in range(6):
        reason = stopped[number][0] if number in stopped else "below-floor" if number == 2 else None
        attrs: dict[str, Any] = {} if reason is None else {"stage": reason}
        if number in stopped and stopped[number][1] is not None:
            attrs["seed"] = stopped[number][1]
        original.add_trial(optuna.trial.create_trial(
            state=TrialState.PRUNED if reason else TrialState.COMPLETE, values=None if reason else [0.8, 0.5, 0.5],
            params={"x": float(number)}, distributions={"x": X}, user_attrs=attrs))
    # What each configuration ends at, run to the end: x=3 stops below the floor before lowering.
    final = {1.0: 0.75, 3.0: 0.5, 4.0: 0.65, 5.0: 0.71}
    seen: dict[int, tuple[float, int]] = {}

    def replay(study_path: str, overrides: Mapping[str, Any]) -> None:
        sibling = load_study(study_path, overrides)
        # A replay's final accuracy is a measurement: nothing stops, halves or screens it.
        assert sibling.name == "synthetic-false-stops" and not sibling.search.early_stopping and not sibling.search.screening
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

    sample = [t.number for t in sample_of_stops(records(original.get_trials()), 4, config.seed)]
    result = measure_false_stops(path, 3, run=replay)
    # Three of the four stops, drawn at random; each replay with its original's parameters and seed (trial 3's: study seed + 3).
    seeds = {n: (float(n), stopped[n][1] or config.seed + n) for n in stopped}
    assert seen == {n: seeds[n] for n in sample[:3]}
    assert [(t.original, t.final_val, t.reached, t.reason) for t in result.trials] == [
        (n, final[float(n)], final[float(n)] >= 0.7, StopReason(stopped[n][0])) for n in sample[:3]]  # in replay order
    assert all(t.floor == pytest.approx(0.7) for t in result.trials)
    assert StudyRecord.of(open_study(config, create=False)).false_stops == result
    # Asked for more later: only the trial not replayed yet runs; the count covers all four.
    seen.clear()
    result = measure_false_stops(path, 4, run=replay)
    assert seen == {sample[3]: seeds[sample[3]]}
    assert (result.measured, result.false_stops) == (4, 2)
    assert StudyRecord.of(open_study(config, create=False)).false_stops == result


def test_the_sample_of_stops_is_drawn_at_random_from_every_kind_the_savings_count() -> None:
    kinds = [StopReason.HALVED, StopReason.DURING_TRAINING, StopReason.BEFORE_TRAINING, StopReason.BELOW_FLOOR]
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for number in range(120):
        study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, user_attrs={"stage": kinds[number % 4].value}))
    trials = records(study.get_trials())[:80]
    sample = sample_of_stops(trials, 12, seed=7)
    assert len(sample) == 12 and {t.stop_reason for t in sample} == set(kinds[:3])  # never a below-floor stop
    assert [t.number for t in sample] != sorted(t.number for t in sample)  # not the oldest first
    assert sample == sample_of_stops(trials, 12, seed=7) != sample_of_stops(trials, 12, seed=8)
    assert sample[:5] == sample_of_stops(trials, 5, seed=7)  # a larger sample later holds the smaller one
    # Trials stopped since do not reshuffle the earlier ones.
    later = sample_of_stops(records(study.get_trials()), 1000, seed=7)
    assert [t.number for t in later if t.number < 80][:12] == [t.number for t in sample]


def _judged(false_stops: int, replays: int) -> tuple[str, str]:
    measured = FalseStops(tuple(FalseStopTrial(n, n, 0.75 if n < false_stops else 0.5, 0.7, n < false_stops,
                                               StopReason.HALVED) for n in range(replays)))
    return early_stopping_verdict(measured), false_stops_line(EarlyStoppingSavings(0.0, 0.0, {}, (), measured))


def test_the_report_judges_false_stops_on_the_upper_bound_of_their_rate_and_states_the_sample_size() -> None:
    # Two clean replays rule out little: the rate may still be two in three.
    verdict, line = _judged(0, 2)
    assert verdict == "undecided" and line.startswith(
        "False stops: **0 of 2** replays reached the floor: false-stop rate ≤ 66% (95% upper bound) — too few replays "
        "to say early stopping is safe; replay more with `--false-stops N`. The replays: a random sample of 2 of the")
    assert "(2 halved)" in line
    verdict, line = _judged(0, 20)
    assert verdict == "safe" and "≤ 16% (95% upper bound). The replays" in line
    verdict, line = _judged(3, 10)
    assert verdict == "harmful" and "**3 of 10**" in line and "too few" not in line
