"""The Pareto front of a study: a table with targets met, CSV/JSON/PNG exports, and pick policies."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import optuna
import pandas as pd

from udacisense.common.errors import UserError
from udacisense.common.files import atomic_path, write_json, write_text
from udacisense.search.study import TargetsConfig

Policy = Literal["knee", "smallest", "fastest", "most-accurate"]
POLICIES: tuple[str, ...] = ("knee", "smallest", "fastest", "most-accurate")


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Objectives are (accuracy: max, latency ratio: min, size ratio: min)."""
    better_or_equal = a[0] >= b[0] and a[1] <= b[1] and a[2] <= b[2]
    return better_or_equal and (a[0] > b[0] or a[1] < b[1] or a[2] < b[2])


def pareto_trials(trials: Sequence[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    complete = [t for t in trials if t.state is optuna.trial.TrialState.COMPLETE and t.values]
    return [t for t in complete if not any(_dominates(o.values, t.values) for o in complete if o is not t)]


def trials_table(trials: Sequence[optuna.trial.FrozenTrial], targets: TargetsConfig, baseline_val: float) -> pd.DataFrame:
    rows = []
    for t in trials:
        acc, latency_ratio, size_ratio = t.values
        rows.append({
            "trial": t.number,
            "pipeline": t.user_attrs.get("pipeline", ""),
            "runtime": t.user_attrs.get("runtime", ""),
            "val_top1": acc,
            "test_top1": t.user_attrs.get("test", {}).get("top1"),
            "latency_ms": t.user_attrs.get("latency", {}).get("median_ms"),
            "latency_ratio": latency_ratio,
            "size_bytes": t.user_attrs.get("artifact_bytes"),
            "size_ratio": size_ratio,
            "meets_accuracy": acc >= baseline_val - targets.max_accuracy_drop,
            "meets_latency": latency_ratio <= 1 - targets.latency_reduction,
            "meets_size": size_ratio <= 1 - targets.size_reduction,
        })
    table = pd.DataFrame(rows, columns=["trial", "pipeline", "runtime", "val_top1", "test_top1", "latency_ms",
                                        "latency_ratio", "size_bytes", "size_ratio", "meets_accuracy",
                                        "meets_latency", "meets_size"])
    table["meets_all"] = table["meets_accuracy"] & table["meets_latency"] & table["meets_size"]
    return table.sort_values("val_top1", ascending=False).reset_index(drop=True)


def pick(front: pd.DataFrame, policy: Policy) -> int:
    """The trial number a policy chooses. ``knee``: nearest the ideal point after min-max scaling,
    among points meeting all targets when there are any; the others require meeting the targets."""
    if front.empty:
        raise UserError("The study has no completed trials yet.", "run `udacisense search` first.")
    feasible = front[front["meets_all"]]
    if policy == "knee":
        pool = feasible if not feasible.empty else front
        scaled = pd.DataFrame({
            "acc": _scale(-pool["val_top1"]), "lat": _scale(pool["latency_ratio"]), "size": _scale(pool["size_ratio"]),
        })
        return int(pool.loc[(scaled**2).sum(axis=1).idxmin(), "trial"])
    if feasible.empty:
        raise UserError(f"No trial on the front meets all targets, so `{policy}` has nothing to choose from.",
                        "use `--pick knee`, pass `--trial N`, relax `[targets]`, or run more trials.")
    column, ascending = {"smallest": ("size_ratio", True), "fastest": ("latency_ratio", True),
                         "most-accurate": ("val_top1", False)}[policy]
    return int(feasible.sort_values(column, ascending=ascending).iloc[0]["trial"])


def _scale(values: pd.Series) -> pd.Series:
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else values * 0.0


def plot_front(all_trials: pd.DataFrame, front: pd.DataFrame, targets: TargetsConfig, baseline_val: float,
               path: Path) -> Path:
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    floor = baseline_val - targets.max_accuracy_drop
    for axis, column, limit, label in (
        (axes[0], "latency_ratio", 1 - targets.latency_reduction, "latency / baseline (same runtime)"),
        (axes[1], "size_ratio", 1 - targets.size_reduction, "artifact size / baseline"),
    ):
        axis.scatter(all_trials[column], all_trials["val_top1"], s=18, c="#bbbbbb", label="completed trials")
        axis.scatter(front[column], front["val_top1"], s=40, c=front["meets_all"].map({True: "#1a9850", False: "#d73027"}),
                     edgecolors="black", linewidths=0.5, label="Pareto front (green: meets all targets)")
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


def export_front(study: optuna.Study, targets: TargetsConfig, baseline_val: float, out_dir: Path) -> tuple[pd.DataFrame, dict[str, Path]]:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state is optuna.trial.TrialState.COMPLETE and t.values]
    front = trials_table(pareto_trials(complete), targets, baseline_val)
    everything = trials_table(complete, targets, baseline_val)
    paths = {
        "csv": write_text(out_dir / "pareto_front.csv", front.to_csv(index=False)),
        "json": write_json(out_dir / "pareto_front.json", front.to_dict(orient="records")),
        "png": plot_front(everything, front, targets, baseline_val, out_dir / "pareto_front.png"),
    }
    return front, paths
