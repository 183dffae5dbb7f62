"""The ``udacisense`` command line: every user-facing job, with clear errors instead of tracebacks."""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from udacisense.common.logs import quiet_libraries, quiet_native_logs

quiet_native_logs()  # before anything imports torch: its C++ log level is read once, at import

from udacisense.common.errors import UserError, os_problem  # noqa: E402
from udacisense.search.study import StudyConfig, load_study  # noqa: E402


def _study(args: argparse.Namespace) -> StudyConfig:
    return load_study(args.study)


def cmd_baseline(args: argparse.Namespace) -> int:
    from udacisense.search.baseline_profile import FILE_NAME
    from udacisense.search.workspace import open_workspace

    workspace = open_workspace(_study(args), progress=not args.quiet)
    profile = workspace.profile
    verb = "reused" if workspace.baseline.reused else f"trained in {profile.train_seconds:.0f} s"
    print(f"baseline {verb}: {workspace.baseline.directory / 'model.pt'}")
    print(f"  accuracy   val top-1 {profile.val_top1:.4f}   test top-1 {profile.test_top1:.4f}   "
          f"test top-5 {profile.test_top5:.4f}")
    print("  size       " + "   ".join(f"{name} {size.bytes / 1e6:.2f} MB" for name, size in profile.sizes.items()))
    print("  latency    " + "   ".join(f"{name} {latency.median_ms:.2f} ms" for name, latency in profile.latencies.items()))
    print(f"  compute    {profile.macs / 1e6:.1f} MMACs, peak memory {profile.peak_memory_bytes / 1e6:.2f} MB")
    print(f"  metrics    {workspace.baseline.directory / FILE_NAME}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    study = _study(args)
    print(f"{args.study}: valid study {study.name!r} (storage {study.storage_url})")
    if args.json:
        from udacisense.common.schema import written_form

        print(json.dumps(written_form(study), indent=2, default=str))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from udacisense.search.runner import run_search, search_summary
    from udacisense.search.storage import open_study

    summaries = run_search(args.study, n_jobs=args.n_jobs, storage=args.storage, progress=not args.quiet)
    study = _study(args)
    print(f"search done: {search_summary(open_study(study, args.storage, create=False), summaries)}")
    if args.no_export:
        return cmd_front(args)
    args.trial, args.pick, args.out = None, study.search.default_pick, str(study.run_dir / "export")
    cmd_front(args)
    try:
        return cmd_export(args)
    except UserError as error:
        # The search itself succeeded; an empty or infeasible front is reported, not a crash.
        print(f"no automatic export: {error}", file=sys.stderr)
        return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from udacisense.search.runner import run_worker, search_summary
    from udacisense.search.storage import open_study

    # Students live on this machine's disk: a worker distils those it lacks (one at a time per machine).
    summary = run_worker(args.study, worker=args.worker_index, storage=args.storage, progress=not args.quiet,
                         distil_students=True)
    study = open_study(_study(args), args.storage, create=False)
    print(f"worker {summary.worker} done in {summary.seconds:.0f} s (sampler seed {summary.sampler_seed}): "
          f"{search_summary(study, [summary])}")
    return 0


def _open(args: argparse.Namespace):
    from udacisense.search.storage import open_study
    from udacisense.search.workspace import open_workspace

    study = _study(args)
    # The storage first: a study that was never searched is reported before any data or baseline work.
    optuna_study = open_study(study, getattr(args, "storage", None), create=False)
    return study, open_workspace(study, progress=False), optuna_study


def _number(value: Any, digits: int) -> str:  # a stored JSON value: a number, a string or null
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if number != number else f"{number:.{digits}f}"


def front_text(front, width: int) -> str:
    """The front as a plain table that fits ``width`` columns: absolute milliseconds beside every
    ratio (all to one reference), the ratio's p10-p90 interval, where each artifact runs, what it misses."""
    header = ["trial", "target", "val", "test", "ms", "ref ms", "ratio [p10-p90]", "size", "misses"]
    rows = []
    for _, r in front.iterrows():
        misses = [name for name, ok in (("acc", r["meets_accuracy"]), ("lat", r["meets_latency"]),
                                        ("size", r["meets_size"]), ("parity", r["parity_ok"])) if not ok]
        rows.append([str(r["trial"]), r["target"], _number(r["val_top1"], 3), _number(r["test_top1"], 3),
                     _number(r["latency_ms"], 3), _number(r["reference_latency_ms"], 3),
                     f"{_number(r['latency_ratio'], 2)} [{_number(r['latency_ratio_p10'], 2)}-"
                     f"{_number(r['latency_ratio_p90'], 2)}]", _number(r["size_ratio"], 2),
                     ",".join(misses) or "-"])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    used = sum(widths) + 2 * len(widths)
    room = max(12, width - used)
    lines = []
    for row, pipeline in zip([header, *rows], ["pipeline", *front["pipeline"].astype(str)]):
        cells = [cell.rjust(w) if i not in (1, 8) else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        text = pipeline if len(pipeline) <= room else pipeline[: room - 1] + "…"
        lines.append("  ".join(cells) + "  " + text)
    return "\n".join(lines)


def cmd_front(args: argparse.Namespace) -> int:
    import shutil

    from udacisense.search.front import export_front

    study, workspace, optuna_study = _open(args)
    baseline_val = workspace.profile.val_top1
    front, paths = export_front(optuna_study, study.targets, baseline_val, study.run_dir / "front")
    if front.empty:
        print("the study has no completed trials yet")
        return 0
    print(front_text(front, shutil.get_terminal_size((120, 24)).columns))
    reference = study.evaluation.reference_runtime
    print(f"ms: median per image at batch 1; ratio: to the float baseline in {reference} (ref ms), timed in "
          f"alternating rounds, [p10-p90] of the per-round ratios. TS x86 server: an x86/fbgemm int8 TorchScript "
          f"file, not a phone artifact.")
    print(f"baseline val top-1 {baseline_val:.3f}; targets: size x{1 - study.targets.size_reduction:.2f}, "
          f"latency x{1 - study.targets.latency_reduction:.2f}, accuracy >= {baseline_val - study.targets.max_accuracy_drop:.3f}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import shutil

    from udacisense.search.export import delegation_line, export_trial, retime_front
    from udacisense.search.front import export_front, missed_targets, pick
    from udacisense.search.objective import TrialRunner
    from udacisense.search.storage import artifact_store

    study, workspace, optuna_study = _open(args)
    runner = TrialRunner(workspace, artifact_store(study))
    number, paragraph, picked_by = args.trial, None, None
    if number is None:
        baseline_val = workspace.profile.val_top1
        front, _ = export_front(optuna_study, study.targets, baseline_val, study.run_dir / "front")
        front = retime_front(front, optuna_study, runner)
        print(f"front re-timed with {study.search.retime_factor}x the runs before picking `{args.pick}`:")
        print(front_text(front, shutil.get_terminal_size((120, 24)).columns))
        number = pick(front, args.pick, study.targets)
        picked_by = f"the `{args.pick}` policy on the Pareto front re-timed with {study.search.retime_factor}x the runs"
        paragraph = missed_targets(front, number, study.targets, baseline_val)
    result = export_trial(workspace, optuna_study, number, Path(args.out), runner, args.study, picked_by)
    main = result.latency.reference
    print(f"exported trial {number}: {result.artifact} ({result.artifact.stat().st_size / 1e6:.2f} MB)")
    print(f"  parity on the test split: top-1 agreement {result.parity.top1_agreement:.4f}, "
          f"max |diff| {result.parity.max_abs_diff:.5f} ({result.parity.samples} images)")
    print(f"  latency {main.candidate.median_ms:.3f} ms against {main.reference.median_ms:.3f} ms for the float "
          f"baseline in {main.reference.runtime}: x{main.ratio:.2f} [p10-p90 {main.ratio_p10:.2f}-{main.ratio_p90:.2f}]")
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
    from udacisense.search.export import card_study, read_card, verify_artifact
    from udacisense.search.workspace import open_workspace

    artifact = Path(args.artifact).absolute()
    study_path = Path(args.study) if args.study else None
    if study_path is None:
        study_path, working_directory = card_study(read_card(artifact), artifact.parent)
        # The study's own relative paths (runs, data) were resolved where the export ran.
        os.chdir(working_directory)
    workspace = open_workspace(load_study(study_path), progress=False)
    card, parity = verify_artifact(artifact, workspace)
    print(f"{artifact}: sha256 matches the model card; parity top-1 agreement {parity.top1_agreement:.4f}, "
          f"max |diff| {parity.max_abs_diff:.5f} on {parity.samples} test images")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from udacisense.search.report import write_report

    result = write_report(_study(args), Path(args.out), storage=args.storage, trial=args.trial)
    print(f"report on trial {result.trial}: {result.markdown}, {result.html} and {len(result.images)} figures")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    import optuna_dashboard

    from udacisense.search.storage import existing_artifact_store, open_storage

    study = _study(args)
    storage = open_storage(args.storage or study.storage_url, create=False)
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
    front = add("front", cmd_front, "print the Pareto front and write CSV, JSON and PNG")
    front.add_argument("--storage", help="override the study's storage URL")
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
    verify = commands.add_parser("verify", help="check an exported artifact against its model card and re-run parity")
    verify.add_argument("artifact", help="path of model.pte or model.pt written by `udacisense export`")
    verify.add_argument("--study", help="study file (default: the one named in the model card)")
    verify.set_defaults(handler=cmd_verify)
    return parser


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _storage_url(args: argparse.Namespace) -> str | None:
    """The storage the failed command used, so that a storage error gets the hint for its kind."""
    if getattr(args, "storage", None):
        return args.storage
    try:
        return load_study(args.study).storage_url if args.study else None
    except UserError:
        return None


def foreseen_problem(error: Exception, args: argparse.Namespace) -> UserError | None:
    """The problem and fix for an OS or library error a user can meet and fix; None for a bug."""
    import optuna
    import sqlalchemy

    from udacisense.search.storage import storage_problem

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
