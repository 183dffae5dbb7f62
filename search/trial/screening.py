"""Screening: judge a trained candidate on what its structure is known or modelled to cost, and lower only what could matter.

Lowering a ``.pte`` and measuring it (artifact accuracy, parity, latency) is a third of a trial's
compute here. A dense program's bytes and single-thread latency are fixed by its structure
(``evaluators.structure``), so before lowering a candidate the search looks it up:

- **memo**: a structure lowered before in this study, by a trial or by the probes, has its bytes exactly and
  its latency as measured (the best of its measurements: another lowering would only draw the timing noise
  again);
- **cost model**: an unseen structure's latency and size ratios by non-negative least squares on the
  study's measured programs of its runtime and form (trials and probes; operators, weight elements, stored
  weight bytes), its margin the larger of the rule's and the model's own error on structures it has not
  seen (leave one structure out);
- **accuracy**: its PyTorch model's validation top-1 (for int8, the converted model's simulation) plus a 90%
  upper bound of its model-to-artifact gap from the gaps seen so far (``gap_bound``): the objective is
  measured on the same images.

A candidate whose optimistic point (the highest accuracy it could measure, the lowest latency and size)
is dominated by a measured point cannot join the front, and neither can one of a measured structure
whose measured trials already reach its optimistic accuracy (same bytes, and the same latency but for
timing noise): it is recorded as screened (fidelity
``estimated``) with its estimated objectives, so the sampler still learns from it, and it is never
picked, exported or reported as a measurement. Every other candidate is lowered and measured. A
screened trial that the current front and model no longer rule out is promoted: run again, lowered
and measured (``promotions``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import optuna
from optuna.trial import TrialState
from scipy.optimize import nnls

from udacisense.evaluators.structure import Structure
from udacisense.search.study.config import SearchConfig
from udacisense.search.study.records import Attr, Fidelity, Probe, StudyRecord, dominates, store
from udacisense.search.study.trial_record import TrialRecord, records

Source = Literal["memo", "model"]
# Below this many measured trials of a runtime and form, the cost model has too little to fit: lower everything.
MIN_MEASURED = 3
# The share of the cost model's estimates a search reports as accurate: within +-10% of the measurement.
ACCURATE_WITHIN = 0.10
# A new gap exceeds the k-th smallest of n exchangeable gaps with probability 1 - k/(n + 1), whatever their
# distribution: a 90% bound is the ceil(0.9 (n + 1))-th smallest, which exists from 9 gaps on.
BOUNDED_FROM = 9
# The widening with fewer gaps, in full with none: 5 points is as far as an int8 artifact passing the default
# parity rule (95% top-1 agreement with its model) can differ from its model.
UNSEEN_GAP = 0.05


@dataclass(frozen=True)
class Estimate:
    """A candidate's objectives before it is lowered, each with its optimistic bound."""

    val_top1: float
    val_top1_high: float
    latency_ratio: float
    latency_ratio_low: float
    size_ratio: float
    size_ratio_low: float
    source: Source  # memo: a structure measured before; model: the cost model

    @property
    def values(self) -> tuple[float, float, float]:
        """The estimated objectives in ``OBJECTIVE_NAMES`` order: what a screened trial reports to the sampler."""
        return self.val_top1, self.latency_ratio, self.size_ratio

    @property
    def optimistic(self) -> tuple[float, float, float]:
        return self.val_top1_high, self.latency_ratio_low, self.size_ratio_low

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _group(record: TrialRecord) -> tuple[str, bool]:
    # Float and int8 programs of one runtime cost differently per operator.
    return record.runtime, record.backend is not None


def measured_points(history: Sequence[TrialRecord], runtime: str, quantized: bool) -> list[TrialRecord]:
    """The study's measured trials of one runtime and form that stored their structure."""
    return [r for r in history if r.is_measured and r.structure is not None and _group(r) == (runtime, quantized)]


@dataclass(frozen=True)
class CostPoint:
    """A lowered program's structure and its measured cost ratios: a measured trial's, or a probe's."""

    structure: Structure
    latency_ratio: float
    size_ratio: float


