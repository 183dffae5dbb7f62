"""Whether the measured front converged: hypervolume growth over the search's minutes against its noise."""

from __future__ import annotations

import datetime as dt

import optuna
import pytest

from udacisense.search.results.convergence import convergence, front_noise
from udacisense.search.results.hypervolume import hypervolume

START = dt.datetime(2025, 1, 1, 12, 0)
TrialState = optuna.trial.TrialState


def _trial(start: float, end: float, values: tuple[float, float, float] | None = None, *, accuracy_noise: float = 0.02,
           state: TrialState = TrialState.COMPLETE, **attrs) -> optuna.trial.FrozenTrial:
    """A trial that ran from minute ``start`` to ``end`` of the search; a measured one carries its validation
    top-1's 95% interval (± ``accuracy_noise``) and a 10th-percentile latency ratio 2% below its median."""
    if values is not None:
        accuracy, latency, _ = values
        interval = [accuracy - accuracy_noise, accuracy + accuracy_noise]
        attrs = {"evidence": {"val": {"images": 2000, "top1": accuracy, "top1_ci95": interval, "drop": 0.0,
                                      "drop_ci95": [-0.01, 0.01], "agreement": 0.9, "p_value": 1.0}},
                 "latency_ratio_p10": latency * 0.98, **attrs}
    trial = optuna.trial.create_trial(state=state, values=None if values is None else list(values), user_attrs=attrs,
                                      params={}, distributions={})
    trial.datetime_start, trial.datetime_complete = START + dt.timedelta(minutes=start), START + dt.timedelta(minutes=end)
    return trial


def _plateau_after_minute_7() -> list[optuna.trial.FrozenTrial]:
    """A 31-minute search whose front reaches its shape at minute 7; eight later trials add gains far smaller than
    what measuring the front again could add (a tenth of an accuracy point each), a stopped trial ends it."""
    trials = [_trial(0, 3, (0.50, 0.60, 0.30)), _trial(0, 7, (0.60, 0.40, 0.20))]
    trials += [_trial(7 + 3 * i, 9 + 3 * i, (0.601 + 0.0001 * i, 0.40, 0.20)) for i in range(8)]
    return [*trials, _trial(29, 31, state=TrialState.PRUNED)]


def test_a_front_that_stopped_improving_beyond_its_noise_converged_at_that_minute() -> None:
    state = convergence(_plateau_after_minute_7())
    assert state is not None and state.converged
    assert (state.settled_at, state.minutes) == (7, 31)
    assert 0 < state.growth < state.noise
    assert "stopped improving beyond its noise at minute 7 of 31" in state.describe()


def test_a_front_still_growing_in_the_last_half_of_the_minutes_has_not_converged() -> None:
    # A clearly better point at minute 25: beyond the front's noise, in the last half of the minutes.
    trials = [*_plateau_after_minute_7(), _trial(20, 25, (0.70, 0.30, 0.15))]
    state = convergence(trials)
    assert state is not None and not state.converged and state.settled_at == 25 and state.growth > state.noise
    assert "has not converged" in state.describe() and "last improved beyond that at minute 25 of 31" in state.describe()


def test_minutes_not_trial_counts_and_measured_trials_only() -> None:
    # Ten quick trials in the first minutes and one long one: the big improvement is the last trial by count
    # (the old "last quarter of the trials") but it finished at minute 4 of 40.
    trials = [_trial(0.1 * i, 0.1 * i + 0.5, (0.50 + 0.0001 * i, 0.60, 0.30)) for i in range(10)]
    trials += [_trial(0, 4, (0.62, 0.40, 0.20)), _trial(4, 40, (0.5, 0.9, 0.9))]
    state = convergence(trials)
    assert state is not None and state.converged and (state.settled_at, state.minutes) == (4, 40)
    # A screened trial's estimates and a parity failure are no point of the front, whatever they claim.
    claims = [_trial(30, 38, (0.99, 0.05, 0.05), fidelity="estimated"), _trial(30, 39, (0.98, 0.05, 0.05), parity_ok=False)]
    assert convergence(trials + claims) == state
    assert convergence([_trial(0, 2, state=TrialState.PRUNED)]) is None  # nothing measured yet


def test_the_noise_is_what_measuring_the_front_again_could_add() -> None:
    front = [_trial(0, 1, (0.60, 0.40, 0.20)), _trial(0, 2, (0.50, 0.20, 0.20))]
    lucky = [(0.62, 0.40 * 0.98, 0.20), (0.52, 0.20 * 0.98, 0.20)]
    assert front_noise(front) == pytest.approx(hypervolume(lucky) - hypervolume([t.values for t in front]))
    assert front_noise([_trial(0, 1, (0.60, 0.40, 0.20), accuracy_noise=0.04)]) > front_noise(front[:1])


def test_a_ratio_of_medians_below_its_rounds_10th_percentile_settles_a_one_point_front() -> None:
    # With few timing rounds the objective (median over all runs / median) can sit below the 10th percentile of
    # the per-round ratios; the lucky end is then the point itself, not a worse one (a negative noise settled no
    # minute: the large-model search of test_init crashed on it).
    trials = [_trial(0, 3, (0.55, 0.30, 0.10), latency_ratio_p10=0.33, accuracy_noise=0.0)]
    assert front_noise(trials) == 0.0
    state = convergence(trials)
    assert state is not None and state.settled_at == 3
