"""How far a measured accuracy, accuracy difference or latency ratio can be trusted: 95% intervals.

Accuracies are binomial proportions (Wilson or exact intervals). Two classifiers evaluated on the
same images are compared *paired*: most images are classified alike by both, so only the images
where they disagree carry information about the difference, and the paired interval is far
narrower than one built from two independent accuracies. Latency ratios get an interval across
independent timing blocks, which covers the run-to-run spread that rounds within one run miss.
"""

from __future__ import annotations

import base64
import binascii
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch
from scipy import stats

Interval = tuple[float, float]


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def _z(confidence: float) -> float:
    _check_confidence(confidence)
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _check_counts(successes: int, n: int) -> None:
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes} of {n}")


def wilson(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval for the proportion ``successes / n``.

    Unlike the textbook normal (Wald) interval it keeps its coverage near 0 and 1 and on a few
    dozen trials (a class of 100 test images), and it never leaves [0, 1].
    """
    _check_counts(successes, n)
    z2 = _z(confidence) ** 2
    p = successes / n
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = math.sqrt(z2 * (p * (1 - p) / n + z2 / (4 * n * n))) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def clopper_pearson(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Exact (Clopper-Pearson) interval for ``successes / n``: never below its nominal coverage, so wider than Wilson."""
    _check_counts(successes, n)
    alpha = 1 - confidence
    low = 0.0 if successes == 0 else float(stats.beta.ppf(alpha / 2, successes, n - successes + 1))
    high = 1.0 if successes == n else float(stats.beta.ppf(1 - alpha / 2, successes + 1, n - successes))
    return low, high


def mcnemar_exact(b10: int, b01: int) -> float:
    """Two-sided exact McNemar p-value: under "A and B are equally accurate" each of the ``b10 + b01``
    discordant images is equally likely to favour either, a Binomial(b10 + b01, 1/2)."""
    discordant = b10 + b01
    if discordant == 0:
        return 1.0
    # C(n, k) from C(n, k - 1): one product per term, where math.comb would redo k of them (seconds at 10,000 images).
    term = tail = 1
    for k in range(1, min(b10, b01) + 1):
        term = term * (discordant - k + 1) // k
        tail += term
    # Integer arithmetic up to the one division: 2**discordant overflows a float from about 1,024 discordant images.
    return min(1.0, 2 * tail / 2**discordant)


def holm(p_values: Sequence[float], alpha: float = 0.05) -> list[bool]:
    """Which hypotheses Holm's step-down procedure rejects: the chance that it rejects any true one, over the
    whole family, stays at most ``alpha`` (Bonferroni's guarantee, with more power). The k-th smallest p-value
    (from 0) is compared with ``alpha / (m - k)``, and the first that fails stops the rejections."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    for rank, index in enumerate(order):
        if p_values[index] > alpha / (len(p_values) - rank):
            break
        rejected[index] = True
    return rejected


@dataclass(frozen=True)
class PairedComparison:
    """Classifiers A and B on the same ``n`` images, from which images each gets right.

    ``difference`` is accuracy(A) - accuracy(B); with A the baseline and B a candidate it is the
    candidate's accuracy drop. ``agreement`` is the share of images whose *correctness* both share
    (both right or both wrong), not the share with the same top-1 prediction (two wrong answers
    may differ and still count as agreeing here).
    """

    n: int
    both_correct: int
    b10: int  # A right, B wrong
    b01: int  # A wrong, B right
    both_wrong: int
    interval: Interval  # for ``difference``, at ``confidence``
    p_value: float  # exact McNemar test of "equally accurate"
    confidence: float

    @classmethod
    def from_counts(cls, both_correct: int, b10: int, b01: int, both_wrong: int,
                    confidence: float = 0.95) -> PairedComparison:
        n = both_correct + b10 + b01 + both_wrong
        return cls(n, both_correct, b10, b01, both_wrong, _newcombe_paired(both_correct, b10, b01, both_wrong, confidence),
                   mcnemar_exact(b10, b01), confidence)

    @property
    def a_correct(self) -> int:
        return self.both_correct + self.b10

    @property
    def b_correct(self) -> int:
        return self.both_correct + self.b01

    @property
    def difference(self) -> float:
        return (self.b10 - self.b01) / self.n

    @property
    def agreement(self) -> float:
        return (self.both_correct + self.both_wrong) / self.n

    @property
    def excludes_zero(self) -> bool:
        """Whether the data resolve which of the two is more accurate (at ``confidence``)."""
        low, high = self.interval
        return low > 0 or high < 0

    def as_dict(self) -> dict[str, object]:
        return {"n": self.n, "a_correct": self.a_correct, "b_correct": self.b_correct, "both_correct": self.both_correct,
                "b10": self.b10, "b01": self.b01, "both_wrong": self.both_wrong, "agreement": self.agreement,
                "difference": self.difference, "interval": list(self.interval), "p_value": self.p_value,
                "confidence": self.confidence}


def _newcombe_paired(a: int, b: int, c: int, d: int, confidence: float) -> Interval:
    """Interval for (a + b)/n - (a + c)/n from a paired 2x2 table (a: both right, b: A only, c: B only, d: neither)."""
    # Newcombe's method 10 (Stat Med 1998;17:2635-50): Wilson intervals of both accuracies combined
    # with their estimated correlation. Good coverage, never outside [-1, 1], no degenerate one-sided
    # limits like the exact conditional route, and closed form.
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b, n, confidence)
    l2, u2 = wilson(a + c, n, confidence)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    # The correlation of the two accuracies, shrunk by n/2 when positive as the method prescribes.
    phi = 0.0 if margins == 0 else (cross - n / 2 if cross > n / 2 else min(cross, 0)) / math.sqrt(margins)
    difference = p1 - p2
    low = difference - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = difference + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return max(-1.0, low), min(1.0, high)


def _correctness(correct: torch.Tensor, name: str) -> torch.Tensor:
    if correct.dim() != 1 or correct.dtype != torch.bool:
        raise ValueError(f"{name} must be a 1-D bool tensor (one entry per image), got {correct.dtype} of shape {tuple(correct.shape)}")
    return correct


def paired_comparison(a_correct: torch.Tensor, b_correct: torch.Tensor, confidence: float = 0.95) -> PairedComparison:
    """A against B from their per-image correctness on the same images, in the same order."""
    a, b = _correctness(a_correct, "a_correct"), _correctness(b_correct, "b_correct")
    if a.shape != b.shape:
        raise ValueError(f"the correctness vectors cover different images ({a.numel()} vs {b.numel()})")
    return PairedComparison.from_counts(int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum()),
                                        int((~a & ~b).sum()), confidence)


def paired_by_class(a_correct: torch.Tensor, b_correct: torch.Tensor, labels: torch.Tensor,
                    confidence: float = 0.95) -> dict[int, PairedComparison]:
    """``paired_comparison`` within each class that ``labels`` holds, keyed by class index.

    With 10 classes at 95%, one class in two studies shows an interval excluding zero by chance
    alone; pass ``confidence = 1 - 0.05 / classes`` (Bonferroni) to hold that to 5% per study.
    """
    if not labels.shape == a_correct.shape == b_correct.shape:
        raise ValueError(f"labels and correctness vectors cover different images ({labels.numel()}, "
                         f"{a_correct.numel()}, {b_correct.numel()})")
    return {int(label): paired_comparison(a_correct[labels == label], b_correct[labels == label], confidence)
            for label in labels.unique().tolist()}


def pack_correct(correct: torch.Tensor) -> str:
    """Per-image correctness as compact text: ``"<n>:<base64>"``.

    The format is fixed so stored studies stay readable: ``n`` in decimal, a colon, then standard
    base64 (with padding) of ceil(n / 8) bytes where image ``i`` is bit ``7 - i % 8`` of byte
    ``i // 8`` (most significant bit first, numpy's ``packbits`` default) and unused bits are 0.
    10,000 images take 1,668 characters.
    """
    bits = _correctness(correct, "correct").cpu().numpy()
    return f"{bits.size}:{base64.b64encode(np.packbits(bits).tobytes()).decode('ascii')}"


def unpack_correct(text: str) -> torch.Tensor:
    """The 1-D bool tensor that ``pack_correct`` wrote as ``text``."""
    count, _, encoded = text.partition(":")
    try:
        n = int(count)
        packed = base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error):
        raise ValueError(f"not a packed correctness vector: {text[:40]!r}") from None
    if n < 0 or len(packed) != (n + 7) // 8:
        raise ValueError(f"a packed vector of {n} images needs {(n + 7) // 8} bytes, it holds {len(packed)}")
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=n).astype(bool)
    return torch.from_numpy(bits)


@dataclass(frozen=True)
class BlockedRatio:
    """A ratio measured once per independent block (a fresh program load), with an interval across blocks.

    ``ratio`` is the geometric mean of the blocks' ratios: timing noise is multiplicative, the
    t-interval is computed on log ratios and centred on it, and it is symmetric under swapping
    candidate and reference (1/ratio gives 1/geometric mean). A median of the 3-5 blocks one can
    afford would move with single blocks and would not be the centre of that interval.
    """

    ratios: tuple[float, ...]
    ratio: float
    interval: Interval | None  # None with fewer than 2 blocks: one block says nothing about the spread between blocks
    confidence: float

    @property
    def blocks(self) -> int:
        return len(self.ratios)

    def as_dict(self) -> dict[str, object]:
        return {"ratio": self.ratio, "interval": None if self.interval is None else list(self.interval),
                "ratios": list(self.ratios), "blocks": self.blocks, "confidence": self.confidence}


def blocked_ratio(ratios: Sequence[float], confidence: float = 0.95) -> BlockedRatio:
    """Geometric mean of per-block ratios with a Student-t interval (n - 1 degrees of freedom) on their logs."""
    if not ratios or any(not r > 0 for r in ratios):
        raise ValueError(f"need at least one positive ratio, got {list(ratios)}")
    _check_confidence(confidence)
    logs = [math.log(r) for r in ratios]
    centre = statistics.fmean(logs)
    interval = None
    if len(logs) >= 2:
        half = float(stats.t.ppf(0.5 + confidence / 2, len(logs) - 1)) * statistics.stdev(logs) / math.sqrt(len(logs))
        interval = (math.exp(centre - half), math.exp(centre + half))
    return BlockedRatio(tuple(float(r) for r in ratios), math.exp(centre), interval, confidence)