def cost_points(measured: Sequence[TrialRecord], probes: Sequence[Probe], runtime: str, quantized: bool) -> list[CostPoint]:
    """Every measured program of one runtime and form: its ``measured_points``, then the study's probes of that
    runtime and form (timed against the same float reference before any trial trained), so the memo and the cost
    model know the space's structures from the search's first trial."""
    trials = [CostPoint(r.structure, r.latency_ratio, r.size_ratio) for r in measured if r.structure is not None]
    return trials + [CostPoint(p.program, p.latency_ratio, p.size_ratio) for p in probes
                     if p.program is not None and (p.runtime, p.backend is not None) == (runtime, quantized)]


@dataclass(frozen=True)
class CostModel:
    """Latency and size ratios as non-negative combinations of a structure's counts, fit on measured programs."""

    latency_weights: tuple[float, ...]
    size_weights: tuple[float, ...]
    points: int

    @staticmethod
    def _features(structure: Structure, kind: Literal["latency", "size"]) -> list[float]:
        # Per-operator dispatch dominates latency at 32x32, then the MACs (weights at a fixed input size);
        # size is the stored weights plus per-operator metadata. Scaled to similar magnitudes for the solver.
        if kind == "latency":
            return [structure.operators / 100, structure.weight_elements / 1e6, 1.0]
        return [structure.weight_bytes / 1e6, structure.operators / 100, 1.0]

    @classmethod
    def fit(cls, points: Sequence[CostPoint]) -> CostModel | None:
        """Fit on ``points`` (one runtime and form); None with fewer than ``MIN_MEASURED`` distinct structures."""
        if len({p.structure.key for p in points}) < MIN_MEASURED:
            return None

        def solve(kind: Literal["latency", "size"], target: list[float]) -> tuple[float, ...]:
            weights, _ = nnls(np.array([cls._features(p.structure, kind) for p in points]), np.array(target))
            return tuple(float(w) for w in weights)

        return cls(solve("latency", [p.latency_ratio for p in points]), solve("size", [p.size_ratio for p in points]), len(points))

    def latency_ratio(self, structure: Structure) -> float:
        return float(np.dot(self.latency_weights, self._features(structure, "latency")))

    def size_ratio(self, structure: Structure) -> float:
        return float(np.dot(self.size_weights, self._features(structure, "size")))


@dataclass(frozen=True)
class HeldOutErrors:
    """Relative errors of the cost model on each measured structure when fit without it."""

    latency: tuple[float, ...]
    size: tuple[float, ...]


def held_out_errors(points: Sequence[CostPoint]) -> HeldOutErrors | None:
    """Leave one structure out: how wrong the model is on structures it has not seen, which is what it
    estimates. None until a model can be fit without any one of them."""
    keys = sorted({p.structure.key for p in points})
    latency, size = [], []
    for key in keys:
        model = CostModel.fit([p for p in points if p.structure.key != key])
        if model is None:
            return None
        for point in (p for p in points if p.structure.key == key):
            latency.append(abs(model.latency_ratio(point.structure) / point.latency_ratio - 1))
            size.append(abs(model.size_ratio(point.structure) / point.size_ratio - 1))
    return HeldOutErrors(tuple(latency), tuple(size)) if keys else None


@dataclass(frozen=True)
class Memo:
    """A structure measured before in this study: exact size, every latency measured."""

    size_ratio: float
    latency_ratios: tuple[float, ...]


def memo(points: Sequence[CostPoint]) -> dict[str, Memo]:
    """Every structure lowered and measured so far in the study, by key."""
    found: dict[str, list[CostPoint]] = {}
    for point in points:
        found.setdefault(point.structure.key, []).append(point)
    return {key: Memo(same[0].size_ratio, tuple(p.latency_ratio for p in same)) for key, same in found.items()}


def model_errors(history: Sequence[TrialRecord]) -> list[float]:
    """|measured / estimated - 1| of the latency ratio of every lowered trial the cost model had estimated beforehand."""
    return [abs(r.latency_ratio / float(r.estimate["latency_ratio"]) - 1) for r in history
            if r.is_measured and r.estimate.get("source") == "model" and r.estimate.get("latency_ratio")]


