"""The Pareto front of a study: a table with targets met, CSV/JSON/PNG exports, and pick policies.

Every latency and size ratio is to the float baseline in the study's reference runtime (one
yardstick), so ratios of TorchScript and ExecuTorch trials compare directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import optuna
import pandas as pd
import torch

from udacisense.common.errors import UserError
from udacisense.common.files import atomic_path, write_json, write_text
from udacisense.evaluators.evidence import SplitEvidence, resolved_shortfalls, verdict
from udacisense.evaluators.intervals import paired_comparison
from udacisense.evaluators.latency import LOAD_SPREAD
from udacisense.search.study.config import TargetsConfig
from udacisense.search.study.records import dominates
from udacisense.search.study.trial_record import TrialRecord

Policy = Literal["knee", "smallest", "fastest", "most-accurate"]
POLICIES: tuple[str, ...] = ("knee", "smallest", "fastest", "most-accurate")


def pareto_trials(trials: Sequence[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The non-dominated measured trials (a screened trial's estimates are never a point of the front). An
    artifact failing parity computes something else than its model: its numbers are no point of the
    trade-off, and it must not hide the points it "dominates"."""
    complete = [r for r in map(TrialRecord.of, trials) if r.is_measured and r.parity_ok]
    return [r.trial for r in complete if not any(dominates(o.values, r.values) for o in complete if o is not r)]


def front_trials(trials: Sequence[optuna.trial.FrozenTrial], targets: TargetsConfig | None = None) -> list[optuna.trial.FrozenTrial]:
    """The front the product shows and picks from: the Pareto front (``pareto_trials``), and each measured trial
    that only resolvably cheaper trials dominate, by accuracy leads the paired comparison on the validation images
    does not resolve. Dozens of near-equal fine-tunes of one cheap student lead a costlier model that loses nothing
    (the baseline in int8) by noise on the images they were selected on; the strict front drops that model, and
    with it the app team's lossless choice. Among trials of indistinguishable cost the point estimates rule.

    With ``targets``, the front of the trials whose measured latency and bytes meet them, when any does: a program
    that misses a cost target is no choice for the app team, however accurate (on an AVX-512 EPYC the trained
    model in int8 runs at x0.67 of the float latency, and such rows crowded a front of x0.24 students). Accuracy,
    a noisy estimate, is left to the marks and the pick."""
    complete = [r for r in map(TrialRecord.of, trials) if r.is_measured and r.parity_ok]
    if targets is not None:
        complete = [r for r in complete if meets_cost_targets(r, targets)] or complete
    correct = {r.number: r.correct("val") for r in complete}

    def lead_is_noise(better: TrialRecord, worse: TrialRecord) -> bool:
        a, b = correct[better.number], correct[worse.number]
        return a is not None and b is not None and a.shape == b.shape and paired_comparison(a, b).interval[0] <= 0

    def kept(r: TrialRecord) -> bool:
        return all(_resolvably_cheaper(o, r) and lead_is_noise(o, r)
                   for o in complete if o is not r and dominates(o.values, r.values))

    return [r.trial for r in complete if kept(r)]


