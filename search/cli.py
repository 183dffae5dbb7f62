"""The ``udacisense`` command line: every user-facing job, with clear errors instead of tracebacks."""

from __future__ import annotations

import argparse
import errno
import json
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from udacisense.common.logs import quiet_libraries, quiet_native_logs

quiet_native_logs()  # before anything imports torch: its C++ log level is read once, at import

from udacisense.common.errors import UserError, os_problem  # noqa: E402
from udacisense.search.study.config import StudyConfig, TargetsConfig, load_study  # noqa: E402

if TYPE_CHECKING:
    import optuna
    import pandas as pd

    from udacisense.search.workers.runner import WorkerSummary


def _study(args: argparse.Namespace) -> StudyConfig:
    return load_study(args.study)


def cmd_baseline(args: argparse.Namespace) -> int:
    from udacisense.search.study.baseline_profile import FILE_NAME
    from udacisense.search.study.workspace import open_workspace

    workspace = open_workspace(_study(args), progress=not args.quiet)
    profile = workspace.profile
    verb = ("your model, loaded" if workspace.baseline.source == "loaded" else
            "reused" if workspace.baseline.reused else f"trained in {profile.train_seconds:.0f} s")
    print(f"baseline {verb}: {workspace.baseline.directory / 'model.pt'}")
    print(f"  accuracy   val top-1 {profile.val_top1:.4f}   test top-1 {profile.test_top1:.4f}   "
          f"test top-5 {profile.test_top5:.4f}")
    print("  size       " + "   ".join(f"{name} {size.bytes / 1e6:.2f} MB" for name, size in profile.sizes.items()))
    print("  latency    " + "   ".join(f"{name} {latency.median_ms:.2f} ms" for name, latency in profile.latencies.items()))
    print(f"  compute    {profile.macs / 1e6:.1f} MMACs, peak memory {profile.peak_memory_bytes / 1e6:.2f} MB")
    print(f"  metrics    {workspace.baseline.directory / FILE_NAME}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from udacisense.search.study.init_study import init_study

    data = Path(args.data)
    name = args.name or data.resolve().name
    report = init_study(Path(args.model), data, Path("studies") / f"{name}.toml", name, force=args.force,
                        skip_unreadable=args.skip_unreadable, timeout_minutes=args.minutes)
    print(report.describe())
    print(f"next: udacisense search --study {report.path}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from udacisense.datasources.loaders import check_available

    study = _study(args)
    check_available(study.data)  # looks for the data only: extracting or downloading it is a search's job
    print(f"{args.study}: valid study {study.name!r} (storage {study.storage_url})")
    if args.json:
        from udacisense.common.schema import written_form

        print(json.dumps(written_form(study), indent=2, default=str))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from udacisense.search.results.convergence import convergence, plateau_stop
    from udacisense.search.study.storage import open_study
    from udacisense.search.workers.runner import run_search, search_summary

    study = _study(args)
    summaries = run_search(args.study, n_jobs=args.n_jobs, storage=args.storage, progress=not args.quiet,
                           stop_rule=partial(plateau_stop, study.search.plateau_minutes))
    optuna_study = open_study(study, args.storage, create=False)
    print(f"search done: {search_summary(optuna_study, summaries)}")
    print(_how_it_ended(summaries, study.search.timeout_minutes))
    front_state = convergence(optuna_study.get_trials(deepcopy=False))
    print(f"front: {'no trial measured yet' if front_state is None else front_state.describe()}")
    show_front(study, optuna_study, study.run_dir / "front")
    if args.no_export:
        return 0
    args.trial, args.pick, args.out = None, study.search.default_pick, str(study.run_dir / "export")
    try:
        return cmd_export(args)
    except UserError as error:
        # The search itself succeeded; an empty or infeasible front is reported, not a crash.
        print(f"no automatic export: {error}", file=sys.stderr)
        return 0


def _how_it_ended(summaries: Sequence[WorkerSummary], timeout_minutes: float) -> str:
    """The search's last word on why it ended: the front's plateau, or its time limit or trial budget."""
    stopped = next((s.stopped for s in summaries if s.stopped), None)
    if stopped is not None:
        return f"search ended early: {stopped}"
    limit = f"its time limit ({timeout_minutes:g} min) or " if timeout_minutes else ""
    return f"search ended at {limit}its trial budget, before its front reached a plateau"


def cmd_worker(args: argparse.Namespace) -> int:
    from udacisense.search.results.convergence import plateau_stop
    from udacisense.search.study.storage import open_study
    from udacisense.search.workers.runner import run_worker, search_summary

    # Students live on this machine's disk: a worker distils those it lacks (one at a time per machine).
    summary = run_worker(args.study, worker=args.worker_index, storage=args.storage, progress=not args.quiet,
                         distil_students=True, stop_rule=partial(plateau_stop, _study(args).search.plateau_minutes))
    study = open_study(_study(args), args.storage, create=False)
    print(f"worker {summary.worker} done in {summary.seconds:.0f} s (sampler seed {summary.sampler_seed}): "
          f"{search_summary(study, [summary])}")
    return 0


def _open(args: argparse.Namespace):
    from udacisense.search.study.storage import open_study
    from udacisense.search.study.workspace import open_workspace

    study = _study(args)
    # The storage first: a study that was never searched is reported before any data or baseline work.
    optuna_study = open_study(study, getattr(args, "storage", None), create=False)
    return study, open_workspace(study, progress=False), optuna_study


def cmd_front(args: argparse.Namespace) -> int:
    from udacisense.search.study.storage import open_study

    study = _study(args)
    # The storage alone: the front and the baseline's measurements are stored in it, so no data or baseline is needed.
    show_front(study, open_study(study, args.storage, read_only=True), Path(args.out) if args.out else None)
    return 0


def show_front(study: StudyConfig, optuna_study: optuna.Study, out_dir: Path | None) -> None:
    """Print the stored front (and write its files into ``out_dir``, when given): reads the storage only."""
    import shutil

    from udacisense.search.results.front import shown_tables, write_front
    from udacisense.search.results.front_text import FRONT_LEGEND, front_text
    from udacisense.search.study.baseline_profile import FILE_NAME, BaselineProfile
    from udacisense.search.study.records import StudyRecord
    from udacisense.search.study.trial_record import TrialRecord

    if not any(TrialRecord.of(t).is_measured for t in optuna_study.get_trials(deepcopy=False)):
        print("the study has no measured trials yet (completed, lowered and measured)")
        return
    baseline_val = BaselineProfile.of_study(optuna_study, study.run_dir / "baseline" / FILE_NAME).val_top1
    # Each row with its latest timing (the export's, else the re-timed front's), as the report and the card show it.
    stored = StudyRecord.of(optuna_study)
    front, everything = shown_tables(optuna_study.get_trials(deepcopy=False), study.targets, baseline_val,
                                     stored.exported_card, stored.retimed_front)
    print(front_text(front, shutil.get_terminal_size((120, 24)).columns))
    _say_left_off(optuna_study, study.targets, front)
    reference = study.evaluation.reference_runtime
    print(FRONT_LEGEND.format(reference=reference))
    print(f"baseline val top-1 {baseline_val:.3f}; targets: size x{study.targets.max_size_ratio:.2f}, "
          f"latency x{study.targets.max_latency_ratio:.2f}, accuracy >= {baseline_val - study.targets.max_accuracy_drop:.3f}")
    if out_dir is not None:
        paths = write_front(front, everything, study.targets, baseline_val, out_dir)
        print("wrote " + ", ".join(str(p) for p in paths.values()))


def _say_left_off(optuna_study: optuna.Study, targets: TargetsConfig, shown: pd.DataFrame) -> None:
    from udacisense.search.results.front import left_off_front

    left_off = left_off_front(optuna_study.get_trials(deepcopy=False), shown)
    if left_off:
        print(f"  the front within the cost targets (latency x{targets.max_latency_ratio:.2f}, size "
              f"x{targets.max_size_ratio:.2f}); left off, Pareto-optimal but missing one: trial(s) "
              f"{', '.join(map(str, left_off))} (pareto_front.png shows every measured trial)")


def cmd_export(args: argparse.Namespace) -> int:
    import shutil

    from udacisense.search.results.export import delegation_line, export_trial, keep_retimed_front, retime_front
    from udacisense.search.results.front import front_tables, knee, missed_targets, pick, within_cost_targets
    from udacisense.search.results.front_text import front_text
    from udacisense.search.trial.measuring import Yardstick

    study, workspace, optuna_study = _open(args)
    yardstick = Yardstick(workspace)
    number, paragraph, picked_by = args.trial, None, None
    if number is None:
        baseline_val = workspace.profile.val_top1
        front, everything = front_tables(optuna_study.get_trials(deepcopy=False), study.targets, baseline_val)
        front = within_cost_targets(retime_front(front, optuna_study, yardstick))
        paths = keep_retimed_front(optuna_study, front, everything, workspace, study.run_dir / "front")
        print(f"front re-timed with {study.search.retime_factor}x the runs in {study.search.retime_blocks} independent "
              f"blocks before picking `{args.pick}` "
              f"(written to {paths['csv'].parent}):")
        print(front_text(front, shutil.get_terminal_size((120, 24)).columns))
        _say_left_off(optuna_study, study.targets, front)
        for _, row in front[~front["retimed"]].iterrows():
            print(f"  trial {row['trial']} not re-timed (search-time figures, not exportable): {row['retime_note']}")
        # Only a re-timed row's artifact can be exported, and its figures are the ones a pick compares.
        exportable = front[front["retimed"]]
        if exportable.empty and not front.empty:
            raise UserError("No artifact on the Pareto front could be re-timed, so none can be exported (reasons above).",
                            "re-run the search where its artifacts are kept (runs/<name>/trials), or export a trial "
                            "with `--trial N` after restoring its artifact.")
        choice = knee(exportable, study.targets) if args.pick == "knee" else None
        number = pick(exportable, args.pick, study.targets) if choice is None else choice.trial
        picked_by = (f"the `{args.pick}` policy on the Pareto front re-timed with {study.search.retime_factor}x the "
                     f"runs in {study.search.retime_blocks} independent blocks"
                     + ("" if choice is None or choice.note is None else f"; {choice.note}"))
        paragraph = missed_targets(exportable, number, study.targets, baseline_val)
    result = export_trial(workspace, optuna_study, number, Path(args.out), yardstick, picked_by)
    latency = result.latency
    print(f"exported trial {number}: {result.artifact} ({result.artifact.stat().st_size / 1e6:.2f} MB)")
    if picked_by is not None:
        print(f"  picked by {picked_by}")
    print(f"  parity on the test split: top-1 agreement {result.parity.top1_agreement:.4f}, "
          f"max |diff| {result.parity.max_abs_diff:.5f} ({result.parity.samples} images)")
    interval = latency.ratio.interval
    print(f"  latency {latency.candidate_ms:.3f} ms against {latency.reference_ms:.3f} ms for the float baseline in "
          f"{study.evaluation.reference_runtime}: x{latency.ratio.ratio:.2f} "
          + (f"[95% interval across {latency.ratio.blocks} timing blocks {interval[0]:.2f}-{interval[1]:.2f}]"
             if interval else "(one timing block: no interval)"))
    card = json.loads(result.card.read_text(encoding="utf-8"))
    test = card["metrics"]["accuracy_evidence"]["test"]
    if test:
        print(f"  test top-1 {100 * test['top1']:.1f}% [{100 * test['top1_ci95'][0]:.1f}, {100 * test['top1_ci95'][1]:.1f}] "
              f"on {test['images']} images; drop against the baseline {100 * test['drop']:.1f} points, paired 95% "
              f"interval [{100 * test['drop_ci95'][0]:.1f}, {100 * test['drop_ci95'][1]:.1f}]")
    print("  targets: " + ", ".join(f"{target} {outcome}" for target, outcome in card["targets"]["verdicts"].items()))
    if result.delegation:
        print(f"  {delegation_line(result.delegation)}")
    print(f"  model card {result.card}")
    if not result.meets_targets:
        # The export's own figures (more runs) decide; the front's paragraph explains the pick.
        failed = ", ".join(f"{name} by {value:.3g}" for name, value in result.constraints.items() if value > 0)
        print("\n" + (paragraph or f"Trial {number} does not meet all targets. Its model card records "
                                    "meets_targets = false; do not ship it as meeting the brief.")
              + f" Measured at export, it misses {failed} (constraint values in the card; <= 0 meets a target).")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from udacisense.search.results.export import verify_artifact

    # The export folder and the images only: no study, workspace or cache, nothing written.
    artifact = Path(args.artifact).absolute()
    card, parity, top1 = verify_artifact(artifact, Path(args.data).absolute() if args.data else None)
    print(f"{artifact}: sha256 matches the model card; parity top-1 agreement {parity.top1_agreement:.4f}, "
          f"max |diff| {parity.max_abs_diff:.5f} on {parity.samples} test images (the card's list); "
          f"test top-1 {top1:.4f} (the card records {card['metrics']['test_top1']:.4f})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from udacisense.search.report import write_report

    result = write_report(_study(args), Path(args.out), storage=args.storage, trial=args.trial)
    print(f"report on trial {result.trial}: {result.markdown}, {result.html} and {len(result.images)} figures")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    import optuna_dashboard

    from udacisense.search.study.storage import existing_artifact_store, open_storage

    study = _study(args)
    # Read-only: the dashboard's own writes (notes, deleting a study, upgrading the schema) are refused.
    storage = open_storage(args.storage or study.storage_url, read_only=True)
    check_can_listen(args.host, args.port)
    print(f"optuna-dashboard for {study.name!r} on http://{args.host}:{args.port}/ (Ctrl-C stops it)")
    try:
        optuna_dashboard.run_server(storage, host=args.host, port=args.port, artifact_store=existing_artifact_store(study))
    except OSError as error:  # the port was taken between the check and the start
        raise listen_problem(error, args.host, args.port) from None
    except KeyboardInterrupt:  # the way to stop a dashboard: not an interruption of anything
        print("dashboard stopped")
    return 0


def listen_problem(error: OSError, host: str, port: int) -> UserError | OSError:
    """What a failed listen on ``host:port`` means for a user, or the error itself when unforeseen."""
    # socket.create_server re-raises a failed name lookup as a plain OSError with the negative EAI_* code.
    if isinstance(error, socket.gaierror) or (error.errno or 0) < 0:
        return UserError(f"--host {host!r} is not a known host name or address of this machine.",
                         "pass `--host 127.0.0.1` (this machine only) or `--host 0.0.0.0` (every network interface).")
    if error.errno == errno.EADDRINUSE:
        return UserError(f"Port {port} on {host} is already in use (another dashboard or server).",
                         f"pass another free port, e.g. `--port {port + 1 if port < 65535 else 8080}`, or stop the program using it.")
    if error.errno == errno.EADDRNOTAVAIL:
        return UserError(f"--host {host!r} is not an address of this machine, so the dashboard cannot listen on it.",
                         "pass `--host 127.0.0.1` (this machine only) or `--host 0.0.0.0` (every network interface).")
    if error.errno == errno.EACCES:
        return UserError(f"Listening on port {port} needs administrator rights (ports below 1024 are reserved).",
                         "pass `--port` 1024 or above, e.g. --port 8080.")
    return error


def check_can_listen(host: str, port: int) -> None:
    """Fail with a clear message before announcing a dashboard that could not start."""
    if not 1 <= port <= 65535:
        raise UserError(f"--port {port} is not a TCP port number (1 to 65535).", "pass `--port` between 1024 and 65535, e.g. --port 8080.")
    try:
        # Bound the way the dashboard's server binds (IPv4, address reuse), then released at once.
        with socket.create_server((host, port)):
            pass
    except OSError as error:
        raise listen_problem(error, host, port) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="udacisense", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--study", required=True, help="path to a study TOML file, e.g. studies/cifar10-offline.toml")
        sub.set_defaults(handler=handler)
        return sub

    baseline = add("baseline", cmd_baseline, "train (or reuse) the study's baseline and measure it")
    baseline.add_argument("--quiet", action="store_true", help="no progress bars")
    search = add("search", cmd_search, "run the multi-objective search, print the front, export the default pick")
    search.add_argument("--n-jobs", type=int, help="worker processes on this machine (default: one per "
                        "`evaluation.threads` physical cores, at most `search.n_trials`)")
    search.add_argument("--storage", help="override the study's storage URL, e.g. postgresql://user:pw@host/db")
    search.add_argument("--no-export", action="store_true", help="do not export the default pick at the end")
    search.add_argument("--quiet", action="store_true", help="no progress bars")
    worker = add("worker", cmd_worker, "join a (shared) study and run trials until its budget is spent")
    worker.add_argument("--storage", help="shared storage URL, e.g. postgresql://user:pw@host/db")
    worker.add_argument("--worker-index", type=int, default=0,
                        help="a label for this worker's progress lines (every process seeds its sampler on its own)")
    worker.add_argument("--quiet", action="store_true", help="no progress bars")
    front = add("front", cmd_front, "print the Pareto front from the storage (with --out, write it as CSV, JSON and PNG)")
    front.add_argument("--storage", help="override the study's storage URL")
    front.add_argument("--out", help="folder for pareto_front.{csv,json,png} (default: write nothing)")
    export = add("export", cmd_export, "write a verified mobile artifact and model card for one trial")
    choice = export.add_mutually_exclusive_group(required=True)
    choice.add_argument("--trial", type=int, help="trial number")
    choice.add_argument("--pick", choices=["knee", "smallest", "fastest", "most-accurate"],
                        help="choose from the front by policy (among points meeting the targets)")
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument("--storage", help="override the study's storage URL")
    report = add("report", cmd_report, "write the technical report (Markdown, HTML, figures) from stored measurements")
    report.add_argument("--out", required=True, help="output folder for report.md, report.html and the figures")
    report.add_argument("--storage", help="override the study's storage URL")
    report.add_argument("--trial", type=int, help="report on this trial instead of the study's default pick")
    dashboard = add("dashboard", cmd_dashboard, "serve optuna-dashboard on the study's storage and artifacts")
    dashboard.add_argument("--storage", help="override the study's storage URL")
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("--port", type=int, default=8080)
    check = add("check", cmd_check, "validate a study file without running anything")
    check.add_argument("--json", action="store_true", help="print the validated study with all defaults")
    init = commands.add_parser("init", help="write a study file for your trained model and image folder")
    init.add_argument("--model", required=True, help="your trained MobileNetV3 checkpoint (a state_dict, plain or wrapped)")
    init.add_argument("--data", required=True, help="your images: train/ (val/, test/) of class folders, or class folders")
    init.add_argument("--name", help="study name, written to studies/NAME.toml (default: the image folder's name)")
    init.add_argument("--minutes", type=float, default=30.0, help="the search's time limit (default 30)")
    init.add_argument("--force", action="store_true", help="replace an existing study file")
    init.add_argument("--skip-unreadable", action="store_true", help="leave out unreadable images instead of refusing")
    init.set_defaults(handler=cmd_init)
    verify = commands.add_parser("verify", help="check an exported artifact against its model card and re-run parity")
    verify.add_argument("artifact", help="path of model.pte or model.pt written by `udacisense export`")
    verify.add_argument("--data", help="the data root holding the test images the model card lists: for an imagefolder "
                        "study the folder with test/<class>/..., for CIFAR-100 the folder with cifar-100-python/")
    verify.set_defaults(handler=cmd_verify)
    return parser


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _storage_url(args: argparse.Namespace) -> str | None:
    """The storage the failed command used, so that a storage error gets the hint for its kind."""
    if getattr(args, "storage", None):
        return args.storage
    try:
        return load_study(args.study).storage_url if getattr(args, "study", None) else None
    except UserError:
        return None


def foreseen_problem(error: Exception, args: argparse.Namespace) -> UserError | None:
    """The problem and fix for an OS or library error a user can meet and fix; None for a bug."""
    import optuna
    import sqlalchemy

    from udacisense.search.study.storage import storage_problem

    if (problem := os_problem(error)) is not None:
        return problem
    if isinstance(error, (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)):
        return storage_problem(error, _storage_url(args))
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    # SIGTERM (a scheduler stopping the job) ends a trial as cleanly as Ctrl-C does. SIGINT is set
    # explicitly: a shell starting a job in the background makes it ignore SIGINT, and Python then
    # never raises KeyboardInterrupt.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return int(args.handler(args))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command in ("search", "worker"):
            print("interrupted: the running trial was recorded as failed and queued again; "
                  "run the same command to resume toward the same total", file=sys.stderr)
        else:
            print(f"interrupted: `udacisense {args.command}` stopped before it finished", file=sys.stderr)
        return 130
    except Exception as error:
        problem = foreseen_problem(error, args)
        if problem is None:
            traceback.print_exc()
            print("error: this is a bug in udacisense, not a mistake of yours: please report it with the command "
                  "you ran and the traceback above.", file=sys.stderr)
            return 1
        print(f"error: {problem}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
