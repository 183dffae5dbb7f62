"""Running a search: worker processes that take trials from one shared study until its budget is spent."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import joblib
import optuna
import torch
from tqdm.auto import tqdm

from udacisense.common.errors import UserError, trial_problem
from udacisense.common.logs import quiet_libraries
from udacisense.search.study.budget import budget_left, is_wasted_sample
from udacisense.search.study.config import SearchConfig, StudyConfig, load_study
from udacisense.search.study.records import UNSPENT, Attr, queued_attrs
from udacisense.search.study.storage import artifact_store, open_study
from udacisense.search.study.trial_record import TrialRecord, describe_trial, records
from udacisense.search.study.workspace import Workspace, open_workspace
from udacisense.search.trial.objective import TrialRunner
from udacisense.search.trial.portfolio import check_portfolio, enqueue_portfolio, enqueue_promotions
from udacisense.search.trial.screening import ScreeningRule, ScreeningSummary
from udacisense.search.workers.probe_decisions import ensure_probes, narrowed_study, portfolio_entries
from udacisense.search.workers.probes import ProbeReport
from udacisense.search.workers.students import (
    Student,
    being_distilled,
    decide_next_student,
    distilling_beside,
    ranked_students,
    student_ready,
    students_pending,
    undecided_students,
)
from udacisense.spaces.families import STUDENT_WIDTH

TrialState = optuna.trial.TrialState
# How often a worker waiting for a student's distillation looks again: a few seconds of a 5-30 minute wait.
DISTILLATION_POLL_SECONDS = 5


def make_sampler(search: SearchConfig, seed: int) -> optuna.samplers.BaseSampler:
    # Trials set their constraints themselves (``trial.set_constraint``); these samplers read them
    # from every finished trial (``FrozenTrial.constraints``) for constrained dominance.
    if search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=search.population_size, seed=seed)
    if search.sampler == "nsga3":
        return optuna.samplers.NSGAIIISampler(population_size=search.population_size, seed=seed)
    if search.sampler == "tpe":
        # group=True: the conditional space (params exist only with their stage) is modelled per group.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=min(10, search.n_trials))
    return optuna.samplers.RandomSampler(seed=seed)


def sampler_while_students_train(sampler: optuna.samplers.BaseSampler, study: optuna.Study, workspace: Workspace,
                                 report: ProbeReport | None) -> optuna.samplers.BaseSampler:
    """``sampler``, or while the first student is still being distilled, ``sampler`` with distillation into the
    current model.

    Then a worker runs trials that need no student instead of waiting for one (the width-0.5
    student takes 11-17 min on one core here). Those trials are ordinary observations of width 0.
    Without 0 among the widths the trial waits for the student, as before. Once a student is on the
    shelf, trials sample freely: one picking a student not distilled is rejected before compute.
    """
    ranked = ranked_students(workspace, report)
    waiting = undecided_students(study, workspace, report) or being_distilled(study, workspace, report)
    if (0.0 not in workspace.study.space.student_widths.options or not waiting
            or (report is not None and any(workspace.students.trained(*s) for s in ranked))):
        return sampler
    with warnings.catch_warnings():  # experimental since Optuna 2.4, and still the way to fix a parameter
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.PartialFixedSampler({STUDENT_WIDTH: 0.0}, sampler)


def process_seed(study_seed: int) -> int:
    """A sampler seed of this process's own, so that no two processes (or resumes) replay one sequence.

    Derived from the study seed and the process's identity (host, pid, start time); every trial
    records it in its ``sampler_seed`` user attribute.
    """
    identity = f"{study_seed}:{socket.gethostname()}:{os.getpid()}:{time.time_ns()}".encode()
    return int.from_bytes(hashlib.sha256(identity).digest()[:4], "little")


# Stop sampling when a space yields almost only impossible orders or configurations it already
# has (a small space, exhausted), rather than loop for ever.
MAX_REJECTED_PER_TRIAL = 20


def next_action(study: optuna.Study, n_trials: int) -> str:
    """``run`` a trial, ``wait`` for other workers' running trials (they may die and need a retry), or ``done``."""
    optuna.storages.fail_stale_trials(study)  # fails and re-queues trials of dead workers
    if sum(1 for t in study.get_trials(deepcopy=False) if is_wasted_sample(t)) > MAX_REJECTED_PER_TRIAL * n_trials:
        return "done"
    states = {t.state for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))}
    if TrialState.WAITING in states or budget_left(study, n_trials) > 0:
        return "run"
    return "wait" if TrialState.RUNNING in states else "done"


