"""The report's figures (PNG), drawn from the facts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from optuna.trial import TrialState

from udacisense.common.files import atomic_path

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from udacisense.search.report.facts import Inputs, chosen_facts, class_comparison
from udacisense.search.report.trial_facts import PhaseTotal, family, operator_latency_fit, operator_trials
from udacisense.search.results.front import TIMINGS
from udacisense.search.results.hypervolume import HV_REFERENCE
from udacisense.search.study.trial_record import TrialRecord

FIGURES = {
    "pareto": "pareto_projections.png",
    "hypervolume": "hypervolume.png",
    "waterfall": "chosen_waterfall.png",
    "per_class": "per_class_accuracy.png",
    "phases": "phase_seconds.png",
    "operators": "latency_operators.png",
}


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)
    return path


def _values(trials: Sequence[TrialRecord], objective: str) -> list[float]:
    return [t.value(objective) for t in trials]


def _errors(values: Sequence[float], intervals: Sequence[tuple[float, float] | None]) -> np.ndarray:
    """Matplotlib's asymmetric error bars (below, above) of each value; zero where there is no interval."""
    return np.array([[max(0.0, v - i[0]) if i else 0.0 for v, i in zip(values, intervals)],
                     [max(0.0, i[1] - v) if i else 0.0 for v, i in zip(values, intervals)]])


def _val_intervals(trials: Sequence[TrialRecord]) -> list[tuple[float, float] | None]:
    evidence = [t.evidence("val") for t in trials]
    return [None if e is None else e.top1_ci95 for e in evidence]


def plot_pareto(inputs: Inputs, path: Path) -> Path:
    families = {t.number: family(t) for t in inputs.complete}
    names = sorted(set(families.values()))
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(names)}
    front_numbers = set(inputs.front["trial"])
    facts = chosen_facts(inputs)
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for axis, ratio, limit, label in (
        (axes[0], "latency_ratio", inputs.max_latency_ratio, f"latency / float baseline in {inputs.study.evaluation.reference_runtime}"),
        (axes[1], "size_ratio", inputs.max_size_ratio, f"artifact bytes / float baseline in {inputs.study.evaluation.reference_runtime}"),
    ):
        for name in names:
            members = [t for t in inputs.complete if families[t.number] == name]
            on_front = [t for t in members if t.number in front_numbers]
            off_front = [t for t in members if t.number not in front_numbers]
            for points in (off_front, on_front):
                if points:  # each validation top-1 with its 95% interval: most gaps between trials lie within it
                    accuracy = _values(points, "val_accuracy")
                    axis.errorbar(_values(points, ratio), accuracy, yerr=_errors(accuracy, _val_intervals(points)),
                                  fmt="none", ecolor=colours[name], elinewidth=0.8, alpha=0.5, zorder=1)
            if off_front:
                axis.scatter(_values(off_front, ratio), _values(off_front, "val_accuracy"), s=22, alpha=0.6,
                             color=colours[name], label=name)
            if on_front:
                axis.scatter(_values(on_front, ratio), _values(on_front, "val_accuracy"), s=60,
                             color=colours[name], edgecolors="black", linewidths=1.0,
                             label=None if off_front else name)
        chosen = inputs.chosen
        axis.scatter([chosen.value(ratio)], [chosen.val_accuracy], s=260, facecolors="none", edgecolors="black",
                     linewidths=1.6, label=f"chosen (trial {chosen.number})")
        if ratio == "latency_ratio" and facts.timing != "search":
            # The figure the report and the card judge on: its latest timing, with its interval across blocks.
            axis.errorbar([facts.latency_ratio], [chosen.val_accuracy], xerr=_errors([facts.latency_ratio],
                          [facts.latency_ratio_ci95]), fmt="D", color="black", markersize=5, capsize=3)
            axis.annotate(f"trial {chosen.number} {TIMINGS[facts.timing]}", (facts.latency_ratio, chosen.val_accuracy),
                          xytext=(0, 6), textcoords="offset points", ha="center", fontsize=7)
        axis.scatter([1.0], [inputs.baseline_val], marker="*", s=160, c="#fdae61", edgecolors="black", label="baseline")
        axis.axvline(limit, color="#4575b4", linestyle="--", linewidth=1, label="target")
        if inputs.floor > 0:
            axis.axhline(inputs.floor, color="#d73027", linestyle=":", linewidth=1, label="accuracy floor")
        ends = [end for interval in _val_intervals(inputs.complete) if interval for end in interval]
        _accuracy_limits(axis, _values(inputs.complete, "val_accuracy") + ends + [inputs.baseline_val, inputs.floor])
        axis.set_xlabel(label)
        axis.set_ylabel("validation top-1 (bars: 95% interval)")
        axis.grid(alpha=0.3)
    axes[0].set_title("accuracy vs latency (black edge: Pareto front)", fontsize=10)
    axes[1].set_title("accuracy vs size (colour: pipeline family)", fontsize=10)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(figure, path)


