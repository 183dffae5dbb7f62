"""Formatting of stored numbers for the report: one function per kind of number, so tests format alike."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def fmt_acc(value: float) -> str:
    """An accuracy (fraction) as a percentage, e.g. ``61.7%``."""
    return f"{100 * float(value):.1f}%"


def _signed(delta: float) -> str:
    """A fraction in signed percentage points, without the unit, e.g. ``-3.3``."""
    value = round(100 * float(delta), 1) + 0.0  # no "-0.0"
    return f"{value:+.1f}"


def fmt_points(delta: float) -> str:
    """An accuracy difference (fraction) in percentage points, signed, e.g. ``-3.3 points``."""
    return f"{_signed(delta)} points"


def fmt_acc_ci(value: float, interval: Sequence[float] | None) -> str:
    """An accuracy with its 95% interval in percent, e.g. ``55.0% [51.9, 58.1]``."""
    return fmt_acc(value) + ("" if interval is None else f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]")


def fmt_points_ci(interval: Sequence[float]) -> str:
    """An interval of accuracy differences in signed percentage points, e.g. ``[-0.5, +2.9] points``."""
    return f"[{_signed(interval[0])}, {_signed(interval[1])}] points"


def fmt_drop_ci(drop: float, interval: Sequence[float]) -> str:
    """An accuracy drop with its interval in signed percentage points, compactly, e.g. ``+1.7 [-0.5, +3.4]``."""
    return f"{_signed(drop)} [{_signed(interval[0])}, {_signed(interval[1])}]"


def fmt_ratio(value: float) -> str:
    """A ratio to the baseline, e.g. ``0.412``."""
    return f"{float(value):.3f}"


def fmt_ratio_ci(value: float, interval: Sequence[float] | None) -> str:
    """A ratio with its 95% interval, e.g. ``0.350 [0.290, 0.410]``."""
    return fmt_ratio(value) + ("" if interval is None else f" [{fmt_ratio(interval[0])}, {fmt_ratio(interval[1])}]")


def fmt_change(ratio: float) -> str:
    """A ratio to the baseline in words, e.g. ``58.8% smaller`` / ``12.0% larger``."""
    change = 100 * (1 - float(ratio))
    return f"{abs(change):.1f}% {'smaller' if change >= 0 else 'larger'}"


def fmt_faster(ratio: float) -> str:
    change = 100 * (1 - float(ratio))
    return f"{abs(change):.1f}% {'faster' if change >= 0 else 'slower'}"


def fmt_bytes(value: float) -> str:
    """Bytes with a readable unit, e.g. ``1.52 MB`` or ``87.3 kB``."""
    value = float(value)
    return f"{value / 1e6:.2f} MB" if value >= 1e5 else f"{value / 1e3:.1f} kB"


def fmt_int(value: float) -> str:
    """An exact count with thousands separators, e.g. ``1,523,114``."""
    return f"{int(value):,}"


def fmt_ms(value: float) -> str:
    return f"{float(value):.2f} ms"


def fmt_millions(value: float) -> str:
    return f"{float(value) / 1e6:.2f} M"


def fmt_seconds(value: float) -> str:
    value = float(value)
    return f"{value:.0f} s" if abs(value) < 120 else f"{value / 60:.1f} min"


# A target's verdict (search.evidence.verdict) in words and as a table mark.
VERDICT_WORDS = {"met": "met with confidence", "point estimate only": "met on the point estimate only",
                 "missed": "**missed**"}
VERDICT_TABLE_MARKS = {"met": "✓", "point estimate only": "~", "missed": "✗"}


def fmt_verdict(verdict: str | None) -> str:
    return VERDICT_WORDS.get(str(verdict), "not judged (no per-image results stored)")


def fmt_verdict_mark(verdict: str | None) -> str:
    return VERDICT_TABLE_MARKS.get(str(verdict), "?")


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines + [""]


def or_nan(value: float | None) -> float:
    """A measurement a trial may lack, as NaN for formatting."""
    return float("nan") if value is None else value


def or_na(value: object) -> object:
    return "n/a" if value is None else value


def or_blank(value: object) -> object:
    return "" if value is None else value


def fmt_bytes_exact(value: float | None) -> str:
    return "n/a" if value is None else f"{fmt_bytes(value)} ({fmt_int(value)} B)"


def stored_interval(value: Any) -> list[float] | None:
    """A stored interval (a [low, high] list), or None where a row has none."""
    return value if isinstance(value, list) else None


def fmt_ms_or_na(value: float | None) -> str:
    return "n/a" if value is None else fmt_ms(value)