def open_questions(study: optuna.Study, workspace: Workspace, report: ProbeReport | None, seconds_left: float | None) -> bool:
    """Whether the search has questions of its own still open: queued trials (the portfolio's starts, promotions)
    or students still to come (``students_pending``). A plateau reached before they are answered is no convergence
    on what the search can reach, so it ends no search."""
    return (bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
            or students_pending(study, workspace, report, seconds_left))


@dataclass(frozen=True)
class WorkerSummary:
    worker: int
    trials: tuple[int, ...]  # the numbers of the trials this worker ran
    seconds: float
    sampler_seed: int
    stopped: str | None = None  # why it ended before the time limit and the budget (the stop rule's reason)


@dataclass(frozen=True)
class TrialCounts:
    """Trials by outcome: completed ones lowered and measured (``complete``) or ``screened`` on estimates,
    ``stopped`` ones (by reason in ``stopped_by``); samples that ran nothing (duplicates, impossible orders,
    surplus) are ``skipped``. Every trial but those and the failed ones judged a candidate."""

    complete: int
    stopped: int
    failed: int
    skipped: int
    screened: int = 0
    stopped_by: tuple[tuple[str, int], ...] = ()  # (stop reason, trials), most frequent first

    @classmethod
    def of(cls, trials: list[optuna.trial.FrozenTrial]) -> TrialCounts:
        def outcome(record: TrialRecord) -> str:
            if record.stop_reason in UNSPENT:
                return "skipped"
            return "screened" if record.has_values and not record.is_measured else record.state.name
        outcomes = [(record, outcome(record)) for record in records(trials)]
        counts = Counter(ended for _, ended in outcomes)
        reasons = Counter(str(r.stop_reason or "unrecorded") for r, ended in outcomes if ended == "PRUNED")
        return cls(counts["COMPLETE"], counts["PRUNED"], counts["FAIL"], counts["skipped"], counts["screened"],
                   tuple(reasons.most_common()))

    @property
    def judged(self) -> int:
        return self.complete + self.screened + self.stopped

    def describe(self) -> str:
        skipped = f", {self.skipped} sample(s) skipped without compute" if self.skipped else ""
        screened = f", {self.screened} screened on estimates (not lowered)" if self.screened else ""
        why = f" ({', '.join(f'{count} {reason}' for reason, count in self.stopped_by)})" if self.stopped_by else ""
        return (f"{self.judged} candidate(s) judged: {self.complete} complete{screened}, {self.stopped} stopped "
                f"early{why}; {self.failed} failed{skipped}")


def search_summary(study: optuna.Study, summaries: list[WorkerSummary]) -> str:
    """The study's trials by outcome, and this process's share of them."""
    trials = study.get_trials(deepcopy=False)
    mine = {number for summary in summaries for number in summary.trials}
    return (f"study {study.study_name!r}: {TrialCounts.of(trials).describe()}; "
            f"this run's {len(summaries)} worker(s): {TrialCounts.of([t for t in trials if t.number in mine]).describe()}\n"
            f"screening: {ScreeningSummary.of(records(trials)).describe()}")


def search_deadline(search: SearchConfig) -> float | None:
    """When (``time.time()``) a search starting now ends at its time limit; None without one.

    The limit counts from the trained baseline: the opening trials, the probes and the students distilled beside them
    are the search's work as much as its trials are, and a limit that started after them (3-12 min on 2 cores) left
    the README command's length to how long they took.
    """
    return time.time() + search.timeout_minutes * 60 if search.timeout_minutes else None


# Whether a search should end before its time limit and budget: a reason to print, or None (``results.convergence``
# supplies it from the CLI; this room cannot read the front itself).
StopRule = Callable[[optuna.Study], str | None]