def within_cost_targets(front: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``front`` whose latest latency and bytes meet the targets (its ``meets_*`` columns), when any
    does: a row that met them at search time can miss them once timed again."""
    meeting = front[front["meets_latency"] & front["meets_size"]]
    return front if meeting.empty else meeting.reset_index(drop=True)


def left_off_front(trials: Sequence[optuna.trial.FrozenTrial], shown: pd.DataFrame) -> list[int]:
    """The trials of the front without targets that the ``shown`` front leaves off (for missing a cost target)."""
    shown_numbers = set(shown["trial"])
    return [t.number for t in front_trials([t for t in trials if TrialRecord.of(t).is_measured])
            if t.number not in shown_numbers]


def meets_cost_targets(record: TrialRecord, targets: TargetsConfig) -> bool:
    """Whether the trial's measured latency and size ratios are within the targets' (point estimates)."""
    return record.latency_ratio <= targets.max_latency_ratio and record.size_ratio <= targets.max_size_ratio


def _resolvably_cheaper(cheaper: TrialRecord, other: TrialRecord) -> bool:
    """Whether ``cheaper`` has over 1% fewer bytes, or a latency lower by more than one program load can shift it
    (trials of one structure, timed once each, differ by that much)."""
    return (cheaper.size_ratio < 0.99 * other.size_ratio
            or cheaper.latency_ratio < (1 - LOAD_SPREAD) * other.latency_ratio)


COLUMNS = ["trial", "pipeline", "runtime", "target", "deployment", "val_top1", "test_top1", "val_images", "test_images",
           "val_top1_ci95", "test_top1_ci95", "val_drop", "val_drop_ci95", "test_drop", "test_drop_ci95", "test_agreement",
           "latency_ms", "reference_latency_ms", "reference_runtime", "latency_ratio", "latency_ratio_p10",
           "latency_ratio_p90", "latency_ratio_ci95", "latency_blocks", "latency_ratio_same_runtime",
           "size_bytes", "size_ratio", "parity_ok", "fidelity"]
# Kept on the table for the knee (which images of each split each candidate gets right), never written out.
INTERNAL_COLUMNS = ["val_correct", "test_correct"]


def _interval(evidence: SplitEvidence | None, which: str) -> list[float] | None:
    return None if evidence is None else list(getattr(evidence, which))


def trials_table(trials: Sequence[optuna.trial.FrozenTrial], targets: TargetsConfig, baseline_val: float) -> pd.DataFrame:
    rows = []
    for r in map(TrialRecord.of, trials):
        val, test = r.evidence("val"), r.evidence("test")
        rows.append({
            "trial": r.number,
            "pipeline": r.pipeline,
            "runtime": r.runtime,
            "target": r.deployment(short=True),
            "deployment": r.deployment(),
            "val_top1": r.val_accuracy,
            "test_top1": r.test_top1,
            "val_images": None if val is None else val.images,
            "test_images": None if test is None else test.images,
            "val_top1_ci95": _interval(val, "top1_ci95"),
            "test_top1_ci95": _interval(test, "top1_ci95"),
            "val_drop": None if val is None else val.drop,
            "val_drop_ci95": _interval(val, "drop_ci95"),
            "test_drop": None if test is None else test.drop,
            "test_drop_ci95": _interval(test, "drop_ci95"),
            "test_agreement": None if test is None else test.agreement,
            "latency_ms": r.latency_ms,
            "reference_latency_ms": r.reference_latency_ms,
            "reference_runtime": r.reference_runtime,
            "latency_ratio": r.latency_ratio,
            "latency_ratio_p10": r.latency_ratio_p10,
            "latency_ratio_p90": r.latency_ratio_p90,
            # One timing run has no interval across runs: re-timing in independent blocks gives it.
            "latency_ratio_ci95": None,
            "latency_blocks": 1,
            "latency_ratio_same_runtime": r.latency_ratio_same_runtime,
            "size_bytes": r.artifact_bytes,
            "size_ratio": r.size_ratio,
            "parity_ok": r.parity_ok,
            "fidelity": r.fidelity.value,  # always "measured" on the front: screened trials never reach it
            "val_correct": r.correct("val"),
            "test_correct": r.correct("test"),
        })
    table = mark_targets(pd.DataFrame(rows, columns=COLUMNS + INTERNAL_COLUMNS), targets, baseline_val)
    return table.sort_values("val_top1", ascending=False).reset_index(drop=True)


def mark_targets(table: pd.DataFrame, targets: TargetsConfig, baseline_val: float) -> pd.DataFrame:
    """``table`` with its meets_* columns (re)computed from its validation accuracy, ratios and parity (what
    the picks select on) and its verdict_* columns: each target met with confidence, on the point estimate
    only, or missed, judged on test accuracy (never used to select) and on the latency ratio's interval
    across timing blocks where the row was re-timed in blocks (see ``search.evidence.verdict``)."""
    max_latency, max_size = targets.max_latency_ratio, targets.max_size_ratio

    def accuracy_verdict(row: pd.Series) -> str | None:
        interval = row["test_drop_ci95"]
        if not isinstance(interval, list):
            return None  # a trial stored before intervals were: no verdict
        return verdict(row["test_drop"], (interval[0], interval[1]), targets.max_accuracy_drop)

    def latency_verdict(row: pd.Series) -> str:
        interval = row["latency_ratio_ci95"]
        return verdict(row["latency_ratio"], (interval[0], interval[1]) if isinstance(interval, list) else None, max_latency)

    return table.assign(
        meets_accuracy=table["val_top1"] >= baseline_val - targets.max_accuracy_drop,
        meets_latency=table["latency_ratio"] <= max_latency,
        meets_size=table["size_ratio"] <= max_size,
        verdict_accuracy=[accuracy_verdict(row) for _, row in table.iterrows()],
        verdict_latency=[latency_verdict(row) for _, row in table.iterrows()],
        # Bytes are exact: met or missed, no interval.
        verdict_size=["met" if ratio <= max_size else "missed" for ratio in table["size_ratio"]],
    ).pipe(lambda t: t.assign(meets_all=t["meets_accuracy"] & t["meets_latency"] & t["meets_size"] & t["parity_ok"]))


# The columns of a front row (search.front.COLUMNS) that one latency measurement fills in.
TIMING_COLUMNS = ("latency_ms", "reference_latency_ms", "latency_ratio", "latency_ratio_p10", "latency_ratio_p90",
                  "latency_ratio_ci95", "latency_blocks")
# Where a row's latency comes from (its `timing` column), in words.
TIMINGS = {"export": "timed at export", "re-timed": "re-timed before the latest pick", "search": "search-time"}


def with_latest_timings(table: pd.DataFrame, card: dict[str, Any] | None, retimed_rows: list[dict[str, Any]] | None,
                   targets: TargetsConfig, baseline_val: float) -> pd.DataFrame:
    """``table`` with each trial's latest latency measurement in place of its search-time one: the exported
    trial's from its model card, the rows re-timed before the latest pick from that re-timed front; the
    `timing` column says which (a ``TIMINGS`` key), and the meets/verdict columns follow the figures, so
    every section of the report and the card judge a trial on the same numbers."""
    latest = {int(row["trial"]): {**{column: row.get(column) for column in TIMING_COLUMNS}, "timing": "re-timed"}
              for row in retimed_rows or [] if row.get("retimed") is True}
    metrics = (card or {}).get("metrics", {})
    if card is not None and metrics.get("latency_ratio_to_baseline") is not None:
        latest[int(card["trial"])] = {
            "latency_ms": metrics.get("latency_ms"), "reference_latency_ms": metrics.get("reference_latency_ms"),
            "latency_ratio": metrics["latency_ratio_to_baseline"], "latency_ratio_p10": None, "latency_ratio_p90": None,
            "latency_ratio_ci95": metrics.get("latency_ratio_ci95"),
            # Cards from before timing blocks timed one run.
            "latency_blocks": len(metrics.get("latency_blocks", {}).get("ratios", [])) or 1, "timing": "export"}
    table = table.assign(timing="search")
    for index, number in table["trial"].items():
        for column, value in latest.get(int(number), {}).items():
            table.at[index, column] = value
    return mark_targets(table, targets, baseline_val)


def _check_not_empty(front: pd.DataFrame) -> None:
    if front.empty:
        raise UserError("The study has no completed trials yet.", "run `udacisense search` first.")


def pick(front: pd.DataFrame, policy: Policy, targets: TargetsConfig) -> int:
    """The trial number a policy chooses: ``knee`` (see ``knee``) or the best of one objective among the
    points meeting all targets. A parity failure is never picked."""
    if policy == "knee":
        return knee(front, targets).trial
    _check_not_empty(front)
    feasible = front[front["meets_all"]]
    if feasible.empty:
        raise UserError(f"No trial on the front meets all targets, so `{policy}` has nothing to choose from.",
                        "use `--pick knee`, pass `--trial N`, relax `[targets]`, or run more trials.")
    column, ascending = {"smallest": ("size_ratio", True), "fastest": ("latency_ratio", True),
                         "most-accurate": ("val_top1", False)}[policy]
    return int(feasible.sort_values(column, ascending=ascending).iloc[0]["trial"])


@dataclass(frozen=True)
class KneeChoice:
    """The knee's trial on confirmation scores, and the one the same rule picks on validation scores."""

    trial: int
    on_validation: int  # the rule on the validation scores the front was selected on (what the knee picked before)
    comparisons: int  # accuracy gaps judged together (Holm)
    split: str  # the images the pick was scored and its gaps judged on: "test" where every row stores them, else "val"

    @property
    def note(self) -> str | None:
        """What the knee would have picked on validation scores, when that is another trial."""
        if self.on_validation == self.trial:
            return None
        return (f"on the validation scores the front was selected on, the same rule would have picked trial "
                f"{self.on_validation}")


def knee(front: pd.DataFrame, targets: TargetsConfig) -> KneeChoice:
    """The point nearest the ideal (the pool's best accuracy, zero latency, zero size), each objective measured
    in its target's allowance, among points meeting all targets when there are any, else among those passing
    parity (say so: see ``missed_targets``). Latency gaps count only where the re-timed intervals resolve them
    (``_resolved_latency``).

    Accuracy is scored on confirmation images: the front was selected on validation, so its rows are the luckiest
    there (most so among many near-equal trials); the test images, on which none was selected, score each row
    afresh, and the rule above is fixed before they are read. An accuracy gap counts only where the paired test
    resolves it, all gaps judged together (see ``_accuracy_shortfall``). Rows without per-image test results
    (trials stored before them) are scored on validation, as before."""
    _check_not_empty(front)
    split = "test" if _has_correct(front, "test_correct") else "val"
    pool, on_validation = _pool(front, targets, split), _pool(front, targets, "val")
    return KneeChoice(_nearest_ideal(pool, _accuracy_shortfall(pool, split), targets),
                      _nearest_ideal(on_validation, _accuracy_shortfall(on_validation, "val"), targets),
                      int((pool[f"{split}_top1"] < pool[f"{split}_top1"].max()).sum()), split)


def _pool(front: pd.DataFrame, targets: TargetsConfig, split: str) -> pd.DataFrame:
    """The rows the knee chooses among: those meeting every target, accuracy judged on ``split`` (the drop's point
    estimate; a row without a paired test drop keeps its validation verdict), else those passing parity."""
    accurate = front["meets_accuracy"]
    if split == "test":
        accurate = pd.Series([bool(ok) if drop is None or pd.isna(drop) else drop <= targets.max_accuracy_drop
                              for ok, drop in zip(front["meets_accuracy"], front["test_drop"], strict=True)],
                             index=front.index)
    feasible = front[accurate & front["meets_latency"] & front["meets_size"] & front["parity_ok"]]
    pool = feasible if not feasible.empty else front[front["parity_ok"]]
    if pool.empty:
        raise UserError("Every trial on the front fails its parity check: none of their artifacts computes "
                        "what its PyTorch model computes.", "report the pipelines as a bug, or run more trials.")
    return pool


def _nearest_ideal(pool: pd.DataFrame, shortfall: pd.Series, targets: TargetsConfig) -> int:
    # Ratios are already on the baseline's scale; min-max scaling within the pool would instead let
    # one outlier (a x4 slower TorchScript model) make every other latency look alike.
    distance = pd.DataFrame({
        "acc": shortfall / max(targets.max_accuracy_drop, 1e-3),
        "lat": _resolved_latency(pool) / max(targets.max_latency_ratio, 1e-3),
        "size": pool["size_ratio"] / max(targets.max_size_ratio, 1e-3),
    })
    return int(pool.loc[(distance**2).sum(axis=1).idxmin(), "trial"])


def _resolved_latency(pool: pd.DataFrame) -> pd.Series:
    """Each row's latency ratio, or the fastest row's where their intervals across timing blocks overlap: like an
    accuracy gap, a latency gap the re-timing does not resolve is worth no bytes or accuracy (two fine-tunes of
    one student timed at 0.11 [0.09, 0.13] and 0.12 [0.11, 0.13] are equally fast). Rows without an interval
    (timed once) keep their point estimate."""
    fastest = pool.loc[pool["latency_ratio"].idxmin()]
    reach = fastest["latency_ratio_ci95"]
    if not isinstance(reach, list):
        return pool["latency_ratio"]
    tied = [isinstance(interval, list) and interval[0] <= reach[1] for interval in pool["latency_ratio_ci95"]]
    return pool["latency_ratio"].where(~pd.Series(tied, index=pool.index), fastest["latency_ratio"])


def _has_correct(pool: pd.DataFrame, column: str) -> bool:
    return column in pool and all(isinstance(correct, torch.Tensor) for correct in pool[column])


def _accuracy_shortfall(pool: pd.DataFrame, split: str) -> pd.Series:
    """How far each row's ``split`` top-1 is below the pool's best there, counted only where the paired comparison
    on the same images resolves it, the gaps judged together so that the chance that any noise gap counts stays at
    5% (``resolved_shortfalls``): a measurable latency or size gain is never traded for an accuracy difference
    within the noise. Rows without stored per-image results count as measured."""
    score, column = pool[f"{split}_top1"], f"{split}_correct"
    best = pool.loc[score.idxmax()]
    gaps = best[f"{split}_top1"] - score
    if not isinstance(best[column], torch.Tensor):
        return gaps
    tested = [i for i in pool.index if gaps[i] > 0 and isinstance(pool.at[i, column], torch.Tensor)]
    resolved = resolved_shortfalls(best[column], [pool.at[i, column] for i in tested])
    unresolved = [i for i, real in zip(tested, resolved, strict=True) if not real]
    return gaps.where(~gaps.index.isin(unresolved), 0.0)


def missed_targets(front: pd.DataFrame, chosen: int, targets: TargetsConfig, baseline_val: float) -> str | None:
    """One paragraph saying that no front point meets every target and how the chosen one misses; None if it meets them."""
    row = front[front["trial"] == chosen].iloc[0]
    if bool(row["meets_all"]):
        return None
    reference = row["reference_runtime"] or "the reference runtime"
    misses = [text for ok, text in (
        (row["meets_accuracy"], f"val top-1 {row['val_top1']:.3f} < floor {baseline_val - targets.max_accuracy_drop:.3f}"),
        (row["meets_latency"], f"latency x{row['latency_ratio']:.2f} > x{targets.max_latency_ratio:.2f} "
                               f"of the float baseline in {reference}"),
        (row["meets_size"], f"size x{row['size_ratio']:.2f} > x{targets.max_size_ratio:.2f}"),
        (row["parity_ok"], "its artifact fails the parity check"),
    ) if not ok]
    feasible = int(front["meets_all"].sum())
    lead = ("No point on the Pareto front meets all targets." if feasible == 0
            else f"Trial {chosen} does not meet all targets (trials meeting them: {feasible}).")
    return (f"{lead} Trial {chosen} was chosen as the closest compromise and misses: {'; '.join(misses)}. "
            "Its model card records meets_targets = false. Do not ship it as meeting the brief: run more trials, "
            "widen [space], or relax [targets] with the app team.")


def plot_front(all_trials: pd.DataFrame, front: pd.DataFrame, targets: TargetsConfig, baseline_val: float,
               path: Path) -> Path:
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    floor = baseline_val - targets.max_accuracy_drop
    reference = next((r for r in front["reference_runtime"] if r), "reference runtime")
    for axis, column, limit, label in (
        (axes[0], "latency_ratio", targets.max_latency_ratio, f"latency / float baseline in {reference}"),
        (axes[1], "size_ratio", targets.max_size_ratio, f"artifact size / float baseline in {reference}"),
    ):
        axis.scatter(all_trials[column], all_trials["val_top1"], s=18, c="#bbbbbb", label="completed trials")
        for runtime, marker, name in (("executorch", "o", ".pte"), ("torchscript", "s", "TorchScript")):
            points = front[front["runtime"] == runtime]
            if points.empty:
                continue
            axis.scatter(points[column], points["val_top1"], s=44, marker=marker,
                         c=points["meets_all"].map({True: "#1a9850", False: "#d73027"}), edgecolors="black",
                         linewidths=0.5, label=f"front, {name} (green: meets all targets)")
        for _, row in front.iterrows():
            axis.annotate(f"#{row['trial']}", (row[column], row["val_top1"]), xytext=(4, 3),
                          textcoords="offset points", fontsize=7)
        axis.axvline(limit, color="#4575b4", linestyle="--", linewidth=1, label="target")
        axis.axhline(floor, color="#4575b4", linestyle=":", linewidth=1, label="accuracy floor")
        axis.scatter([1.0], [baseline_val], marker="*", s=140, c="#fdae61", edgecolors="black", label="baseline")
        axis.set_xlabel(label)
        axis.set_ylabel("validation top-1")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120, format="png")
    plt.close(figure)
    return path


