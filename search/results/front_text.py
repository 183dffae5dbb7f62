"""The front as a terminal table: accuracies with their intervals, paired drops, timings and verdict marks."""

from __future__ import annotations

from typing import Any


def _number(value: Any, digits: int) -> str:  # a stored JSON value: a number, a string or null
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if number != number else f"{number:.{digits}f}"


def _pm(value: Any, interval: Any) -> str:
    """An accuracy and the half-width of its 95% interval, in points: "54.2±3.1"."""
    if not isinstance(interval, list) or _number(value, 3) == "n/a":
        return _number(value, 3)
    return f"{100 * float(value):.1f}±{100 * (interval[1] - interval[0]) / 2:.1f}"


def _range(interval: Any, scale: float, digits: int) -> str:
    return f"[{scale * interval[0]:.{digits}f},{scale * interval[1]:.{digits}f}]" if isinstance(interval, list) else "n/a"


def front_text(front, width: int) -> str:
    """The front as a plain table that fits ``width`` columns: accuracies with their 95% intervals, the
    paired test drop against the baseline, absolute milliseconds beside every ratio (all to one reference)
    with its interval across timing blocks where re-timed, and a verdict mark per target."""
    from udacisense.evaluators.evidence import VERDICT_MARKS

    header = ["trial", "target", "val %", "test %", "drop [95%]", "ms", "ref ms", "ratio [95%]", "size", "a/l/s"]
    rows = []
    for _, r in front.iterrows():
        ratio = _number(r["latency_ratio"], 2)
        ratio += f" {_range(r['latency_ratio_ci95'], 1, 2)}" if isinstance(r["latency_ratio_ci95"], list) else " (1 run)"
        marks = "".join(VERDICT_MARKS.get(str(r[f"verdict_{target}"]), "?") for target in ("accuracy", "latency", "size"))
        rows.append([str(r["trial"]), r["target"], _pm(r["val_top1"], r["val_top1_ci95"]),
                     _pm(r["test_top1"], r["test_top1_ci95"]), _range(r["test_drop_ci95"], 100, 1),
                     _number(r["latency_ms"], 3), _number(r["reference_latency_ms"], 3), ratio,
                     _number(r["size_ratio"], 2), marks + ("" if r["parity_ok"] else " parity!")])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    used = sum(widths) + 2 * len(widths)
    room = max(12, width - used)
    lines = []
    for row, pipeline in zip([header, *rows], ["pipeline", *front["pipeline"].astype(str)]):
        cells = [cell.rjust(w) if i not in (1, 9) else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        text = pipeline if len(pipeline) <= room else pipeline[: room - 1] + "…"
        lines.append("  ".join(cells) + "  " + text)
    return "\n".join(lines)


FRONT_LEGEND = (
    "val/test %: top-1 ± the half-width of its 95% (Wilson) interval; validation selects, test judges. drop: baseline "
    "minus candidate test top-1 in points, 95% interval paired on the same images. ms: median per image at batch 1; "
    "ratio: to the float baseline in {reference} (ref ms), timed in alternating rounds, [95% interval across "
    "independent timing blocks] once re-timed. a/l/s: accuracy, latency, size target: + met with confidence (the "
    "whole interval inside the allowance), ~ met on the point estimate only, - missed. TS x86 server: an x86/fbgemm "
    "int8 TorchScript file, not a phone artifact.")
