"""Every process and every resume explores new ground: own seeds, no configuration run twice, honest counts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tests.conftest import REPO, TORCHSCRIPT_ARTIFACTS, cli_command, study_with_a_running_legal_trial
from udacisense.search.study.budget import budget_left, duplicate_of
from udacisense.search.study.config import SearchConfig, load_study
from udacisense.search.study.storage import open_study
from udacisense.search.study.workspace import Workspace
from udacisense.search.trial.objective import TrialRunner
from udacisense.search.workers.runner import TrialCounts, WorkerSummary, make_sampler, process_seed, search_summary
from udacisense.spaces.distributions import Choice
from udacisense.spaces.sampling import sample_pipeline
from udacisense.spaces.space import SpaceConfig

TrialState = optuna.trial.TrialState
X = optuna.distributions.FloatDistribution(0, 1)


def _add(study: optuna.Study, state: TrialState, x: float, **attrs) -> None:
    study.add_trial(optuna.trial.create_trial(state=state, values=[0.5, 0.5, 0.5] if state is TrialState.COMPLETE else None,
                                              params={"x": x}, distributions={"x": X}, user_attrs=attrs))


def test_a_configuration_held_by_a_complete_running_or_queued_trial_is_a_duplicate() -> None:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    _add(study, TrialState.COMPLETE, 0.1)
    _add(study, TrialState.RUNNING, 0.2)
    _add(study, TrialState.FAIL, 0.3)  # failed: its retry may run it again
    _add(study, TrialState.PRUNED, 0.4, stage="duplicate")
    assert duplicate_of(study, 9, {"x": 0.1}) == 0
    assert duplicate_of(study, 9, {"x": 0.2}) == 1
    assert duplicate_of(study, 9, {"x": 0.3}) is None
    assert duplicate_of(study, 1, {"x": 0.2}) is None  # a trial is no duplicate of itself
    assert budget_left(study, 5) == 2  # the stopped duplicate spent nothing
    counts = TrialCounts.of(study.get_trials())
    assert (counts.complete, counts.stopped, counts.failed, counts.skipped) == (1, 0, 1, 1)
    summary = search_summary(study, [WorkerSummary(0, (0, 3), 1.0, 7)])
    assert "1 candidate(s) judged: 1 complete, 0 stopped early; 1 failed, 1 sample(s) skipped" in summary
    assert "this run's 1 worker(s): 1 candidate(s) judged: 1 complete, 0 stopped early; 0 failed, 1 sample(s) skipped without compute\n" in summary
    # Other parameters, the same pipeline (an order between absent stages): a duplicate too.
    _add(study, TrialState.COMPLETE, 0.5, pipeline_key="same stages")
    assert duplicate_of(study, 9, {"x": 0.6}, "same stages") == 4
    assert duplicate_of(study, 9, {"x": 0.6}, "other stages") is None


def test_a_configuration_held_by_a_stopped_trial_that_ran_compute_is_a_duplicate_too() -> None:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    stops = ("during-training", "before-training", "below-floor", "rejected", "duplicate", "over-budget")
    for number, stop in enumerate(stops):
        _add(study, TrialState.PRUNED, number / 10, stage=stop)
    # Stopped after compute: taken, whatever the reason. Stopped before any: nothing ran, nothing is taken.
    assert [duplicate_of(study, 9, {"x": number / 10}) for number in range(len(stops))] == [0, 1, 2, None, None, None]
    _add(study, TrialState.PRUNED, 0.9, stage="during-training", pipeline_key="stopped stages")
    assert duplicate_of(study, 9, {"x": 0.95}, "stopped stages") == 6


def test_samples_that_differ_only_in_an_unused_parameter_are_one_pipeline() -> None:
    space = SpaceConfig(stages=("distill", "channels", "quantize"), quant_backends=Choice(("xnnpack",)))
    # Recorded in a real search: the order of distill and channels, neither of them present.
    common = {"use_distill": False, "use_channels": False, "quant_type": "dynamic", "dynamic_backend": "xnnpack",
              "linear_weight_bits": 4}
    one = sample_pipeline(optuna.trial.FixedTrial({**common, "order": "distill>channels"}), space)
    other = sample_pipeline(optuna.trial.FixedTrial({**common, "order": "channels>distill"}), space)
    assert one.key() == other.key() and one.describe() == other.describe()
    int8 = sample_pipeline(optuna.trial.FixedTrial({**common, "order": "distill>channels", "linear_weight_bits": 8}), space)
    assert int8.key() != one.key()


def test_a_proposed_duplicate_is_stopped_before_any_compute(tmp_path: Path) -> None:
    config = load_study(REPO / "studies" / "smoke.toml", {"runs_dir": str(tmp_path)})
    study, first = study_with_a_running_legal_trial(config.space)  # the trials below duplicate its configuration
    study.enqueue_trial(first.params)  # the sampler proposes the same configuration again
    second = study.ask()
    # No data and no baseline: a duplicate must be recognised before either is touched.
    runner = TrialRunner(Workspace(config, None, None, {}, None), None, sampler_seed=11)  # type: ignore[arg-type]  # sampling only: no data, baseline, students or store
    with pytest.raises(optuna.TrialPruned):
        runner(second)
    stored = study._storage.get_trial(second._trial_id)
    assert stored.params == first.params
    assert stored.user_attrs["stage"] == "duplicate" and stored.user_attrs["sampler_seed"] == 11
    assert f"duplicate of trial {first.number}" in stored.user_attrs["pruned_reason"]


def _first_samples(search: SearchConfig, space: SpaceConfig, seed: int, count: int = 5) -> list[dict]:
    """The parameters a process seeded with ``seed`` samples first, on a fresh study: no duplicate guard."""
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=make_sampler(search, seed))
    samples = []
    for _ in range(count):
        trial = study.ask()
        sample_pipeline(trial, space)
        samples.append(trial.params)
        study.tell(trial, state=TrialState.PRUNED)
    return samples


def test_every_process_and_every_start_draws_its_own_seed_and_samples_its_own_configurations() -> None:
    code = "from udacisense.search.workers.runner import process_seed; print(process_seed(0))"
    other = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    here, again = process_seed(0), process_seed(0)
    assert len({other, here, again}) == 3
    config = load_study(REPO / "studies" / "cifar10-offline.toml")
    # Equal study seeds, other processes: other configurations, with nothing to tell them apart but the seed.
    assert _first_samples(config.search, config.space, other) != _first_samples(config.search, config.space, here)
    # The sequence is the seed's: the same seed samples the same configurations (so a trial can be replayed).
    assert _first_samples(config.search, config.space, here) == _first_samples(config.search, config.space, here)


@pytest.mark.slow
def test_two_concurrent_searches_and_a_resume_never_repeat_a_configuration(seeded_smoke) -> None:
    path = seeded_smoke(edits={"n_trials = 4": "n_trials = 3\nearly_stopping = false", **TORCHSCRIPT_ARTIFACTS})
    # The two start on a study (and a database) that does not exist yet, as two users would.
    # One worker each: two processes on one study, as two users would start them.
    search = cli_command("search", "--study", str(path), "--quiet", "--no-export", "--n-jobs", "1")
    both = [subprocess.Popen(search, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=1500) for process in both]
    if [p.returncode for p in both] != [0, 0]:  # the whole of each stderr: the driver's message is the clue
        pytest.fail("\n\n".join(f"search {i} exited {p.returncode}:\n{err[-3000:]}" for i, (p, (_, err)) in
                                  enumerate(zip(both, outputs))))
    assert all("search done: study 'smoke'" in out and "this run's 1 worker(s)" in out for out, _ in outputs)
    path.write_text(path.read_text().replace("n_trials = 3", "n_trials = 5"))  # the same study, a larger budget
    resumed = subprocess.run(search, cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "study 'smoke': 5 candidate(s) judged" in resumed.stdout

    trials = open_study(load_study(path), create=False).get_trials()
    complete = [t for t in trials if t.state is TrialState.COMPLETE]
    assert len(complete) == 5
    assert len({tuple(sorted(t.params.items())) for t in complete}) == len(complete)
    assert len({t.user_attrs["sampler_seed"] for t in complete}) >= 2  # several processes, each its own stream
