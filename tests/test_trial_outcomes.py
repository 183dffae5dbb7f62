"""How a trial ended, in the product's words: the log line and the ``outcome`` attribute the dashboard shows say
halved, below the floor, duplicate, ... never Optuna's "pruned". And a promotion whose worker was stopped is
queued again as the promotion it was, not as a sample that duplicates its screened original."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from tests.conftest import SHARED_ARCHIVE
from udacisense.search.study.budget import stop_if_not_needed
from udacisense.search.study.config import load_study
from udacisense.search.study.records import DIRECTIONS, Attr, Fidelity, StopReason, queued_attrs
from udacisense.search.study.trial_record import TrialRecord, describe_trial
from udacisense.search.trial.portfolio import enqueue_portfolio
from udacisense.search.workers.runner import requeue

DISTILL = "distill(α=0.7, T=4, 4 ep)"


def ended(state: TrialState, **attrs: Any) -> optuna.trial.FrozenTrial:
    """Trial 0 of a study, ended in ``state`` with ``attrs`` stored."""
    study = optuna.create_study(directions=list(DIRECTIONS))
    values = [0.5, 0.6, 0.4] if state is TrialState.COMPLETE else None
    study.add_trial(optuna.trial.create_trial(state=state, values=values, params={}, distributions={},
                                              user_attrs={Attr.PIPELINE.value: DISTILL, **attrs}))
    return study.trials[0]


def stopped(reason: StopReason, message: str = "", **attrs: Any) -> optuna.trial.FrozenTrial:
    return ended(TrialState.PRUNED, **{Attr.STOP_REASON.value: reason.value, Attr.STOP_MESSAGE.value: message}, **attrs)


ONE_STAGE = {Attr.STAGE_EPOCHS.value: [["distill", 4]]}
TWO_STAGES = {Attr.STAGE_EPOCHS.value: [["channels", 2], ["distill", 4]]}
CHANNELS_CLOSED = [[0, "channels", 0, 0.5, 2.0], [0, "channels", 1, 0.55, 4.0], [0, "channels", None, 0.55, 4.5]]


@pytest.mark.parametrize("trial, words", [
    (stopped(StopReason.HALVED, curve=[[0, "distill", 0, 0.4, 3.0]], **ONE_STAGE), "halved at epoch 1 of 4"),
    (stopped(StopReason.HALVED, curve=[*CHANNELS_CLOSED, [1, "distill", 1, 0.4, 3.0]], **TWO_STAGES),
     "halved at epoch 2 of 4 of stage 2 (distill)"),
    (stopped(StopReason.DURING_TRAINING, curve=[[0, "distill", 2, 0.1, 3.0]], **ONE_STAGE),
     "stopped during training at epoch 3 of 4"),
    (stopped(StopReason.DURING_TRAINING, curve=CHANNELS_CLOSED, **TWO_STAGES), "stopped during training after stage 1 (channels)"),
    (stopped(StopReason.DURING_TRAINING, curve=[[0, 1, 0.1]]), "stopped during training"),  # an older study's curve
    (stopped(StopReason.BEFORE_TRAINING), "stopped before training"),
    (stopped(StopReason.BELOW_FLOOR), "below the accuracy floor, not lowered"),
    (stopped(StopReason.DUPLICATE), "duplicate, not run again"),
    (stopped(StopReason.REJECTED), "rejected, an impossible stage order"),
    (stopped(StopReason.OVER_BUDGET), "over budget, not run"),
    (ended(TrialState.COMPLETE, fidelity=Fidelity.MEASURED.value), "measured"),
    (ended(TrialState.COMPLETE), "measured"),  # a study from before screening: every completed trial was lowered
    (ended(TrialState.COMPLETE, fidelity=Fidelity.ESTIMATED.value, estimate={"source": "memo"}),
     "screened on estimates, not lowered"),
    (ended(TrialState.FAIL, error="RuntimeError: boom"), "failed"),
    (ended(TrialState.FAIL), "interrupted"),  # its worker died or was stopped: it recorded no end
])
def test_a_trial_s_outcome_says_how_it_ended_in_the_product_s_words(trial: optuna.trial.FrozenTrial, words: str) -> None:
    assert TrialRecord.of(trial).outcome == words


def test_the_log_line_of_a_stopped_trial_says_how_it_ended_not_pruned() -> None:
    message = "halved after fine-tune epoch 1 of 4 of stage 1 distill (val top-1 0.400): ranked 3 of 3"
    line = describe_trial(stopped(StopReason.HALVED, message, curve=[[0, "distill", 0, 0.4, 3.0]], **ONE_STAGE))
    assert line == f"#0 {DISTILL}: halved at epoch 1 of 4 — {message}"
    assert describe_trial(stopped(StopReason.BELOW_FLOOR)) == f"#0 {DISTILL}: below the accuracy floor, not lowered"
    assert describe_trial(ended(TrialState.FAIL, error="RuntimeError: boom")) == f"#0 {DISTILL}: failed — RuntimeError: boom"
    assert "pruned" not in describe_trial(stopped(StopReason.DUPLICATE, "duplicate of trial 3: not run again"))


@pytest.mark.skipif(not SHARED_ARCHIVE.is_file(), reason="needs ../shared/data/cifar10-jpeg.tar.gz")
def test_every_trial_a_search_ran_stores_its_outcome_for_the_dashboard(smoke_study: Path) -> None:
    config = load_study(smoke_study)
    trials = optuna.load_study(study_name=config.name, storage=config.storage_url).get_trials(
        states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    assert trials and all(t.user_attrs.get(Attr.OUTCOME.value) == TrialRecord.of(t).outcome for t in trials)


def interrupted(study: optuna.Study, pipeline_key: str) -> int:
    """A worker takes the next queued trial, samples it and is stopped: Optuna marks it failed."""
    trial = study.ask()
    trial.suggest_float("lr", 0.001, 0.1)
    trial.set_user_attr(Attr.PIPELINE_KEY.value, pipeline_key)
    study.tell(trial, state=TrialState.FAIL)
    return trial.number


def test_a_promotion_whose_worker_was_stopped_runs_again_as_the_promotion_not_a_duplicate() -> None:
    study = optuna.create_study(directions=list(DIRECTIONS))
    params, distributions = {"lr": 0.01}, {"lr": FloatDistribution(0.001, 0.1)}
    study.add_trial(optuna.trial.create_trial(  # the screened original
        state=TrialState.COMPLETE, values=[0.5, 0.6, 0.4], params=params, distributions=distributions,
        user_attrs={Attr.PIPELINE_KEY.value: "k", Attr.FIDELITY.value: Fidelity.ESTIMATED.value, Attr.SEED.value: 7}))
    # Queued as `enqueue_promotions` queues one, with the original's seed.
    study.enqueue_trial(params, user_attrs=queued_attrs({Attr.SEED: 7, Attr.PROMOTED_FROM: 0}), skip_if_exists=False)
    requeue(study, interrupted(study, "k"))

    rerun = study.ask()
    queued = TrialRecord.of(study.trials[rerun.number])
    assert (queued.promoted_from, queued.seed) == (0, 7)
    stop_if_not_needed(rerun, "k", queued.promoted_from, budget=None)  # what the trial runner decides first: it runs
    assert TrialRecord.of(study.trials[rerun.number]).stop_reason is None


def test_a_requeued_portfolio_entry_stays_that_entry() -> None:
    study = optuna.create_study(directions=list(DIRECTIONS))
    assert enqueue_portfolio(study, [{"lr": 0.01}], ready=lambda _: True) == [0]
    requeue(study, interrupted(study, "k"))
    assert enqueue_portfolio(study, [{"lr": 0.01}], ready=lambda _: True) == []
    assert [TrialRecord.of(t).portfolio_entry for t in study.trials] == [0, 0]
