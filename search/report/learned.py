"""The report's "What the search learned": its probes and what they cost, the options dropped and why, the students
it distilled or skipped and why, and where in each numeric range candidates kept their accuracy."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from udacisense.search.report.facts import Inputs
from udacisense.search.study.records import StopReason, StudyRecord
from udacisense.search.study.trial_record import TrialRecord
from udacisense.search.workers.probes import ProbeReport

# Numeric parameters whose halves are compared; categorical ones are told by the front and the probes.
RANGES = ("channel_ratio", "channel_head_ratio", "prune_amount", "finetune_lr", "distill_alpha", "distill_temperature")


def section_learned(inputs: Inputs) -> list[str]:
    stored = StudyRecord.of(inputs.optuna_study)
    lines = ["## What the search learned", ""]
    report = None if stored.probes is None else ProbeReport.from_dict(stored.probes)
    if report is None:
        lines += ["This study was not probed (`search.probes = false`, or its trials predate probes): its space is the "
                  "study file's.", ""]
    else:
        lines += _probe_lines(report)
    decisions = stored.student_decisions
    if decisions:
        lines += ["Students, in the order the probes ranked them:", ""]
        lines += [f"- {name}: {decision}" for name, decision in decisions.items()]
        lines.append("")
    lines += _range_lines(inputs.trials, inputs.floor)
    return lines


def _probe_lines(report: ProbeReport) -> list[str]:
    lines = [f"Before any training, {len(report.probes)} programs (one per structural option of the space) were lowered "
             f"and timed against the float baseline's `.pte` in {report.minutes:.1f} min on {report.cpu}; bytes and "
             "single-thread latency depend on the structure, not on trained weights.", "",
             "| structure | form | latency ratio [rounds' p10-p90] | bytes ratio | seconds |", "|---|---|---|---|---|"]
    lines += [f"| {p.structure} | {p.form} | {p.latency_ratio:.2f} [{p.latency_ratio_p10:.2f}-{p.latency_ratio_p90:.2f}] | "
              f"{p.size_ratio:.3f} | {p.seconds:.0f} |" for p in report.probes]
    lines.append("")
    if report.dropped:
        lines += ["Options dropped from this study's space:", ""]
        lines += [f"- `{d.setting}` {d.value}: {d.reason}" for d in report.dropped]
    else:
        lines.append("No option was dropped: each could meet the targets at a cost no other option matched at less risk.")
    if report.portfolio:
        lines += ["", f"The search started from {len(report.portfolio)} pipelines of its own (the cheapest "
                  "target-meeting structure of each family): " + "; ".join(
                      ", ".join(f"{k}={v}" for k, v in entry.items() if not k.startswith("use_") or v)
                      for entry in report.portfolio)]
    lines.append("")
    return lines


def _range_lines(trials: Sequence[TrialRecord], floor: float) -> list[str]:
    """For each numeric parameter, the share of judged candidates at or above the accuracy floor in the lower and
    the upper half of what was sampled: where a range kept accuracy and where it lost it."""
    rows = []
    for name in RANGES:
        judged = [(float(r.trial.params[name]), held) for r in trials
                  if name in r.trial.params and (held := _held(r, floor)) is not None]
        if len(judged) < 6:
            continue
        middle = statistics.median(value for value, _ in judged)
        low = [held for value, held in judged if value <= middle]
        high = [held for value, held in judged if value > middle]
        if low and high:
            rows.append(f"| {name} | {middle:.3g} | {sum(low)}/{len(low)} | {sum(high)}/{len(high)} |")
    if not rows:
        return []
    return ["Where accuracy held (candidates at or above the floor, of those judged, below and above each parameter's "
            "median sample):", "", "| parameter | median | at or below | above |", "|---|---|---|---|", *rows, ""]


def _held(record: TrialRecord, floor: float) -> bool | None:
    """Whether a judged candidate kept its accuracy: measured or screened at the floor, or not (stopped below it)."""
    if record.has_values:
        return record.val_accuracy >= floor
    if record.stop_reason in (StopReason.BELOW_FLOOR, StopReason.DURING_TRAINING, StopReason.HALVED):
        return False
    return None
