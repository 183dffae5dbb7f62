"""How sure a trial's figures are: accuracy intervals, the paired drop against the baseline on the same
images, and for each target whether it is met with confidence, on the point estimate only, or missed.

Validation accuracy selects (the objective, early stopping, the pick), so the selected trial's
validation score is biased upwards; test accuracy never ranks candidates, so the verdicts and the
headline of a chosen model rest on it. Its one use in a pick is to say whether a validation gap
between front rows is real (``resolved_shortfalls``): the most accurate row's lead on the images it
was chosen on is biased upwards too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from udacisense.evaluators.intervals import Interval, holm, paired_by_class, paired_comparison, wilson

Verdict = Literal["met", "point estimate only", "missed"]
VERDICT_MARKS: dict[str, str] = {"met": "+", "point estimate only": "~", "missed": "-"}


def verdict(point: float, interval: Interval | None, allowance: float) -> Verdict:
    """Where a lower-is-better figure (an accuracy drop, a latency ratio) stands against its allowance:
    met when its whole interval is within it, met on the point estimate only when the interval straddles
    it (or there is no interval), missed when the point estimate is beyond it."""
    if point > allowance:
        return "missed"
    if interval is not None and interval[1] <= allowance:
        return "met"
    return "point estimate only"


@dataclass(frozen=True)
class SplitEvidence:
    """A candidate's accuracy on one split, alone and paired with the baseline's on the same images."""

    images: int
    top1: float
    top1_ci95: Interval  # Wilson
    drop: float  # baseline minus candidate top-1
    drop_ci95: Interval  # paired (Newcombe), see evaluators.intervals.paired_comparison
    agreement: float  # share of images both get right or both get wrong
    p_value: float  # exact McNemar test of "as accurate as the baseline"

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.images, "top1": self.top1, "top1_ci95": list(self.top1_ci95), "drop": self.drop,
                "drop_ci95": list(self.drop_ci95), "agreement": self.agreement, "p_value": self.p_value}

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> SplitEvidence:
        low, high = document["top1_ci95"]
        drop_low, drop_high = document["drop_ci95"]
        return cls(int(document["images"]), float(document["top1"]), (float(low), float(high)), float(document["drop"]),
                   (float(drop_low), float(drop_high)), float(document["agreement"]), float(document["p_value"]))


def split_evidence(candidate_correct: torch.Tensor, baseline_correct: torch.Tensor) -> SplitEvidence:
    """The candidate's accuracy with its interval and its paired drop against the baseline (same images, same order)."""
    if candidate_correct.shape != baseline_correct.shape:
        raise ValueError(f"the candidate was evaluated on {candidate_correct.numel()} images and the baseline on "
                         f"{baseline_correct.numel()}: a paired comparison needs the same images")
    paired = paired_comparison(baseline_correct, candidate_correct)
    hits = int(candidate_correct.sum())
    return SplitEvidence(images=paired.n, top1=hits / paired.n, top1_ci95=wilson(hits, paired.n),
                         drop=paired.difference, drop_ci95=paired.interval, agreement=paired.agreement,
                         p_value=paired.p_value)


def resolved_shortfalls(best_correct: torch.Tensor, others: Sequence[torch.Tensor], alpha: float = 0.05) -> list[bool]:
    """Which of ``others`` are less accurate than ``best`` beyond noise, all judged together: the chance that
    noise alone makes any one of them look resolved stays at ``alpha`` (Holm over their exact McNemar tests).
    Each gap tested alone at 95% would, with six to ten rows, call some noise gap resolved in most fronts."""
    comparisons = [paired_comparison(best_correct, other) for other in others]
    rejected = holm([c.p_value for c in comparisons], alpha)
    return [rejects and c.difference > 0 for rejects, c in zip(rejected, comparisons, strict=True)]


@dataclass(frozen=True)
class ClassDifference:
    """The candidate against the baseline on one class's test images, paired."""

    index: int
    drop: float  # baseline minus candidate, on that class
    drop_ci95: Interval
    images: int


def resolved_class_drops(candidate_correct: torch.Tensor, baseline_correct: torch.Tensor, labels: torch.Tensor,
                         classes: int) -> list[ClassDifference]:
    """The classes where the candidate is worse than the baseline beyond noise, worst first.

    Each interval is at 1 - 0.05/classes (Bonferroni): with ten 95% intervals, one excludes zero by
    chance in every other comparison, and a recommendation must not chase that one.
    """
    by_class = paired_by_class(baseline_correct, candidate_correct, labels, confidence=1 - 0.05 / max(classes, 1))
    worse = [ClassDifference(index, c.difference, c.interval, c.n) for index, c in by_class.items() if c.interval[0] > 0]
    return sorted(worse, key=lambda c: c.drop, reverse=True)
