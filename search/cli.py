"""The ``udacisense`` command line: every user-facing job, with clear errors instead of tracebacks."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from common.errors import UserError
from search.study import StudyConfig, load_study


def _study(args: argparse.Namespace) -> StudyConfig:
    return load_study(args.study)


def cmd_baseline(args: argparse.Namespace) -> int:
    from search.workspace import open_workspace

    workspace = open_workspace(_study(args), progress=not args.quiet)
    metrics = workspace.metrics
    verb = "reused" if workspace.baseline.reused else f"trained in {metrics['train_seconds']:.0f} s"
    print(f"baseline {verb}: {workspace.baseline.directory / 'model.pt'}")
    acc = metrics["accuracy"]
    print(f"  accuracy   val top-1 {acc['val']['top1']:.4f}   test top-1 {acc['test']['top1']:.4f}   "
          f"test top-5 {acc['test']['top5']:.4f}")
    print(f"  size       " + "   ".join(f"{name} {report['bytes'] / 1e6:.2f} MB" for name, report in metrics["size"].items()))
    print(f"  latency    " + "   ".join(f"{name} {report['median_ms']:.2f} ms" for name, report in metrics["latency"].items()))
    print(f"  compute    {metrics['flops']['macs'] / 1e6:.1f} MMACs, peak memory {metrics['peak_memory']['bytes'] / 1e6:.2f} MB")
    print(f"  metrics    {workspace.baseline.directory / 'metrics.json'}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    study = _study(args)
    print(f"{args.study}: valid study {study.name!r} (storage {study.storage_url})")
    if args.json:
        from dataclasses import asdict

        print(json.dumps(asdict(study), indent=2, default=str))
    return 0


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
    check = add("check", cmd_check, "validate a study file without running anything")
    check.add_argument("--json", action="store_true", help="print the validated study with all defaults")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
