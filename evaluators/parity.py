"""Does a shipped artifact compute what the PyTorch model computed? Compared on real test batches."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import torch

from udacisense.common.errors import UserError
from udacisense.evaluators.accuracy import predict_logits


@dataclass(frozen=True)
class ParityReport:
    top1_agreement: float
    max_abs_diff: float
    samples: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def passes(self, min_agreement: float) -> bool:
        return self.top1_agreement >= min_agreement


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
