"""Running a search: worker processes that take trials from one shared study until its budget is spent."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping

import joblib
import optuna
from tqdm.auto import tqdm

from udacisense.common.logs import quiet_libraries
from udacisense.search.budget import budget_left, is_rejected
from udacisense.search.objective import TrialRunner
from udacisense.search.storage import artifact_store, open_study
from udacisense.search.study import SearchConfig, load_study
from udacisense.search.workspace import open_workspace

TrialState = optuna.trial.TrialState


def make_sampler(search: SearchConfig, seed: int) -> optuna.samplers.BaseSampler:
    # Trials set their constraints themselves (``trial.set_constraint``); these samplers read them
    # from every finished trial (``FrozenTrial.constraints``) for constrained dominance.
    if search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=search.population_size, seed=seed)
    if search.sampler == "nsga3":
        return optuna.samplers.NSGAIIISampler(population_size=search.population_size, seed=seed)
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(10, search.n_trials))
    return optuna.samplers.RandomSampler(seed=seed)


# Stop sampling when a space yields almost only impossible orders, rather than loop for ever.
MAX_REJECTED_PER_TRIAL = 20


def next_action(study: optuna.Study, n_trials: int) -> str:
    """``run`` a trial, ``wait`` for other workers' running trials (they may die and need a retry), or ``done``."""
    optuna.storages.fail_stale_trials(study)  # fails and re-queues trials of dead workers
    if sum(1 for t in study.get_trials(deepcopy=False) if is_rejected(t)) > MAX_REJECTED_PER_TRIAL * n_trials:
        return "done"
    states = {t.state for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))}
    if TrialState.WAITING in states or budget_left(study, n_trials) > 0:
        return "run"
    return "wait" if TrialState.RUNNING in states else "done"


@dataclass(frozen=True)
class WorkerSummary:
    worker: int
    trials_run: int
    seconds: float


def run_worker(study_path: str, worker: int = 0, storage: str | None = None, progress: bool = True,
               n_trials: int | None = None, overrides: Mapping[str, Any] | None = None) -> WorkerSummary:
    """Join the study and run trials until its budget (``n_trials`` or the study's) is spent.

    ``overrides`` changes dotted study keys (e.g. ``{"search.sampler": "random"}``) for benchmarks.
    """
    quiet_libraries()  # joblib workers are fresh processes: the CLI's settings do not reach them
    study_config = load_study(study_path, overrides)
    workspace = open_workspace(study_config, progress=progress and worker == 0)
    budget = n_trials or study_config.search.n_trials
    sampler = make_sampler(study_config.search, study_config.seed + 1000 * worker)
    study = open_study(study_config, storage, sampler)
    runner = TrialRunner(workspace, artifact_store(study_config), progress=False, budget=budget)
    deadline = time.monotonic() + study_config.search.timeout_minutes * 60 if study_config.search.timeout_minutes else None
    started, count = time.perf_counter(), 0
    bar = tqdm(total=budget, initial=budget - max(0, budget_left(study, budget)), desc=f"search {study_config.name}",
               disable=not progress or worker != 0, unit="trial")
    try:
        while deadline is None or time.monotonic() < deadline:
            action = next_action(study, budget)
            if action == "done":
                break
            if action == "wait":
                time.sleep(study_config.search.heartbeat_seconds)
                continue
            study.optimize(runner, n_trials=1, catch=(Exception,), gc_after_trial=True)
            count += 1
            finished, runner.current_trial = runner.current_trial, None
            if progress and finished is not None:
                bar.n = budget - max(0, budget_left(study, budget))
                bar.refresh()
                tqdm.write(f"[worker {worker}] {describe_trial(study.get_trials(deepcopy=False)[finished])}")
    except KeyboardInterrupt:
        # Optuna has already marked the interrupted trial failed; queue it again so a resumed search reaches the total.
        if runner.current_trial is not None:
            requeue(study, runner.current_trial)
        raise
    finally:
        bar.close()
    return WorkerSummary(worker, count, time.perf_counter() - started)


def requeue(study: optuna.Study, number: int) -> None:
    """Queue a failed trial again, traceable to the original exactly as Optuna's heartbeat retries are."""
    trial = study.get_trials(deepcopy=False)[number]
    if trial.state is not TrialState.FAIL:
        return
    history = [*trial.system_attrs.get("retry_history", []), number]
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        system_attrs={"failed_trial": history[0], "retry_history": history},
    ))


def describe_trial(trial: optuna.trial.FrozenTrial) -> str:
    pipeline = trial.user_attrs.get("pipeline", "?")
    if trial.state is TrialState.COMPLETE and trial.values:
        acc, lat, size = trial.values
        attrs = trial.user_attrs
        parity = "" if attrs.get("parity_ok", True) else " FAILS PARITY (infeasible, artifact not kept)"
        return (f"#{trial.number} {pipeline}: acc {acc:.3f} latency {attrs.get('latency_ms', float('nan')):.3f} ms "
                f"x{lat:.2f} of the float {attrs.get('reference_runtime', 'baseline')} size x{size:.2f}{parity}")
    reason = trial.user_attrs.get("pruned_reason") or trial.user_attrs.get("error") or ""
    return f"#{trial.number} {trial.state.name.lower()} {pipeline}: {reason}"


def run_search(study_path: str, n_jobs: int = 1, storage: str | None = None, progress: bool = True,
               overrides: Mapping[str, Any] | None = None) -> list[WorkerSummary]:
    """Run ``n_jobs`` worker processes (not threads) on the same study; returns each worker's summary."""
    study_config = load_study(study_path, overrides)
    # Train and measure the baseline once, before the workers start, so they all reuse it.
    open_workspace(study_config, progress=progress)
    open_study(study_config, storage)
    if n_jobs == 1:
        return [run_worker(study_path, 0, storage, progress, overrides=overrides)]
    return list(joblib.Parallel(n_jobs=n_jobs, backend="loky")(
        joblib.delayed(run_worker)(study_path, worker, storage, progress, overrides=overrides) for worker in range(n_jobs)))