def plot_hypervolume(history: Sequence[tuple[int, float]], trials: Sequence[TrialRecord], path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(7, 3.6))
    numbers = [n for n, _ in history]
    values = [v for _, v in history]
    last = max([t.number for t in trials] + numbers)
    axis.step(numbers + [last], values + values[-1:], where="post", color="#1a9850",
              label="hypervolume of the trials completed so far")
    axis.scatter(numbers, values, s=14, color="#1a9850")
    for state, marker, colour, name in ((TrialState.PRUNED, "|", "#fdae61", "pruned trial"),
                                        (TrialState.FAIL, "x", "#d73027", "failed trial")):
        xs = [t.number for t in trials if t.state is state]
        if xs:
            axis.scatter(xs, [0.0] * len(xs), marker=marker, s=60, color=colour, label=name)
    axis.set_xlabel("trial number")
    axis.set_ylabel(f"hypervolume (ref. {HV_REFERENCE})")
    axis.set_ylim(bottom=-0.05 * max(values + [1e-9]), top=1.15 * max(values + [1e-9]))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    return _save(figure, path)


def plot_waterfall(inputs: Inputs, steps: Sequence[dict[str, Any]], path: Path) -> Path:
    trial = inputs.chosen
    runtime = trial.runtime
    labels = [s["label"] for s in steps] + [f"artifact ({runtime})"]
    sizes = [float(s["bytes"]) / 1e6 if s["bytes"] is not None else np.nan for s in steps]
    sizes.append(float(trial.artifact_bytes) / 1e6 if trial.artifact_bytes is not None else np.nan)
    accuracy = [float(s["val_top1"]) if s["val_top1"] is not None else np.nan for s in steps] + [trial.val_accuracy]
    figure, axis = plt.subplots(figsize=(max(6.5, 1.5 * len(labels)), 4.2))
    x = np.arange(len(labels))
    for i, size in enumerate(sizes):
        if i in (0, len(sizes) - 1) or np.isnan(sizes[i - 1]):
            axis.bar(x[i], size, color="#4575b4" if i == 0 else "#1a9850", width=0.6)
        else:
            low, high = sorted((sizes[i - 1], size))
            axis.bar(x[i], high - low, bottom=low, width=0.6, color="#1a9850" if size <= sizes[i - 1] else "#d73027")
        axis.annotate(f"{size:.2f}", (x[i], size), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
    baseline_artifact = inputs.profile.size(runtime)
    if baseline_artifact is not None and baseline_artifact.bytes:
        axis.axhline(baseline_artifact.bytes / 1e6, color="#4575b4", linestyle="--", linewidth=1,
                     label=f"baseline artifact ({runtime})")
    axis.set_xticks(x, labels, rotation=15, fontsize=8)
    axis.set_ylabel("MB (state dict after each stage; artifact last)", fontsize=9)
    twin = axis.twinx()
    twin.plot(x, accuracy, color="black", marker="o", label="validation top-1 (right axis)")
    if inputs.floor > 0:
        twin.axhline(inputs.floor, color="#d73027", linestyle=":", linewidth=1, label="accuracy floor (right axis)")
    _accuracy_limits(twin, accuracy + [inputs.floor])
    twin.set_ylabel("validation top-1")
    handles = axis.get_legend_handles_labels()
    twin_handles = twin.get_legend_handles_labels()
    axis.legend(handles[0] + twin_handles[0], handles[1] + twin_handles[1], fontsize=8, loc="upper center",
                bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    axis.set_title(f"trial {trial.number}: size and accuracy stage by stage", fontsize=10)
    return _save(figure, path)


def _accuracy_limits(axis: plt.Axes, values: Sequence[float]) -> None:
    """Accuracy axes stay within [0, 1] (a floor below zero, allowed by a loose target, is not drawn)."""
    finite = [v for v in values if v is not None and np.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    pad = max(0.02, 0.1 * (high - low))
    bottom, top = max(0.0, low - pad), min(1.0, high + pad)
    axis.set_ylim(bottom, top if top > bottom else 1.0)


def plot_per_class(inputs: Inputs, path: Path) -> Path:
    comparison = class_comparison(inputs)
    classes = comparison.classes
    x = np.arange(len(classes))
    figure, axis = plt.subplots(figsize=(max(6.5, 0.7 * len(classes)), 3.8))
    for offset, colour, label, values, intervals in (
            (-0.2, "#4575b4", "baseline", [c.baseline for c in classes], [c.baseline_ci95 for c in classes]),
            (0.2, "#1a9850", f"chosen (trial {inputs.chosen.number})",
             [np.nan if c.chosen is None else c.chosen for c in classes], [c.chosen_ci95 for c in classes])):
        axis.bar(x + offset, values, width=0.4, color=colour, label=label)
        if comparison.paired:
            axis.errorbar(x + offset, values, yerr=_errors(values, intervals), fmt="none", ecolor="black",
                          elinewidth=0.8, capsize=2)
    for index, c in enumerate(classes):
        if c.resolvably_worse:
            axis.annotate("worse beyond noise", (x[index] + 0.2, 1.0), ha="center", fontsize=7, color="#d73027")
    axis.set_xticks(x, [c.name for c in classes], rotation=30, fontsize=8)
    axis.set_ylabel("test top-1 per class" + (" (bars: 95% interval)" if comparison.paired else ""))
    axis.set_ylim(0, 1.08)
    axis.grid(alpha=0.3, axis="y")
    axis.legend(fontsize=8)
    return _save(figure, path)


def plot_phases(phases: Sequence[PhaseTotal], path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(7, 0.35 * max(len(phases), 3) + 1.0))
    total = sum(p.seconds for p in phases)
    names = [p.name for p in phases][::-1]
    shares = [100 * p.share(total) for p in phases][::-1]
    colours = ["#1a9850" if p.training else "#fdae61" for p in phases][::-1]
    axis.barh(names, shares, color=colours)
    for y, share in enumerate(shares):
        axis.text(share, y, f" {share:.0f}%", va="center", fontsize=8)
    axis.set_xlabel("share of the trials' compute (%); green: training, orange: everything else")
    axis.set_xlim(0, max(shares + [1.0]) * 1.15)
    axis.grid(axis="x", alpha=0.3)
    return _save(figure, path)


def plot_operators(inputs: Inputs, path: Path) -> Path:
    """Latency ratio against the operators each measured ``.pte`` runs, float and int8 apart, with the fitted line."""
    points = operator_trials(inputs.complete)
    figure, axis = plt.subplots(figsize=(7, 4.2))
    for int8, marker, colour, name in ((False, "o", "#4575b4", "float"), (True, "^", "#d73027", "int8")):
        members = [(count, t) for count, t in points if (t.backend is not None) == int8]
        if members:
            axis.scatter([count for count, _ in members], [t.latency_ratio for _, t in members], marker=marker, s=30,
                         color=colour, alpha=0.8, label=f"{name} ({len(members)} trials)")
    fit = operator_latency_fit(inputs.complete)
    if fit is not None:
        ends = np.array([min(count for count, _ in points), max(count for count, _ in points)], dtype=float)
        axis.plot(ends, fit.intercept + fit.per_operator * ends, color="black", linewidth=1,
                  label=f"least squares, R² {fit.r2:.2f}")
    if not points:
        axis.text(0.5, 0.5, "no .pte trial recorded its operator count", ha="center", va="center",
                  transform=axis.transAxes, fontsize=9)
    axis.set_xlabel("operators the .pte runs (delegated + portable)")
    axis.set_ylabel(f"latency / float baseline in {inputs.study.evaluation.reference_runtime}")
    axis.grid(alpha=0.3)
    if points:
        axis.legend(fontsize=8)
    return _save(figure, path)
