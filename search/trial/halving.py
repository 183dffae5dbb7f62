"""Successive halving over fine-tune epochs, across trials: a short first look, and more epochs only
for the promising.

A stage that fine-tunes for E epochs is looked at after 1, η, η², ... of them while epochs remain
(its *rungs*). At a rung the trial goes on only if it ranks in the top 1/η of every trial of the study
that reached the same point (``early_stopping.Point``: stage kind, its occurrence in the pipeline,
the stage's planned epochs, the epoch), running, stopped or complete; otherwise it stops there
(``StopReason.HALVED``). Only trials of the same planned epochs meet at a rung: the learning-rate
schedule stretches over them, so a 1-epoch stage is annealed after its first epoch while a 4-epoch
one still trains hot, and ranking the two would stop longer fine-tunes for being unfinished. This is
asynchronous successive halving (ASHA, Li et al. 2020) in its stopping form, as Optuna's
``SuccessiveHalvingPruner``, which multi-objective studies cannot use (``Trial.report`` raises).

Ranking on validation accuracy alone would stop every narrow student and every int8-bound pipeline
behind a wider or float one, whose accuracy it never needs to match to be on the front. So, as in
MO-ASHA (Schmucker et al. 2021), trials are ranked by non-dominated sorting on (validation top-1 at
the rung, higher; the FLOPs and the weight bytes of the trial's final model, lower) - the footprint
``search.feasibility`` estimates before the trial trains, a proxy for its latency and size. The top
n/η of the n trials at the rung, taken layer by layer, go on, and so does every trial of the layer
the cut falls in: a tie is never broken at random.

Until η trials reached a rung there is no ranking: nothing is stopped there. A trial without a
footprint (early stopping off, older studies) is neither judged nor a competitor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from udacisense.search.study.records import dominates_in_losses


@dataclass(frozen=True)
class Competitor:
    """A trial at a rung: its validation accuracy there and its footprint."""

    number: int
    accuracy: float
    flops: int  # of its final model, estimated before it trained
    weight_bytes: int

    @property
    def losses(self) -> tuple[float, float, float]:
        return -self.accuracy, self.flops, self.weight_bytes

    def dominates(self, other: Competitor) -> bool:
        return dominates_in_losses(self.losses, other.losses)


def is_rung(epochs_done: int, stage_epochs: int, rate: int) -> bool:
    """Whether a stage of ``stage_epochs`` fine-tune epochs is judged after ``epochs_done`` of them: at
    1, rate, rate², ... epochs, while epochs remain. A rate below 2 turns halving off."""
    if rate < 2 or epochs_done >= stage_epochs:
        return False
    rung = 1
    while rung < epochs_done:
        rung *= rate
    return rung == epochs_done


def layers(competitors: Sequence[Competitor]) -> dict[int, int]:
    """Each competitor's non-dominated layer (0: dominated by none; 1: only by layer 0; ...), by trial number."""
    remaining, layer = list(competitors), 0
    ranked: dict[int, int] = {}
    while remaining:
        front = [c for c in remaining if not any(o.dominates(c) for o in remaining if o is not c)]
        ranked.update((c.number, layer) for c in front)
        remaining = [c for c in remaining if c.number not in ranked]
        layer += 1
    return ranked


@dataclass(frozen=True)
class Ranking:
    """A trial's standing at a rung among the trials that reached it."""

    number: int
    layer: int
    kept: int  # how many of the competitors go on: the top n/η
    cut_layer: int  # the layer the kept ones reach; a trial in a deeper layer stops
    competitors: int

    @property
    def goes_on(self) -> bool:
        return self.layer <= self.cut_layer

    def describe(self, rate: int) -> str:
        return (f"non-dominated layer {self.layer} of the {self.competitors} trials that reached this point on "
                f"(val top-1, estimated FLOPs, estimated weight bytes): only the top 1/{rate} ({self.kept}, "
                f"layers 0-{self.cut_layer}) train on")


def rank(number: int, competitors: Sequence[Competitor], rate: int) -> Ranking | None:
    """Trial ``number``'s ranking among the ``competitors`` at a rung (itself included); None when it is
    not among them or fewer than ``rate`` trials reached the rung."""
    if len(competitors) < rate or all(c.number != number for c in competitors):
        return None
    ranked = layers(competitors)
    kept = len(competitors) // rate
    cut_layer = sorted(ranked.values())[kept - 1]
    return Ranking(number, ranked[number], kept, cut_layer, len(competitors))