def front_tables(trials: Sequence[optuna.trial.FrozenTrial], targets: TargetsConfig,
                 baseline_val: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Of a study's ``trials``, the front (``front_trials`` within the cost ``targets``) and every measured trial
    (screened ones' estimates are no measurement), as stored: nothing measured or written."""
    complete = [t for t in trials if TrialRecord.of(t).is_measured]
    return trials_table(front_trials(complete, targets), targets, baseline_val), trials_table(complete, targets, baseline_val)


def shown_tables(trials: Sequence[optuna.trial.FrozenTrial], targets: TargetsConfig, baseline_val: float,
                 card: dict[str, Any] | None, retimed_rows: list[dict[str, Any]] | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``front_tables`` as every reader shows them: each row with its latest timing (``with_latest_timings``), the
    front then within the cost targets on those figures (``within_cost_targets``)."""
    front, everything = (with_latest_timings(table, card, retimed_rows, targets, baseline_val)
                         for table in front_tables(trials, targets, baseline_val))
    return within_cost_targets(front), everything


def public_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The table as written and stored: without the columns kept only for computing (per-image results)."""
    return table.drop(columns=[c for c in INTERNAL_COLUMNS if c in table.columns])


def write_front(front: pd.DataFrame, everything: pd.DataFrame, targets: TargetsConfig, baseline_val: float,
                out_dir: Path) -> dict[str, Path]:
    """``pareto_front.{csv,json,png}`` in ``out_dir`` (the plot shows ``everything`` behind the front)."""
    front = public_rows(front)
    return {
        "csv": write_text(out_dir / "pareto_front.csv", front.to_csv(index=False)),
        "json": write_json(out_dir / "pareto_front.json", front.to_dict(orient="records")),
        "png": plot_front(everything, front, targets, baseline_val, out_dir / "pareto_front.png"),
    }