def run_worker(study_path: str, worker: int = 0, storage: str | None = None, progress: bool = True,
               n_trials: int | None = None, overrides: Mapping[str, Any] | None = None,
               threads: int | None = None, distil_students: bool = False, stop_rule: StopRule | None = None,
               wait_for: Student | None = None, deadline: float | None = None) -> WorkerSummary:
    """Join the study and run trials until its budget (``n_trials`` or the study's) is spent.

    ``overrides`` changes dotted study keys (e.g. ``{"search.sampler": "random"}``) for benchmarks.
    ``threads`` sets the torch threads this process trains with (None: torch's default, all cores).
    ``distil_students``: decide the students the probes ranked, one at a time between trials (``workers.students``);
    meanwhile other workers sample only trials that need none until the first is distilled.
    ``stop_rule``: end early when it gives a reason, once no student is left undecided.
    ``wait_for``: a student a process beside the workers distils (``students.distilling_beside``): this worker takes
    no trial until that process ends (the student on the shelf, or abandoned), so that the processes fit the cores.
    ``deadline``: when (``time.time()``) this worker takes no more trials; None: the study's time limit from now, the
    probes included when this worker runs them (``search_deadline``).
    """
    quiet_libraries()  # joblib workers are fresh processes: the CLI's settings do not reach them
    if threads is not None:
        torch.set_num_threads(threads)
    study_config = load_study(study_path, overrides)
    workspace = open_workspace(study_config, progress=progress and worker == 0)
    budget = n_trials or study_config.search.n_trials
    seed = process_seed(study_config.seed)
    # Optuna's samplers read every trial in the storage when they sample, so this process's
    # sampler state accounts for the other workers' and earlier runs' trials.
    study = open_study(study_config, storage, make_sampler(study_config.search, seed))
    workspace.profile.record(study)  # what `front` and `report` read on machines without this baseline
    deadline = deadline if deadline is not None else search_deadline(study_config.search)
    report = ensure_probes(study, workspace, progress=progress and worker == 0)
    workspace = dataclasses.replace(workspace, study=narrowed_study(study_config, report))
    entries = portfolio_entries(workspace.study, report)
    runner = TrialRunner(workspace, artifact_store(study_config), progress=False, budget=budget, sampler_seed=seed)
    started, ran, stopped = time.perf_counter(), [], None
    rule = ScreeningRule.of(study_config.search)
    sampler = study.sampler
    bar = tqdm(total=budget, initial=budget - max(0, budget_left(study, budget)), desc=f"search {study_config.name}",
               disable=not progress or worker != 0, unit="trial")
    try:
        while deadline is None or time.time() < deadline:
            if wait_for is not None:
                if workspace.students.distilling(*wait_for):
                    time.sleep(DISTILLATION_POLL_SECONDS)
                    continue
                if progress:
                    tqdm.write(f"[worker {worker}] {workspace.students.name(*wait_for)} no longer distilling: taking trials")
                wait_for = None
            seconds_left = None if deadline is None else deadline - time.time()
            if distil_students:
                decided = decide_next_student(study, workspace, report, seconds_left=seconds_left, log=progress)
                # A student's portfolio pipelines wait for it (this worker's, or one distilling beside the probes):
                # queued earlier, another worker would have taken one and waited idle for the distillation.
                enqueue_portfolio(study, entries, ready=lambda entry: student_ready(workspace, entry))
                if decided is not None:
                    continue
            action = next_action(study, budget)
            if action == "done":
                break
            if action == "wait":
                time.sleep(study_config.search.heartbeat_seconds)
                continue
            if stop_rule is not None and not open_questions(study, workspace, report, seconds_left):
                stopped = stop_rule(study)
                if stopped is not None:
                    break
            if worker == 0 and study_config.search.screening:
                for number in enqueue_promotions(study, rule):
                    if progress:
                        tqdm.write(f"[worker {worker}] trial {number} promoted: the measured front no longer rules it out; "
                                   "queued to run again, lowered and measured")
            study.sampler = sampler_while_students_train(sampler, study, workspace, report)
            study.optimize(runner, n_trials=1, catch=(Exception,), gc_after_trial=True)
            finished, runner.current_trial = runner.current_trial, None
            if finished is not None:
                ran.append(finished)
            problem = trial_problem(runner.failure) if runner.failure is not None else None
            if finished is not None and problem is not None:
                # A full disk or a changed space fails every trial alike: stop, and queue this one again for later.
                requeue(study, finished)
                raise problem
            if progress and finished is not None:
                # Never backwards: a queued trial counted at the start may leave the budget (a duplicate not run), and
                # a count below the bar's start showed a negative rate and time left.
                bar.n = max(bar.n, budget - max(0, budget_left(study, budget)))
                bar.refresh()
                tqdm.write(f"[worker {worker}] {describe_trial(study.get_trials(deepcopy=False)[finished])}")
    except KeyboardInterrupt:
        # Optuna has already marked the interrupted trial failed; queue it again so a resumed search reaches the total.
        if runner.current_trial is not None:
            requeue(study, runner.current_trial)
        raise
    finally:
        bar.close()
    return WorkerSummary(worker, tuple(ran), time.perf_counter() - started, seed, stopped)