def gap_bound(gaps: Sequence[float]) -> float:
    """A 90% upper bound of the next model-to-artifact gap from those seen. From ``BOUNDED_FROM`` gaps on, their
    order statistic that a new gap exceeds with probability 10%; below, no statistic of them bounds anything at
    90% (the 90th percentile of one gap is that gap: the next exceeds it half the time), so the largest seen
    plus a widening that shrinks from ``UNSEEN_GAP`` to nothing as gaps accumulate: a screen on few gaps
    lowers what it cannot rule out rather than trust one observation."""
    ordered = sorted(gaps)
    if len(ordered) >= BOUNDED_FROM:
        return ordered[math.ceil(0.9 * (len(ordered) + 1)) - 1]
    return (ordered[-1] if ordered else 0.0) + UNSEEN_GAP * (1 - len(ordered) / BOUNDED_FROM)


def _accuracy_gap(measured: Sequence[TrialRecord]) -> tuple[float, float]:
    """The mean (0 without any) and the 90% upper bound (``gap_bound``) of artifact-minus-model validation top-1."""
    gaps = [r.val_accuracy - model for r in measured if (model := r.model_val_top1) is not None]
    return statistics.mean(gaps) if gaps else 0.0, gap_bound(gaps)


@dataclass(frozen=True)
class ScreeningRule:
    """How optimistic the screen is: the cost model's relative margin (at least its held-out error) and an
    accuracy margin on top of the 90% bound of the model-to-artifact gap (``gap_bound``)."""

    latency_margin: float
    accuracy_margin: float

    @classmethod
    def of(cls, search: SearchConfig) -> ScreeningRule:
        return cls(search.screen_latency_margin, search.screen_accuracy_margin)


def estimate(structure: Structure, model_val_top1: float, runtime: str, quantized: bool,
             history: Sequence[TrialRecord], rule: ScreeningRule, probes: Sequence[Probe] = ()) -> Estimate | None:
    """The candidate's objectives before lowering, or None when neither the memo nor a fitted model knows its cost."""
    trials = measured_points(history, runtime, quantized)
    mean_gap, high_gap = _accuracy_gap(trials)
    accuracy = (model_val_top1 + mean_gap, model_val_top1 + max(mean_gap, high_gap) + rule.accuracy_margin)
    measured = cost_points(trials, probes, runtime, quantized)
    known = memo(measured).get(structure.key)
    if known is not None:
        best = min(known.latency_ratios)
        return Estimate(*accuracy, statistics.median(known.latency_ratios), best, known.size_ratio, known.size_ratio, "memo")
    model, errors = CostModel.fit(measured), held_out_errors(measured)
    if model is None or errors is None:
        return None

    def margin(held_out: tuple[float, ...]) -> float:
        return min(0.95, max(rule.latency_margin, float(np.quantile(held_out, 0.9))))

    latency, size = model.latency_ratio(structure), model.size_ratio(structure)
    return Estimate(*accuracy, latency, latency * (1 - margin(errors.latency)), size, size * (1 - margin(errors.size)), "model")


def could_matter(candidate: Estimate, structure: Structure, history: Sequence[TrialRecord]) -> bool:
    """Whether the candidate could join the measured front: its optimistic point is dominated by no measured,
    parity-passing trial, and for a measured structure, none of that structure's trials is as accurate as its
    optimistic accuracy (its bytes are theirs, its latency theirs but for timing noise: only a lucky timing
    run could lift it onto the front, which is no improvement)."""
    rivals = [r for r in history if r.is_measured and r.parity_ok]
    if candidate.source == "memo" and any(r.structure is not None and r.structure.key == structure.key
                                          and r.val_accuracy >= candidate.val_top1_high for r in rivals):
        return False
    return not any(dominates(r.values, candidate.optimistic) for r in rivals)


