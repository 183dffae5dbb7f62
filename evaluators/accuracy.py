"""Top-1, top-5 and per-class accuracy of any callable that maps image batches to logits."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch

Predictor = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AccuracyReport:
    top1: float
    top5: float
    per_class: tuple[float, ...]
    samples: int

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "per_class": list(self.per_class), "unit": "fraction"}


def predict_logits(predictor: Predictor, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """All logits and labels for a pass over ``batches`` (eval mode, no grad, for eager modules)."""
    if isinstance(predictor, torch.nn.Module):
        predictor.eval()
    outputs, labels = [], []
    with torch.inference_mode():
        for images, target in batches:
            outputs.append(predictor(images).float())
            labels.append(target)
    return torch.cat(outputs), torch.cat(labels)


def accuracy_from_logits(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> AccuracyReport:
    top1 = logits.argmax(1)
    k = min(5, logits.shape[1])
    top5_hit = (logits.topk(k, dim=1).indices == labels.view(-1, 1)).any(1)
    per_class = []
    for c in range(num_classes):
        members = labels == c
        per_class.append(float((top1[members] == c).float().mean()) if members.any() else float("nan"))
    return AccuracyReport(
        top1=float((top1 == labels).float().mean()),
        top5=float(top5_hit.float().mean()),
        per_class=tuple(per_class),
        samples=int(labels.numel()),
    )


def correct_predictions(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Which images the top-1 prediction gets right: what paired comparisons between two models need."""
    return logits.argmax(1) == labels


def evaluate_accuracy(predictor: Predictor, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int) -> AccuracyReport:
    logits, labels = predict_logits(predictor, batches)
    return accuracy_from_logits(logits, labels, num_classes)
