"""The parity rule on real logits: float artifacts agree on every image, int8 ones unless the evidence says otherwise."""

from __future__ import annotations

import torch

from udacisense.evaluators.parity import compare_logits, parity_rule


def _flipped(samples: int, flips: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference logits and a candidate that agrees with them but for ``flips`` images (their top two swapped)."""
    reference = torch.randn(samples, 10, generator=torch.Generator().manual_seed(seed))
    candidate = reference.clone()
    top2 = reference.topk(2, dim=1).indices[:flips]
    rows = torch.arange(flips)
    candidate[rows, top2[:, 0]], candidate[rows, top2[:, 1]] = reference[rows, top2[:, 1]], reference[rows, top2[:, 0]]
    return reference, candidate


def test_an_int8_artifact_fails_only_on_evidence_of_agreement_below_the_minimum() -> None:
    int8 = parity_rule(True, float_logit_tolerance=1e-3, int8_min_agreement=0.95)
    few = compare_logits(*_flipped(18, 1))
    assert few.top1_agreement < 0.95 and int8.passes(few)  # one flip of 18: no evidence
    assert not int8.passes(compare_logits(*_flipped(18, 5)))  # 72%: its upper bound is below 95%
    assert not int8.passes(compare_logits(*_flipped(10_000, 840)))  # 91.6% on 10,000 images
    assert int8.passes(compare_logits(*_flipped(10_000, 470)))
    assert int8.shortfall(compare_logits(*_flipped(10_000, 840))) > int8.shortfall(compare_logits(*_flipped(10_000, 600)))


def test_a_float_artifact_must_agree_on_every_image_within_the_tolerance() -> None:
    float_rule = parity_rule(False, float_logit_tolerance=1e-3, int8_min_agreement=0.95)
    reference, _ = _flipped(18, 0)
    assert float_rule.passes(compare_logits(reference, reference + 1e-4))
    assert not float_rule.passes(compare_logits(reference, reference + 1e-2))
    assert not float_rule.passes(compare_logits(*_flipped(10_000, 1)))
