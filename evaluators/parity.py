"""Does a shipped artifact compute what the PyTorch model computed? Compared on real test batches."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


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