def screen(trial: optuna.Trial, structure: Structure, model_val_top1: float, runtime: str, quantized: bool,
           search: SearchConfig, promoted_from: int | None) -> Estimate | None:
    """Estimate the would-be artifact's objectives from the study's completed trials and store them beside its
    structure; return the estimate when the candidate is screened (recorded on estimates, never lowered): screening
    is on, it is no promotion, and it could not join the measured front."""
    history = records(trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    estimated = estimate(structure, model_val_top1, runtime, quantized, history, ScreeningRule.of(search),
                         StudyRecord.of(trial.study).probed)
    store(trial, {Attr.STRUCTURE: structure.as_dict(), Attr.ESTIMATE: None if estimated is None else estimated.as_dict()})
    if estimated is None or not search.screening or promoted_from is not None or could_matter(estimated, structure, history):
        return None
    return estimated


def record_screened(trial: optuna.Trial, estimated: Estimate, constraints: dict[str, float]) -> tuple[float, float, float]:
    """A screened candidate keeps its estimated objectives and constraints (so the sampler learns from it),
    fidelity "estimated", no artifact and no target verdict."""
    for key, value in constraints.items():
        trial.set_constraint(key, value)
    store(trial, {Attr.FIDELITY: Fidelity.ESTIMATED.value, Attr.CONSTRAINTS: constraints})
    return estimated.values


def promotions(history: Sequence[TrialRecord], rule: ScreeningRule, probes: Sequence[Probe] = ()) -> list[TrialRecord]:
    """Screened trials that the current front and cost model no longer rule out, not yet promoted."""
    promoted = {r.promoted_from for r in history} - {None}
    due = []
    for record in history:
        if not record.has_values or record.fidelity is not Fidelity.ESTIMATED or record.number in promoted:
            continue
        structure, model_val = record.structure, record.model_val_top1
        if structure is None or model_val is None:
            continue
        again = estimate(structure, model_val, *_group(record), history, rule, probes)
        if again is None or could_matter(again, structure, history):
            due.append(record)
    return due


@dataclass(frozen=True)
class ScreeningSummary:
    """How the search spent its lowerings: candidates by fidelity, memo hits, the cost model's accuracy."""

    measured: int
    screened: int
    promoted: int
    with_structure: int  # candidates that reached the screen (a structure was keyed)
    memo_hits: int  # of those, structures known before the candidate was judged
    model_checked: int  # lowered candidates the cost model had estimated beforehand
    model_within: int  # of those, measured within +-ACCURATE_WITHIN of the estimate

    @classmethod
    def of(cls, history: Sequence[TrialRecord]) -> ScreeningSummary:
        keyed = [r for r in history if r.structure is not None and r.estimate]
        errors = model_errors(history)
        return cls(
            measured=sum(1 for r in history if r.is_measured),
            screened=sum(1 for r in history if r.has_values and r.fidelity is Fidelity.ESTIMATED),
            promoted=sum(1 for r in history if r.promoted_from is not None and r.is_measured),
            with_structure=sum(1 for r in history if r.structure is not None),
            memo_hits=sum(1 for r in keyed if r.estimate.get("source") == "memo"),
            model_checked=len(errors), model_within=sum(1 for e in errors if e <= ACCURATE_WITHIN))

    @property
    def memo_hit_rate(self) -> float | None:
        return self.memo_hits / self.with_structure if self.with_structure else None

    @property
    def model_within_share(self) -> float | None:
        return self.model_within / self.model_checked if self.model_checked else None

    def describe(self) -> str:
        hit = "n/a" if self.memo_hit_rate is None else f"{self.memo_hit_rate:.0%}"
        share = ("no lowered trial had a cost-model estimate" if self.model_within_share is None else
                 f"{self.model_within_share:.0%} of {self.model_checked} cost-model estimates within "
                 f"±{ACCURATE_WITHIN:.0%} of the measured latency")
        return (f"{self.measured} candidate(s) lowered and measured, {self.screened} screened on estimates "
                f"({self.promoted} promoted and measured); memo hits {self.memo_hits}/{self.with_structure} ({hit}); {share}")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "memo_hit_rate": self.memo_hit_rate, "model_within_share": self.model_within_share}