def requeue(study: optuna.Study, number: int) -> None:
    """Queue a failed trial again, traceable to the original exactly as Optuna's heartbeat retries are,
    with the seed it trained with (and the trial it replays or promotes, the portfolio entry it was), as
    those carry them too."""
    trial = study.get_trials(deepcopy=False)[number]
    if trial.state is not TrialState.FAIL:
        return
    history = [*trial.system_attrs.get("retry_history", []), number]
    record = TrialRecord.of(trial)
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        system_attrs={"failed_trial": history[0], "retry_history": history},
        # What it was queued as: a promotion run as a plain sample would stop as a duplicate of its screened original.
        user_attrs=queued_attrs({Attr.SEED: record.seed, Attr.STOPPED_TRIAL: record.stopped_trial,
                                 Attr.PROMOTED_FROM: record.promoted_from, Attr.PORTFOLIO_ENTRY: record.portfolio_entry}),
    ))


@dataclass(frozen=True)
class WorkerPlan:
    workers: int
    threads: int  # torch threads each worker trains with


def plan_workers(study: StudyConfig, n_jobs: int | None = None) -> WorkerPlan:
    """``n_jobs`` workers, or as many as the physical cores hold at the study's thread count; each trains on its share.

    Physical cores, as torch counts them for its default: two threads on one core's SMT siblings
    train barely faster than one and would disturb each other's latency timing.
    """
    if n_jobs is not None and n_jobs < 1:
        raise UserError(f"--n-jobs is {n_jobs}.", "give 1 or more worker processes, or leave it out for one per core.")
    cores = joblib.cpu_count(only_physical_cores=True)
    # More workers than trials would only wait for the others.
    workers = n_jobs or max(1, min(cores // study.evaluation.threads, study.search.n_trials))
    return WorkerPlan(workers, max(1, cores // workers))


def run_search(study_path: str, n_jobs: int | None = None, storage: str | None = None, progress: bool = True,
               overrides: Mapping[str, Any] | None = None, stop_rule: StopRule | None = None) -> list[WorkerSummary]:
    """Run worker processes (not threads) on the same study, as ``plan_workers`` sizes them; returns each one's summary."""
    study_config = load_study(study_path, overrides)
    plan = plan_workers(study_config, n_jobs)
    # The storage first: a study file that no longer matches its stored trials fails before any work.
    study = open_study(study_config, storage)
    # Train and measure the baseline once, before the workers start, so they all reuse it.
    workspace = open_workspace(study_config, progress=progress)
    # Stored here, before the workers start, so that they find it stored rather than all write it at once.
    workspace.profile.record(study)
    deadline = search_deadline(study_config.search)
    check_portfolio(study_config.space, study_config.search.portfolio)
    # Probed once here, before the workers start, on as many cores as they will use: they read the stored report.
    report = ensure_probes(study, workspace, progress=progress, processes=plan.workers)
    if progress and report is not None:
        print(report.describe(), flush=True)
    # A distillation that outlasted the probes would share the cores with every worker: on 2 cores it got two thirds
    # of one, and the most promising student reached the shelf 28 min after the opening, 2 min before the time limit.
    # So the last worker waits for it, and the processes fit the cores (a single worker keeps taking trials). Asked
    # of the study's own space, whose student the process beside distils whether or not the probes kept it.
    beside = distilling_beside(workspace) if plan.workers > 1 else None
    workspace = dataclasses.replace(workspace, study=narrowed_study(study_config, report))
    enqueue_portfolio(study, portfolio_entries(workspace.study, report),
                      ready=lambda entry: student_ready(workspace, entry))
    # The students are decided by the first worker while the others run trials that need none: trained
    # before the workers started, they kept one of 2 cores idle for 11-17 min (32x32 batches are too small
    # to split: the width-0.5 student with its teacher trained at 4.3 batches/s on 1 thread and 3.2 on 2);
    # on demand, one worker waited for the other's.
    distil = bool(undecided_students(study, workspace, report) or being_distilled(study, workspace, report))
    if progress:
        students = " (worker 0 decides the students between its trials)" if distil else ""
        waiting = (f"; worker {plan.workers - 1} waits while {workspace.students.name(*beside)} distils beside them"
                   if beside is not None else "")
        print(f"search: {plan.workers} worker process(es), {plan.threads} torch thread(s) each{students}{waiting}", flush=True)
    if plan.workers == 1:
        return [run_worker(study_path, 0, storage, progress, overrides=overrides, threads=plan.threads,
                           distil_students=distil, stop_rule=stop_rule, deadline=deadline)]
    return list(joblib.Parallel(n_jobs=plan.workers, backend="loky")(
        joblib.delayed(run_worker)(study_path, worker, storage, progress, overrides=overrides, threads=plan.threads,
                                   distil_students=distil and worker == 0, stop_rule=stop_rule,
                                   wait_for=beside if worker == plan.workers - 1 else None, deadline=deadline)
        for worker in range(plan.workers)))
