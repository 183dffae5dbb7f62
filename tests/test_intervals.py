"""Interval maths against published values and brute force: accuracies, paired differences, bitsets, block ratios."""

from __future__ import annotations

import math

import pytest
import torch

from udacisense.evaluators.intervals import (
    PairedComparison,
    blocked_ratio,
    clopper_pearson,
    mcnemar_exact,
    pack_correct,
    paired_by_class,
    paired_comparison,
    unpack_correct,
    wilson,
)


def correctness(both: int, a_only: int, b_only: int, neither: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image correctness of A and B with the given paired counts, in shuffled image order."""
    a = torch.tensor([True] * both + [True] * a_only + [False] * b_only + [False] * neither)
    b = torch.tensor([True] * both + [False] * a_only + [True] * b_only + [False] * neither)
    order = torch.randperm(len(a), generator=torch.Generator().manual_seed(seed))
    return a[order], b[order]


def width(interval: tuple[float, float]) -> float:
    return interval[1] - interval[0]


def test_wilson_and_exact_intervals_match_known_values() -> None:
    low, high = wilson(50, 100)
    assert low == pytest.approx(0.404, abs=5e-4) and high == pytest.approx(0.596, abs=5e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    # Clopper-Pearson at the edges has a closed form: (alpha/2) ** (1/n).
    assert clopper_pearson(0, 10) == (0.0, pytest.approx(1 - 0.025 ** 0.1))
    assert clopper_pearson(10, 10) == (pytest.approx(0.025 ** 0.1), 1.0)
    exact = clopper_pearson(50, 100)
    assert exact == (pytest.approx(0.3983, abs=1e-4), pytest.approx(0.6017, abs=1e-4))
    assert width(wilson(500, 1000)) < width(wilson(50, 100)) / 3  # about 1/sqrt(10) as wide
    with pytest.raises(ValueError):
        wilson(3, 0)


def test_mcnemar_exact_is_the_binomial_tail_on_discordant_images() -> None:
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 2**5)  # all 5 discordant images favour B
    assert mcnemar_exact(4, 4) == 1.0 and mcnemar_exact(0, 0) == 1.0
    # Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables (2017), ch. 8: Cavo et al. 2012, P = 0.052.
    assert mcnemar_exact(6, 16) == pytest.approx(0.0525, abs=5e-4)
    assert 0 < mcnemar_exact(1000, 1200) < 1e-4  # thousands of discordant images: no float overflow


def test_paired_interval_matches_the_published_newcombe_example() -> None:
    # Fagerland et al. (2017), Table 8: complete response before/after consolidation therapy (Cavo et al. 2012),
    # Newcombe square-and-add (method 10): -0.0621 (95% CI -0.1186 to -0.0046).
    cavo = PairedComparison.from_counts(59, 6, 16, 80)
    assert cavo.difference == pytest.approx(-0.0621, abs=5e-5)
    assert cavo.interval == (pytest.approx(-0.1186, abs=5e-5), pytest.approx(-0.0046, abs=5e-5))
    assert cavo.excludes_zero and cavo.n == 161 and cavo.a_correct == 65 and cavo.b_correct == 75


def test_paired_comparison_of_correctness_vectors_agrees_with_a_paired_bootstrap() -> None:
    a, b = correctness(520, 60, 35, 385)  # A 58.0%, B 55.5%, 90.5% agreement
    compared = paired_comparison(a, b)
    assert (compared.both_correct, compared.b10, compared.b01, compared.both_wrong) == (520, 60, 35, 385)
    assert compared.difference == pytest.approx(0.025) and compared.agreement == pytest.approx(0.905)
    generator = torch.Generator().manual_seed(0)
    draws = torch.randint(0, 1000, (4000, 1000), generator=generator)
    differences = (a[draws].float().mean(1) - b[draws].float().mean(1)).sort().values
    percentile = (float(differences[100]), float(differences[3899]))
    assert compared.interval == (pytest.approx(percentile[0], abs=0.003), pytest.approx(percentile[1], abs=0.003))
    swapped = paired_comparison(b, a)
    assert swapped.difference == -compared.difference
    assert swapped.interval == (pytest.approx(-compared.interval[1]), pytest.approx(-compared.interval[0]))


def test_pairing_narrows_the_interval_when_models_agree_and_widens_it_when_they_do_not() -> None:
    def unpaired(c: PairedComparison) -> tuple[float, float]:
        # Newcombe's hybrid score interval for two independent accuracies: the same images ignored as pairs.
        p1, p2 = c.a_correct / c.n, c.b_correct / c.n
        (l1, u1), (l2, u2) = wilson(c.a_correct, c.n), wilson(c.b_correct, c.n)
        return p1 - p2 - math.hypot(p1 - l1, u2 - p2), p1 - p2 + math.hypot(u1 - p1, p2 - l2)

    # Same accuracies (A 60%, B 58% of 1,000), different agreement.
    agreeing = paired_comparison(*correctness(570, 30, 10, 390))
    disagreeing = paired_comparison(*correctness(400, 200, 180, 220))
    assert agreeing.agreement == 0.96 and disagreeing.agreement == 0.62
    assert width(agreeing.interval) < 0.45 * width(unpaired(agreeing))
    assert width(agreeing.interval) < 0.5 * width(disagreeing.interval)
    assert agreeing.excludes_zero and not disagreeing.excludes_zero  # same 2-point gap, resolved only when paired


def test_per_class_intervals_resolve_only_the_class_that_changed() -> None:
    labels = torch.arange(3).repeat_interleave(100)
    a = torch.ones(300, dtype=torch.bool)
    b = a.clone()
    b[100:130] = False  # B loses 30 of class 1's images
    b[200:202] = False  # and 2 of class 2's
    by_class = paired_by_class(a, b, labels)
    assert sorted(by_class) == [0, 1, 2]
    assert by_class[1].difference == pytest.approx(0.30) and by_class[1].excludes_zero
    assert not by_class[0].excludes_zero and not by_class[2].excludes_zero
    assert by_class[2].n == 100 and by_class[2].b10 == 2
    with pytest.raises(ValueError):
        paired_by_class(a, b, labels[:10])


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1000])
def test_correctness_bitsets_round_trip(n: int) -> None:
    correct = torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.6
    text = pack_correct(correct)
    assert text.startswith(f"{n}:") and len(text) <= len(str(n)) + 1 + 4 * ((n + 7) // 8 + 2) // 3
    assert torch.equal(unpack_correct(text), correct)


def test_correctness_bitset_format_is_fixed() -> None:
    # Image 0 is the most significant bit of byte 0; image 8 starts byte 1: bytes 0x80 0x80.
    assert pack_correct(torch.tensor([True] + [False] * 7 + [True])) == "9:gIA="
    assert unpack_correct("9:gIA=").tolist() == [True] + [False] * 7 + [True]
    for bad in ("gIA=", "9:gIA", "17:gIA=", "x:gIA="):
        with pytest.raises(ValueError):
            unpack_correct(bad)
    with pytest.raises(ValueError):
        pack_correct(torch.tensor([1, 0]))


def test_blocked_ratio_is_a_geometric_mean_with_a_t_interval_on_logs() -> None:
    blocked = blocked_ratio([math.exp(-0.1), 1.0, math.exp(0.1)])
    assert blocked.ratio == pytest.approx(1.0) and blocked.blocks == 3
    half = 4.302653 * 0.1 / math.sqrt(3)  # t(0.975, 2 dof) from tables; the logs' sd is 0.1
    assert blocked.interval == (pytest.approx(math.exp(-half)), pytest.approx(math.exp(half)))
    inverse = blocked_ratio([math.exp(0.1), 1.0, math.exp(-0.1)])
    assert inverse.interval == (pytest.approx(1 / blocked.interval[1]), pytest.approx(1 / blocked.interval[0]))
    skewed = blocked_ratio([0.30, 0.29, 0.38])
    assert skewed.ratio == pytest.approx((0.30 * 0.29 * 0.38) ** (1 / 3))
    assert skewed.interval is not None and skewed.interval[0] < 0.29 and skewed.interval[1] > 0.38
    assert blocked_ratio([0.4, 0.4]).interval == (pytest.approx(0.4), pytest.approx(0.4))
    assert blocked_ratio([0.4]).interval is None and blocked_ratio([0.4]).as_dict()["interval"] is None
    with pytest.raises(ValueError):
        blocked_ratio([0.4, 0.0])
