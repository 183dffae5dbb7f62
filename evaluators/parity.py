"""Does a shipped artifact compute what the PyTorch model computed? Compared on real test batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch

from udacisense.common.errors import UserError
from udacisense.evaluators.accuracy import predict_logits
from udacisense.evaluators.intervals import wilson


@dataclass(frozen=True)
class ParityReport:
    top1_agreement: float
    max_abs_diff: float
    samples: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ParityRule:
    """What an artifact must match of its PyTorch model: a top-1 agreement and, for float, a logit tolerance."""

    min_agreement: float
    max_abs_diff: float | None  # None: int8 kernels round differently, so only the top-1 is compared

    def shortfall(self, report: ParityReport) -> float:
        """How far ``report`` misses the rule: <= 0 passes (an Optuna constraint value).

        Float artifacts must agree on every image. An int8 one misses only when its agreement's 95% upper
        bound (Wilson) is below the minimum: int8 kernels round apart from the PyTorch model's simulation of
        them and flip the odd image near a decision boundary, so 17 of 18 images (94%) is no evidence of
        an artifact below 95%, while on 10,000 images the bound is within half a point of the rate.
        """
        if self.max_abs_diff is None:
            agreed = round(report.top1_agreement * report.samples)
            return self.min_agreement - wilson(agreed, report.samples)[1]
        return max(self.min_agreement - report.top1_agreement, report.max_abs_diff - self.max_abs_diff)

    def passes(self, report: ParityReport) -> bool:
        return self.shortfall(report) <= 0

    def describe(self) -> str:
        tolerance = "" if self.max_abs_diff is None else f", max |logit difference| <= {self.max_abs_diff:g}"
        bound = " (its 95% upper bound)" if self.max_abs_diff is None else ""
        return f"top-1 agreement{bound} >= {self.min_agreement:g}{tolerance}"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def parity_rule(quantized: bool, *, float_logit_tolerance: float, int8_min_agreement: float) -> ParityRule:
    """Float artifacts must agree on every image within ``float_logit_tolerance``; int8 at ``int8_min_agreement``."""
    if quantized:
        return ParityRule(int8_min_agreement, None)
    return ParityRule(1.0, float_logit_tolerance)


def compare_logits(reference: torch.Tensor, candidate: torch.Tensor) -> ParityReport:
    if reference.shape != candidate.shape:
        raise ValueError(f"logit shapes differ: {tuple(reference.shape)} vs {tuple(candidate.shape)}")
    agreement = (reference.argmax(1) == candidate.argmax(1)).float().mean()
    return ParityReport(float(agreement), float((reference - candidate).abs().max()), int(reference.shape[0]))


def parity(reference: Callable[[torch.Tensor], torch.Tensor], candidate: Callable[[torch.Tensor], torch.Tensor],
           batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> ParityReport:
    """Compare ``candidate`` with ``reference`` on real ``(images, labels)`` batches (labels unused)."""
    batches = list(batches)
    if not batches:
        raise UserError("parity() got no batches to compare on.", "pass a non-empty split's loader.")
    expected, _ = predict_logits(reference, batches)
    actual, _ = predict_logits(candidate, batches)
    return compare_logits(expected, actual)
