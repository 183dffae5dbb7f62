"""The technical report: Markdown and HTML with figures, written only from stored measurements.

Inputs are what the other commands already stored: the baseline's ``metrics.json``, the Optuna
study (objective values and user attributes of every trial), the optional techniques benchmark
(``runs/<study>/techniques/techniques.csv``) and the optional export's ``model_card.json``. No
number in the report is typed in: every figure is read from those files or computed from them.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from udacisense.common.errors import UserError
from udacisense.common.files import atomic_path, sha256_of, write_text
from udacisense.search.budget import is_rejected
from udacisense.search.front import pareto_trials, pick, trials_table
from udacisense.search.study import StudyConfig

# Hypervolume is computed in minimisation form (-accuracy, latency ratio, size ratio) against this
# reference point: zero accuracy, twice the baseline's latency, twice its size.
HV_REFERENCE = (0.0, 2.0, 2.0)
# Stage kinds (recorded per stage) to the `[space]` family that produces them.
SPACE_FAMILY = {"ptq": "quantize", "dynamic": "quantize", "qat": "quantize", "gradual": "prune"}
FIGURES = {
    "pareto": "pareto_projections.png",
    "hypervolume": "hypervolume.png",
    "waterfall": "chosen_waterfall.png",
    "per_class": "per_class_accuracy.png",
}


# ---------------------------------------------------------------------------------------------
# Formatting: one function per kind of number, so the tests can format stored values the same way.

def fmt_acc(value: float) -> str:
    """An accuracy (fraction) as a percentage, e.g. ``61.7%``."""
    return f"{100 * float(value):.1f}%"


def fmt_points(delta: float) -> str:
    """An accuracy difference (fraction) in percentage points, signed, e.g. ``-3.3 points``."""
    value = round(100 * float(delta), 1) + 0.0  # no "-0.0"
    return f"{value:+.1f} points"


def fmt_ratio(value: float) -> str:
    """A ratio to the baseline, e.g. ``0.412``."""
    return f"{float(value):.3f}"


def fmt_change(ratio: float) -> str:
    """A ratio to the baseline in words, e.g. ``58.8% smaller`` / ``12.0% larger``."""
    change = 100 * (1 - float(ratio))
    return f"{abs(change):.1f}% {'smaller' if change >= 0 else 'larger'}"


def fmt_faster(ratio: float) -> str:
    change = 100 * (1 - float(ratio))
    return f"{abs(change):.1f}% {'faster' if change >= 0 else 'slower'}"


def fmt_bytes(value: float) -> str:
    """Bytes with a readable unit, e.g. ``1.52 MB`` or ``87.3 kB``."""
    value = float(value)
    return f"{value / 1e6:.2f} MB" if value >= 1e5 else f"{value / 1e3:.1f} kB"


def fmt_int(value: float) -> str:
    """An exact count with thousands separators, e.g. ``1,523,114``."""
    return f"{int(value):,}"


def fmt_ms(value: float) -> str:
    return f"{float(value):.2f} ms"


def fmt_millions(value: float) -> str:
    return f"{float(value) / 1e6:.2f} M"


def fmt_seconds(value: float) -> str:
    value = float(value)
    return f"{value:.0f} s" if abs(value) < 120 else f"{value / 60:.1f} min"


def _yes(flag: bool) -> str:
    return "met" if flag else "**not met**"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines + [""]


# ---------------------------------------------------------------------------------------------
# Hypervolume


def _hypervolume_slices(points: np.ndarray, reference: np.ndarray) -> float:
    """Exact hypervolume (minimisation) of 3-D points by slicing along the last axis."""
    if len(points) == 0:
        return 0.0
    if points.shape[1] == 1:
        return float(reference[0] - points[:, 0].min())
    if points.shape[1] == 2:
        ordered = points[np.argsort(points[:, 0])]
        volume, best_y = 0.0, reference[1]
        for x, y in ordered:
            if y < best_y:
                volume += (reference[0] - x) * (best_y - y)
                best_y = y
        return float(volume)
    ordered = points[np.argsort(points[:, -1])]
    volume = 0.0
    for i, point in enumerate(ordered):
        upper = ordered[i + 1, -1] if i + 1 < len(ordered) else reference[-1]
        if upper > point[-1]:
            volume += _hypervolume_slices(ordered[: i + 1, :-1], reference[:-1]) * (upper - point[-1])
    return float(volume)


def hypervolume(values: Sequence[Sequence[float]], reference: Sequence[float] = HV_REFERENCE) -> float:
    """Hypervolume of (accuracy, latency ratio, size ratio) triples, in the minimisation form above."""
    ref = np.asarray(reference, dtype=float)
    loss = np.asarray([[-v[0], v[1], v[2]] for v in values], dtype=float).reshape(-1, 3)
    loss = loss[np.all(loss < ref, axis=1)] if len(loss) else loss  # points beyond the reference add nothing
    if len(loss) == 0:
        return 0.0
    try:
        from optuna._hypervolume import compute_hypervolume  # private API; exact (WFG) when present
    except ImportError:  # pragma: no cover - depends on the optuna version
        return _hypervolume_slices(loss, ref)
    return float(compute_hypervolume(loss, ref))


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass
class Inputs:
    study: StudyConfig
    storage_label: str
    metrics: dict[str, Any]
    metrics_path: Path
    optuna_study: optuna.Study
    trials: list[FrozenTrial]
    complete: list[FrozenTrial]
    front: pd.DataFrame
    everything: pd.DataFrame
    chosen: FrozenTrial
    choice_note: str
    techniques: pd.DataFrame | None
    techniques_path: Path
    card: dict[str, Any] | None
    card_path: Path
    notes: list[str] = field(default_factory=list)

    @property
    def baseline_val(self) -> float:
        return float(self.metrics["accuracy"]["val"]["top1"])

    @property
    def floor(self) -> float:
        return self.baseline_val - self.study.targets.max_accuracy_drop

    @property
    def max_latency_ratio(self) -> float:
        return 1 - self.study.targets.latency_reduction

    @property
    def max_size_ratio(self) -> float:
        return 1 - self.study.targets.size_reduction

    def trial(self, number: int) -> FrozenTrial:
        return next(t for t in self.trials if t.number == number)


def _storage_label(url: str) -> str:
    return url.split("@")[-1] if "@" in url else url


def _load_inputs(study: StudyConfig, storage: str | None, trial_number: int | None) -> Inputs:
    from udacisense.search.storage import open_study

    metrics_path = study.run_dir / "baseline" / "metrics.json"
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"The baseline measurements {metrics_path} are missing or unreadable.",
                        f"run `udacisense baseline --study ...` (or `search`) for study {study.name!r} first.") from None
    url = storage or study.storage_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise UserError(f"The study {study.name!r} has no storage yet ({url.removeprefix('sqlite:///')} does not exist).",
                        "run `udacisense search --study ...` first, or pass `--storage` with the shared storage URL.")
    optuna_study = open_study(study, storage, create=False)
    trials = optuna_study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state is TrialState.COMPLETE and t.values]
    if not complete:
        raise UserError(f"The study {study.name!r} has no completed trials ({len(trials)} trial(s) in total), "
                        "so there is nothing to report on.", "run `udacisense search --study ...` until trials complete.")
    baseline_val = float(metrics["accuracy"]["val"]["top1"])
    front = trials_table(pareto_trials(complete), study.targets, baseline_val)
    everything = trials_table(complete, study.targets, baseline_val)
    if trial_number is not None:
        match = [t for t in trials if t.number == trial_number]
        if not match:
            raise UserError(f"The study has no trial {trial_number} (it has {len(trials)}).",
                            "pick a number from `udacisense front`.")
        if match[0].state is not TrialState.COMPLETE:
            raise UserError(f"Trial {trial_number} is {match[0].state.name.lower()}, not complete; it has no measurements.",
                            "pick a completed trial from `udacisense front`.")
        chosen, note = match[0], f"trial {trial_number}, chosen with `--trial`"
    else:
        policy = study.search.default_pick
        try:
            number = pick(front, policy)
            note = f"the study's default pick policy `{policy}` on the Pareto front"
        except UserError:
            number = pick(front, "knee")
            note = (f"the `knee` policy, because the study's default policy `{policy}` needs a front point "
                    "that meets all targets and there is none")
        chosen = next(t for t in trials if t.number == number)
    techniques_path = study.run_dir / "techniques" / "techniques.csv"
    techniques = None
    if techniques_path.is_file():
        try:
            techniques = pd.read_csv(techniques_path)
        except (OSError, ValueError, pd.errors.ParserError):
            techniques = None
    card_path = study.run_dir / "export" / "model_card.json"
    card = None
    try:
        loaded = json.loads(card_path.read_text(encoding="utf-8"))
        card = loaded if loaded.get("trial") == chosen.number else None
    except (OSError, ValueError):
        pass
    return Inputs(study, _storage_label(url), metrics, metrics_path, optuna_study, trials, complete, front, everything,
                  chosen, note, techniques, techniques_path, card, card_path)


# ---------------------------------------------------------------------------------------------
# Derived facts


def family(trial: FrozenTrial) -> str:
    """A trial's pipeline family: the set of its stage kinds."""
    kinds = sorted({str(s.get("kind")) for s in trial.user_attrs.get("stages", [])})
    return " + ".join(kinds) if kinds else "no stage"


def trial_seconds(trial: FrozenTrial) -> float:
    seconds = trial.user_attrs.get("seconds")
    if seconds is not None:
        return float(seconds)
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return 0.0


def prune_category(reason: str) -> str:
    if reason.startswith("rejected before compute"):
        return "rejected before compute (impossible stage order)"
    if reason.startswith("over budget"):
        return "over budget (another worker took the last trial first; nothing ran)"
    if reason.startswith("stopped before training"):
        return "stopped before training (estimated to miss the size or latency target)"
    if reason:
        return "stopped early during training (accuracy hopeless)"
    return "pruned without a recorded reason"


def state_counts(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    counts = Counter(t.state.name.lower() for t in trials)
    return {name: counts.get(name, 0) for name in ("complete", "pruned", "fail", "running", "waiting")}


def hypervolume_history(trials: Sequence[FrozenTrial]) -> list[tuple[int, float]]:
    """(trial number, hypervolume of all trials completed up to it) for every completed trial."""
    history, points = [], []
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.state is TrialState.COMPLETE and trial.values:
            points.append(list(trial.values))
            history.append((trial.number, hypervolume(points)))
    return history


def early_stopping_savings(trials: Sequence[FrozenTrial]) -> dict[str, Any]:
    """Estimate: median seconds of complete trials x pruned trials - seconds the pruned trials spent."""
    complete = [trial_seconds(t) for t in trials if t.state is TrialState.COMPLETE]
    pruned = [t for t in trials if t.state is TrialState.PRUNED]
    median = statistics.median(complete) if complete else 0.0
    by_category: dict[str, dict[str, float]] = {}
    for trial in pruned:
        entry = by_category.setdefault(prune_category(str(trial.user_attrs.get("pruned_reason", ""))),
                                       {"trials": 0, "spent": 0.0})
        entry["trials"] += 1
        entry["spent"] += trial_seconds(trial)
    for entry in by_category.values():
        entry["saved"] = median * entry["trials"] - entry["spent"]
    spent = sum(trial_seconds(t) for t in pruned)
    # Impossible orders and surplus trials would never have run: they are not savings of early stopping.
    never_ran = [by_category.get(prune_category(reason), {"trials": 0, "saved": 0.0})
                 for reason in ("rejected before compute", "over budget")]
    return {"median_complete": median, "pruned": len(pruned), "spent": spent, "saved": median * len(pruned) - spent,
            "complete_total": sum(complete), "by_category": by_category,
            "stopped": len(pruned) - sum(int(entry["trials"]) for entry in never_ran),
            "saved_by_stopping": median * len(pruned) - spent - sum(entry["saved"] for entry in never_ran)}


@dataclass(frozen=True)
class TechniqueRow:
    name: str
    runtime: str
    val_top1: float
    test_top1: float | None
    bytes: float | None
    size_ratio: float
    latency_ms: float | None
    latency_ratio: float
    baseline_val: float
    trial: int | None = None

    @property
    def lost(self) -> float:
        """Validation accuracy lost against the baseline (fraction; negative: gained)."""
        return self.baseline_val - self.val_top1


def technique_rows(inputs: Inputs) -> tuple[list[TechniqueRow], str]:
    """Each technique alone, from the techniques benchmark if it exists, else from single-stage trials."""
    table = inputs.techniques
    needed = {"technique", "runtime", "val_top1", "size_ratio", "latency_ratio"}
    if table is not None and needed <= set(table.columns):
        baselines = {row.runtime: float(row.val_top1) for row in table.itertuples() if row.technique == "baseline"}
        rows = [TechniqueRow(str(r["technique"]), str(r["runtime"]), float(r["val_top1"]),
                             _float(r.get("test_top1")), _float(r.get("bytes")), float(r["size_ratio"]),
                             _float(r.get("latency_ms")), float(r["latency_ratio"]),
                             baselines.get(str(r["runtime"]), inputs.baseline_val))
                for _, r in table.iterrows() if r["technique"] != "baseline"]
        return rows, (f"the techniques benchmark `{inputs.techniques_path}` (scripts/techniques.py: every technique "
                      "applied alone to the baseline, accuracy lost measured against the baseline row in the same runtime)")
    rows = []
    for trial in inputs.complete:
        stages = trial.user_attrs.get("stages", [])
        if len(stages) != 1:
            continue
        attrs = trial.user_attrs
        rows.append(TechniqueRow(str(stages[0].get("description", stages[0].get("kind"))), str(attrs.get("runtime", "")),
                                 float(trial.values[0]), _float(attrs.get("test", {}).get("top1")),
                                 _float(attrs.get("artifact_bytes")), float(trial.values[2]),
                                 _float(attrs.get("latency", {}).get("median_ms")), float(trial.values[1]),
                                 inputs.baseline_val, trial.number))
    source = ("the search's completed single-stage trials (no techniques benchmark at "
              f"`{inputs.techniques_path}`; run `scripts/techniques.py --study ...` for every technique on equal terms)")
    return rows, source


def _float(value: object) -> float | None:
    try:
        result = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if np.isnan(result) else result


def reduction_per_point(ratio: float, lost: float) -> float | None:
    """Percent of size (or latency) removed per validation accuracy point lost; None when nothing was lost."""
    if lost <= 0:
        return None
    return 100 * (1 - ratio) / (100 * lost)


def best_technique(rows: Sequence[TechniqueRow], column: str) -> TechniqueRow | None:
    """The technique that removed the most ``column`` (size_ratio or latency_ratio) per accuracy point lost:
    techniques that lost no accuracy rank first (by reduction), the rest by reduction per point."""
    useful = [r for r in rows if getattr(r, column) < 1]
    if not useful:
        return None
    free = [r for r in useful if r.lost <= 0]
    if free:
        return min(free, key=lambda r: getattr(r, column))
    return max(useful, key=lambda r: reduction_per_point(getattr(r, column), r.lost) or 0.0)


def _efficiency_text(row: TechniqueRow, column: str) -> str:
    per_point = reduction_per_point(getattr(row, column), row.lost)
    if per_point is None:
        return "no accuracy lost"
    return f"{per_point:.1f}% per point"


# ---------------------------------------------------------------------------------------------
# Figures


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)
    return path


def plot_pareto(inputs: Inputs, path: Path) -> Path:
    families = {t.number: family(t) for t in inputs.complete}
    names = sorted(set(families.values()))
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(names)}
    front_numbers = set(inputs.front["trial"])
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for axis, column, index, limit, label in (
        (axes[0], "latency_ratio", 1, inputs.max_latency_ratio, "latency / baseline (same runtime)"),
        (axes[1], "size_ratio", 2, inputs.max_size_ratio, "artifact size / baseline (same runtime)"),
    ):
        for name in names:
            members = [t for t in inputs.complete if families[t.number] == name]
            on_front = [t for t in members if t.number in front_numbers]
            off_front = [t for t in members if t.number not in front_numbers]
            if off_front:
                axis.scatter([t.values[index] for t in off_front], [t.values[0] for t in off_front], s=22, alpha=0.6,
                             color=colours[name], label=name)
            if on_front:
                axis.scatter([t.values[index] for t in on_front], [t.values[0] for t in on_front], s=60,
                             color=colours[name], edgecolors="black", linewidths=1.0,
                             label=None if off_front else name)
        chosen = inputs.chosen
        axis.scatter([chosen.values[index]], [chosen.values[0]], s=260, facecolors="none", edgecolors="black",
                     linewidths=1.6, label=f"chosen (trial {chosen.number})")
        axis.scatter([1.0], [inputs.baseline_val], marker="*", s=160, c="#fdae61", edgecolors="black", label="baseline")
        axis.axvline(limit, color="#4575b4", linestyle="--", linewidth=1, label="target")
        if inputs.floor > 0:
            axis.axhline(inputs.floor, color="#d73027", linestyle=":", linewidth=1, label="accuracy floor")
        _accuracy_limits(axis, [t.values[0] for t in inputs.complete] + [inputs.baseline_val, inputs.floor])
        axis.set_xlabel(label)
        axis.set_ylabel("validation top-1")
        axis.grid(alpha=0.3)
    axes[0].set_title("accuracy vs latency (black edge: Pareto front)", fontsize=10)
    axes[1].set_title("accuracy vs size (colour: pipeline family)", fontsize=10)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(figure, path)


def plot_hypervolume(history: Sequence[tuple[int, float]], trials: Sequence[FrozenTrial], path: Path) -> Path:
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


def stage_steps(inputs: Inputs) -> list[dict[str, Any]]:
    """The chosen model after each stage: baseline first, then every stage, then the shipped artifact."""
    metrics, trial = inputs.metrics, inputs.chosen
    state = metrics["size"]["state_dict"]
    steps = [{"label": "baseline", "what": "trained baseline (float)", "seconds": None,
              "val_top1": inputs.baseline_val, "bytes": state["bytes"], "form": "float",
              "parameters": state.get("parameters"), "nonzero_parameters": state.get("nonzero_parameters"),
              "flops": metrics["flops"]["flops"]}]
    for i, stage in enumerate(trial.user_attrs.get("stages", []), start=1):
        m = stage.get("metrics", {})
        steps.append({"label": f"{i}. {stage.get('kind')}", "what": stage.get("description", ""),
                      "seconds": stage.get("seconds"), "val_top1": m.get("val_top1"), "bytes": m.get("state_dict_bytes"),
                      "form": m.get("form"), "parameters": m.get("parameters"),
                      "nonzero_parameters": m.get("nonzero_parameters"), "flops": m.get("flops")})
    return steps


def plot_waterfall(inputs: Inputs, steps: Sequence[dict[str, Any]], path: Path) -> Path:
    trial = inputs.chosen
    runtime = trial.user_attrs.get("runtime", "")
    labels = [s["label"] for s in steps] + [f"artifact ({runtime})"]
    sizes = [float(s["bytes"]) / 1e6 if s["bytes"] is not None else np.nan for s in steps]
    sizes.append(float(trial.user_attrs.get("artifact_bytes", np.nan)) / 1e6)
    accuracy = [float(s["val_top1"]) if s["val_top1"] is not None else np.nan for s in steps] + [float(trial.values[0])]
    figure, axis = plt.subplots(figsize=(max(6.5, 1.5 * len(labels)), 4.2))
    x = np.arange(len(labels))
    for i, size in enumerate(sizes):
        if i in (0, len(sizes) - 1) or np.isnan(sizes[i - 1]):
            axis.bar(x[i], size, color="#4575b4" if i == 0 else "#1a9850", width=0.6)
        else:
            low, high = sorted((sizes[i - 1], size))
            axis.bar(x[i], high - low, bottom=low, width=0.6, color="#1a9850" if size <= sizes[i - 1] else "#d73027")
        axis.annotate(f"{size:.2f}", (x[i], size), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
    baseline_artifact = inputs.metrics["size"].get(runtime, {}).get("bytes")
    if baseline_artifact:
        axis.axhline(float(baseline_artifact) / 1e6, color="#4575b4", linestyle="--", linewidth=1,
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
    classes = list(inputs.metrics.get("classes", []))
    base = inputs.metrics["accuracy"]["test"]["per_class"]
    chosen = inputs.chosen.user_attrs.get("test", {}).get("per_class", [np.nan] * len(base))
    if not classes:
        classes = [str(i) for i in range(len(base))]
    x = np.arange(len(classes))
    figure, axis = plt.subplots(figsize=(max(6.5, 0.7 * len(classes)), 3.8))
    axis.bar(x - 0.2, base, width=0.4, color="#4575b4", label="baseline")
    axis.bar(x + 0.2, chosen, width=0.4, color="#1a9850", label=f"chosen (trial {inputs.chosen.number})")
    axis.set_xticks(x, classes, rotation=30, fontsize=8)
    axis.set_ylabel("test top-1 per class")
    axis.set_ylim(0, 1.05)
    axis.grid(alpha=0.3, axis="y")
    axis.legend(fontsize=8)
    return _save(figure, path)


# ---------------------------------------------------------------------------------------------
# Sections


def _chosen_facts(inputs: Inputs) -> dict[str, Any]:
    trial, metrics = inputs.chosen, inputs.metrics
    attrs = trial.user_attrs
    runtime = attrs.get("runtime", "")
    acc, latency_ratio, size_ratio = trial.values
    artifact_bytes = attrs.get("artifact_bytes")
    baseline_bytes = metrics["size"].get(runtime, {}).get("bytes")
    if baseline_bytes is None and artifact_bytes:
        baseline_bytes = artifact_bytes / size_ratio
    return {
        "runtime": runtime, "val": acc, "latency_ratio": latency_ratio, "size_ratio": size_ratio,
        "test": attrs.get("test", {}).get("top1"), "bytes": artifact_bytes, "baseline_bytes": baseline_bytes,
        "latency_ms": attrs.get("latency", {}).get("median_ms"),
        "baseline_latency_ms": attrs.get("reference_latency", {}).get("median_ms"),
        "meets_accuracy": acc >= inputs.floor, "meets_latency": latency_ratio <= inputs.max_latency_ratio,
        "meets_size": size_ratio <= inputs.max_size_ratio,
    }


def section_summary(inputs: Inputs) -> list[str]:
    f = _chosen_facts(inputs)
    targets, metrics = inputs.study.targets, inputs.metrics
    trial = inputs.chosen
    base_test = metrics["accuracy"]["test"]["top1"]
    lines = ["## Executive summary", ""]
    lines.append(f"The recommended model is **trial {trial.number}**: `{trial.user_attrs.get('pipeline', '')}`, "
                 f"shipped in the {f['runtime']} runtime. It was selected by {inputs.choice_note}.")
    lines.append("")
    lines += md_table(
        ["measure", "baseline", "chosen model", "change", "target", "verdict"],
        [
            ["artifact size", f"{fmt_bytes(f['baseline_bytes'])} ({fmt_int(f['baseline_bytes'])} B)",
             f"{fmt_bytes(f['bytes'])} ({fmt_int(f['bytes'])} B)", f"ratio {fmt_ratio(f['size_ratio'])} ({fmt_change(f['size_ratio'])})",
             f"ratio ≤ {fmt_ratio(inputs.max_size_ratio)} (at least {100 * targets.size_reduction:.0f}% smaller)",
             _yes(f["meets_size"])],
            ["latency (median, batch 1, CPU)", fmt_ms(f["baseline_latency_ms"]), fmt_ms(f["latency_ms"]),
             f"ratio {fmt_ratio(f['latency_ratio'])} ({fmt_faster(f['latency_ratio'])})",
             f"ratio ≤ {fmt_ratio(inputs.max_latency_ratio)} (at least {100 * targets.latency_reduction:.0f}% faster)",
             _yes(f["meets_latency"])],
            ["validation top-1", fmt_acc(inputs.baseline_val), fmt_acc(f["val"]), fmt_points(f["val"] - inputs.baseline_val),
             f"≥ {fmt_acc(max(inputs.floor, 0.0))} (at most {100 * targets.max_accuracy_drop:.1f} points lower)",
             _yes(f["meets_accuracy"])],
            ["test top-1 (held out)", fmt_acc(base_test), fmt_acc(f["test"]) if f["test"] is not None else "n/a",
             fmt_points(f["test"] - base_test) if f["test"] is not None else "n/a", "reported, not a target", ""],
        ],
    )
    met = [f["meets_size"], f["meets_latency"], f["meets_accuracy"]]
    words = (f"In plain words: the compressed model's file is {fmt_change(f['size_ratio'])} than the original "
             f"(the goal was at least {100 * targets.size_reduction:.0f}% smaller), it answers "
             f"{fmt_faster(f['latency_ratio'])} (one image at a time on CPU, in the {f['runtime']} runtime) "
             f"(goal: at least {100 * targets.latency_reduction:.0f}% faster), and it recognises "
             f"{fmt_acc(f['val'])} of the validation images against {fmt_acc(inputs.baseline_val)} for the original "
             f"(allowed drop: {100 * targets.max_accuracy_drop:.1f} points)")
    if f["test"] is not None:
        words += f"; on images never used during the search it scores {fmt_acc(f['test'])} against {fmt_acc(base_test)}"
    words += ". "
    if all(met):
        words += "**It meets all three targets.**"
    else:
        missed = [name for name, ok in zip(("size", "latency", "accuracy"), met) if not ok]
        words += f"**It misses the {' and '.join(missed)} target{'s' if len(missed) > 1 else ''}.**"
    feasible = int(inputs.everything["meets_all"].sum())
    words += (f" Of {len(inputs.complete)} completed candidate(s), {feasible} met all targets"
              f" ({int(inputs.front['meets_all'].sum())} of them on the Pareto front of {len(inputs.front)}).")
    lines += [words, ""]
    return lines


def section_baseline(inputs: Inputs) -> list[str]:
    metrics, model = inputs.metrics, inputs.study.model
    acc = metrics["accuracy"]
    state = metrics["size"]["state_dict"]
    train = metrics.get("train", {})
    lines = ["## Baseline analysis", "",
             f"Source: `{inputs.metrics_path}`.", ""]
    lines += md_table(["property", "value"], [
        ["architecture", f"{model.arch}, width multiplier {model.width_mult:g}, weights {model.pretrained}"
                         + (f", resized in-model to {model.input_resolution} px" if model.input_resolution else "")],
        ["input", " × ".join(str(d) for d in metrics.get("input_shape", []))],
        ["classes", f"{len(metrics.get('classes', []))}: {', '.join(metrics.get('classes', []))}"],
        ["training", f"{train.get('epochs', 'n/a')} epochs on {train.get('samples', 'n/a')} images "
                     f"({train.get('val_samples', 'n/a')} validation, {train.get('test_samples', 'n/a')} test), "
                     f"{fmt_seconds(metrics.get('train_seconds', 0.0))}"],
        ["parameters", f"{fmt_int(state['parameters'])} ({fmt_int(state['nonzero_parameters'])} non-zero)"],
        ["compute per image", f"{fmt_millions(metrics['flops']['flops'])}FLOPs, {fmt_millions(metrics['flops']['macs'])}MACs"],
        ["peak memory (batch-1 eager forward)", f"{fmt_bytes(metrics['peak_memory']['bytes'])} "
                                                f"({fmt_int(metrics['peak_memory']['bytes'])} B)"],
        ["top-1 validation / test", f"{fmt_acc(acc['val']['top1'])} / {fmt_acc(acc['test']['top1'])}"],
        ["top-5 validation / test", f"{fmt_acc(acc['val']['top5'])} / {fmt_acc(acc['test']['top5'])}"],
    ])
    lines += ["### Size per format", ""]
    lines += md_table(["format", "bytes", "size", "gzip bytes", "gzip / raw"], [
        [name, fmt_int(r["bytes"]), fmt_bytes(r["bytes"]), fmt_int(r["gzip_bytes"]), fmt_ratio(r["gzip_bytes"] / r["bytes"])]
        for name, r in metrics["size"].items()])
    lines += ["### Latency per runtime", ""]
    lines += md_table(["runtime", "median", "p10", "p90", "mean", "runs", "threads"], [
        [name, fmt_ms(r["median_ms"]), fmt_ms(r["p10_ms"]), fmt_ms(r["p90_ms"]), fmt_ms(r.get("mean_ms", float("nan"))),
         r.get("runs", ""), r.get("threads", "")] for name, r in metrics["latency"].items()])
    lines += ["### Per-class accuracy", ""]
    classes = metrics.get("classes") or [str(i) for i in range(len(acc["test"]["per_class"]))]
    lines += md_table(["class", "validation top-1", "test top-1"], [
        [name, fmt_acc(v), fmt_acc(t)] for name, v, t in zip(classes, acc["val"]["per_class"], acc["test"]["per_class"])])
    env = metrics.get("environment", {})
    if env:
        lines += [f"Measured with torch {env.get('torch')} on {env.get('cpu')} ({env.get('cpu_count')} cores; "
                  f"latency with {inputs.study.evaluation.threads} thread(s), batch 1).", ""]
    return lines


def section_techniques(inputs: Inputs) -> tuple[list[str], list[TechniqueRow]]:
    rows, source = technique_rows(inputs)
    lines = ["## Each technique alone", "", f"Source: {source}.", ""]
    if not rows:
        lines += ["No technique was measured alone: the search completed no single-stage trial and there is no "
                  "techniques benchmark. Run `scripts/techniques.py --study ...` to fill this section.", ""]
        return lines, rows
    lines += md_table(
        ["technique", "runtime", "val top-1", "test top-1", "accuracy change", "size ratio", "latency ratio",
         "size cut per point lost", "latency cut per point lost"] + (["trial"] if rows[0].trial is not None else []),
        [[r.name, r.runtime, fmt_acc(r.val_top1), fmt_acc(r.test_top1) if r.test_top1 is not None else "n/a",
          fmt_points(-r.lost), fmt_ratio(r.size_ratio), fmt_ratio(r.latency_ratio),
          _efficiency_text(r, "size_ratio"), _efficiency_text(r, "latency_ratio")] + ([r.trial] if r.trial is not None else [])
         for r in sorted(rows, key=lambda r: r.size_ratio)],
    )
    return lines, rows


def section_search(inputs: Inputs, history: Sequence[tuple[int, float]], savings: dict[str, Any]) -> list[str]:
    config = inputs.study.search
    counts = state_counts(inputs.trials)
    names = inputs.optuna_study.metric_names or ["objective 0", "objective 1", "objective 2"]
    directions = [d.name.lower() for d in inputs.optuna_study.directions]
    lines = ["## The search", ""]
    rejected = sum(1 for t in inputs.trials if is_rejected(t))
    budget = f"{config.n_trials} trials" + (f" or {config.timeout_minutes:g} minutes" if config.timeout_minutes else "")
    sampler = config.sampler + (f" (population {config.population_size})" if config.sampler in ("nsga2", "nsga3") else "")
    lines += md_table(["setting", "value"], [
        ["storage", f"`{inputs.storage_label}` (study `{inputs.optuna_study.study_name}`)"],
        ["objectives", ", ".join(f"{n} ({d})" for n, d in zip(names, directions))],
        ["budget", budget],
        ["sampler", sampler],
        ["early stopping", f"on, margin {config.patience_margin:g} below the accuracy floor" if config.early_stopping else "off"],
        ["stage families in the space", ", ".join(inputs.study.space.stages)],
        ["trials", f"{len(inputs.trials)} recorded: {counts['complete']} complete, {counts['pruned']} pruned, "
                   f"{counts['fail']} failed" + (f", {counts['running']} running" if counts["running"] else "")
                   + (f", {counts['waiting']} waiting" if counts["waiting"] else "")
                   + (f"; {rejected} of the pruned were impossible orders rejected before compute, which do not count "
                      "against the budget" if rejected else "")],
        ["retries of trials whose worker died", str(sum(1 for t in inputs.trials if t.user_attrs.get("retry_of") is not None))],
    ])
    pruned = [t for t in inputs.trials if t.state is TrialState.PRUNED]
    if pruned:
        lines += ["### Why trials were pruned", ""]
        groups: dict[str, dict[str, list[FrozenTrial]]] = {}
        for trial in pruned:
            reason = str(trial.user_attrs.get("pruned_reason", ""))
            detail = reason.split(": ", 1)[1] if reason.startswith(("rejected before compute", "stopped before training")) else reason
            key = re.sub(r"\d+(\.\d+)?", "#", detail)
            groups.setdefault(prune_category(reason), {}).setdefault(key, []).append(trial)
        rows = []
        for category, details in groups.items():
            for members in details.values():
                detail = str(members[0].user_attrs.get("pruned_reason", "")) or "(none)"
                rows.append([category, len(members), ", ".join(str(t.number) for t in members), detail])
        lines += md_table(["category", "trials", "trial numbers", "reason (first trial of the group)"], rows)
    failed = [t for t in inputs.trials if t.state is TrialState.FAIL]
    if failed:
        lines += ["### Failed trials", ""]
        groups_f: dict[str, list[FrozenTrial]] = {}
        for trial in failed:
            error = str(trial.user_attrs.get("error", "no error recorded (worker died or was interrupted)"))
            groups_f.setdefault(error.split(":", 1)[0], []).append(trial)
        lines += md_table(["error", "trials", "trial numbers", "message (first trial)"], [
            [kind, len(members), ", ".join(str(t.number) for t in members),
             str(members[0].user_attrs.get("error", "no error recorded"))[:240]] for kind, members in groups_f.items()])
    lines += ["### Compute and early stopping", ""]
    lines += [f"Completed trials took {fmt_seconds(savings['complete_total'])} in total (median "
              f"{fmt_seconds(savings['median_complete'])} per trial); the {savings['pruned']} pruned trial(s) spent "
              f"{fmt_seconds(savings['spent'])}. Estimated compute saved by stopping them early "
              f"(median complete-trial time × pruned trials − time the pruned trials spent): "
              f"**{fmt_seconds(savings['saved'])}**.", ""]
    if prune_category("rejected before compute") in savings["by_category"]:
        lines += [f"Trials rejected before compute could not have run at all; counting only the trials stopped before "
                  f"or during training, the estimate is {fmt_seconds(savings['saved_by_stopping'])}.", ""]
    if savings["by_category"]:
        lines += md_table(["category", "trials", "time spent", "estimated saving"], [
            [name, int(e["trials"]), fmt_seconds(e["spent"]), fmt_seconds(e["saved"])]
            for name, e in savings["by_category"].items()])
    lines += ["### Hypervolume", ""]
    final = history[-1][1] if history else 0.0
    ideal = abs(HV_REFERENCE[0] - (-1.0)) * HV_REFERENCE[1] * HV_REFERENCE[2]
    lines += [f"Hypervolume of the completed trials in the space (−accuracy, latency ratio, size ratio) against the "
              f"reference point {HV_REFERENCE}: **{final:.4f}** after trial {history[-1][0]} "
              f"({100 * final / ideal:.1f}% of the box between the reference and a perfect, free model)."
              if history else "No completed trial: no hypervolume.", ""]
    lines += [f"![Hypervolume over trials]({FIGURES['hypervolume']})", ""]
    lines += ["### Pareto front", ""]
    lines += [f"{len(inputs.front)} non-dominated trial(s) among {len(inputs.complete)} completed; "
              f"{int(inputs.front['meets_all'].sum())} meet all targets. The chosen trial is marked ◀.", ""]
    lines += md_table(
        ["trial", "pipeline", "runtime", "val top-1", "test top-1", "latency", "latency ratio", "size", "size ratio",
         "meets accuracy", "meets latency", "meets size"],
        [[f"{int(r.trial)}{' ◀' if int(r.trial) == inputs.chosen.number else ''}", r.pipeline, r.runtime,
          fmt_acc(r.val_top1), fmt_acc(r.test_top1) if _float(r.test_top1) is not None else "n/a",
          fmt_ms(r.latency_ms) if _float(r.latency_ms) is not None else "n/a", fmt_ratio(r.latency_ratio),
          fmt_bytes(r.size_bytes) if _float(r.size_bytes) is not None else "n/a", fmt_ratio(r.size_ratio),
          "✓" if r.meets_accuracy else "✗", "✓" if r.meets_latency else "✗", "✓" if r.meets_size else "✗"]
         for r in inputs.front.itertuples()],
    )
    lines += [f"![Pareto projections: accuracy vs latency ratio and vs size ratio]({FIGURES['pareto']})", ""]
    return lines


def section_chosen(inputs: Inputs, steps: Sequence[dict[str, Any]]) -> list[str]:
    trial = inputs.chosen
    attrs = trial.user_attrs
    f = _chosen_facts(inputs)
    lines = ["## The chosen pipeline, stage by stage", "",
             f"Trial {trial.number}: `{attrs.get('pipeline', '')}` (family: {family(trial)}; "
             f"{fmt_seconds(trial_seconds(trial))} to build and measure). Validation accuracy, state-dict size, "
             "parameters and FLOPs were measured after every stage; latency is measured on the final artifact only, "
             "in the runtime it ships in.", ""]
    rows, previous = [], None
    base_bytes, base_flops = steps[0]["bytes"], steps[0]["flops"]
    for step in steps:
        acc = step["val_top1"]
        change = fmt_points(acc - previous) if previous is not None and acc is not None else ""
        rows.append([step["label"], step["what"], fmt_seconds(step["seconds"]) if step["seconds"] is not None else "",
                     fmt_acc(acc) if acc is not None else "n/a", change,
                     fmt_bytes(step["bytes"]) if step["bytes"] is not None else "n/a",
                     fmt_ratio(step["bytes"] / base_bytes) if step["bytes"] is not None else "n/a", step["form"] or "",
                     fmt_int(step["parameters"]) if step["parameters"] is not None else "—",
                     fmt_int(step["nonzero_parameters"]) if step["nonzero_parameters"] is not None else "—",
                     fmt_ratio(step["flops"] / base_flops) if step["flops"] is not None else "—"])
        previous = acc if acc is not None else previous
    rows.append([f"artifact ({f['runtime']})", f"lowered for {f['runtime']}"
                 + (f", {attrs.get('backend')} kernels" if attrs.get("backend") else ""), "",
                 fmt_acc(f["val"]), fmt_points(f["val"] - previous) if previous is not None else "",
                 fmt_bytes(f["bytes"]), f"{fmt_ratio(f['size_ratio'])} of the baseline artifact", "lowered", "—", "—", "—"])
    lines += md_table(["step", "what", "time", "val top-1", "change", "size", "size / baseline", "form", "parameters",
                       "non-zero", "FLOPs / baseline"], rows)
    latency = attrs.get("latency", {})
    parity = attrs.get("parity", {})
    lines += [f"Final artifact: {fmt_int(f['bytes'])} B ({fmt_bytes(attrs.get('artifact_gzip_bytes', 0))} gzipped), "
              f"latency median {fmt_ms(latency.get('median_ms', float('nan')))} (p10 {fmt_ms(latency.get('p10_ms', float('nan')))}, "
              f"p90 {fmt_ms(latency.get('p90_ms', float('nan')))}) against {fmt_ms(f['baseline_latency_ms'])} for the baseline "
              f"in the same runtime and process (ratio {fmt_ratio(f['latency_ratio'])}); test top-1 "
              f"{fmt_acc(f['test']) if f['test'] is not None else 'n/a'}; parity with its PyTorch model: top-1 agreement "
              f"{fmt_acc(parity.get('top1_agreement', float('nan')))} on {parity.get('samples', 'n/a')} test images.", ""]
    lines += [f"![Size and accuracy after each stage]({FIGURES['waterfall']})", ""]
    lines += ["### Per-class accuracy, baseline vs chosen model (test split)", ""]
    classes = inputs.metrics.get("classes") or []
    base = inputs.metrics["accuracy"]["test"]["per_class"]
    chosen = attrs.get("test", {}).get("per_class", [])
    lines += md_table(["class", "baseline", "chosen", "change"], [
        [name, fmt_acc(b), fmt_acc(c), fmt_points(c - b)] for name, b, c in zip(classes, base, chosen)])
    lines += [f"![Per-class test accuracy, baseline vs chosen]({FIGURES['per_class']})", ""]
    return lines


def _floats(values: object) -> str:
    try:
        return "[" + ", ".join(f"{float(v):.4f}" for v in values) + "]"  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return str(values)


def section_deployment(inputs: Inputs) -> list[str]:
    trial, card = inputs.chosen, inputs.card
    attrs = trial.user_attrs
    lines = ["## Deployment", ""]
    if card is None:
        lines += [f"Trial {trial.number} has not been exported yet (no model card for it at `{inputs.card_path}`); the "
                  f"values below are the search's own measurements of its artifact. Export and verify it with "
                  f"`udacisense export --study ... --trial {trial.number} --out DIR`.", ""]
        parity = attrs.get("parity", {})
        lines += md_table(["property", "value"], [
            ["artifact", f"`{attrs.get('artifact_path', '')}`"],
            ["runtime", f"{attrs.get('runtime', '')}" + (f" ({attrs.get('backend')} quantization)" if attrs.get("backend") else "")],
            ["size", f"{fmt_int(attrs.get('artifact_bytes', 0))} B ({fmt_bytes(attrs.get('artifact_gzip_bytes', 0))} gzipped)"],
            ["sha256", f"`{attrs.get('artifact_sha256', '')}`"],
            ["parity (test split)", f"top-1 agreement {fmt_acc(parity.get('top1_agreement', float('nan')))}, max |diff| "
                                    f"{parity.get('max_abs_diff', float('nan')):.5f} on {parity.get('samples', 'n/a')} images"],
            ["latency", f"{fmt_ms(attrs.get('latency', {}).get('median_ms', float('nan')))} median"],
        ])
        return lines
    export_dir = inputs.card_path.parent
    artifact = export_dir / str(card.get("artifact", ""))
    checksum = "the artifact file is missing"
    if artifact.is_file():
        checksum = "matches the file on disk" if sha256_of(artifact) == card.get("sha256") else "**does not match the file on disk**"
    m, parity = card.get("metrics", {}), card.get("parity", {})
    normalisation = card.get("input", {}).get("normalisation", {})
    lines += [f"Exported to `{export_dir}` (model card `{inputs.card_path}`, created {card.get('created', 'n/a')}).", ""]
    lines += md_table(["property", "value"], [
        ["artifact", f"`{card.get('artifact')}`: {card.get('format')}"],
        ["runtime", f"{card.get('runtime')}" + (f", quantization backend {card.get('quantization_backend')}"
                                                 if card.get("quantization_backend") else "")],
        ["size", f"{fmt_int(card.get('bytes', 0))} B ({fmt_bytes(card.get('bytes', 0))}); baseline artifact "
                 f"{fmt_int(m.get('baseline', {}).get('bytes', 0))} B; ratio {fmt_ratio(m.get('size_ratio_to_baseline', float('nan')))}"],
        ["sha256", f"`{card.get('sha256')}` ({checksum})"],
        ["parity on the test split", f"top-1 agreement {fmt_acc(parity.get('top1_agreement', float('nan')))} "
                                     f"(required ≥ {fmt_acc(parity.get('min_agreement', float('nan')))}), max |diff| "
                                     f"{parity.get('max_abs_diff', float('nan')):.5f} on {parity.get('samples', 'n/a')} images"],
        ["latency at export", f"{fmt_ms(m.get('latency_ms', float('nan')))} median"
                              + (f" against {fmt_ms(m['baseline_latency']['median_ms'])} for the baseline timed alongside"
                                 if "baseline_latency" in m else "")
                              + f" (ratio {fmt_ratio(m.get('latency_ratio_to_baseline', float('nan')))}, same runtime)"],
        ["accuracy of the artifact", f"test top-1 {fmt_acc(m.get('test_top1', float('nan')))}, "
                                     f"validation top-1 {fmt_acc(m.get('val_top1', float('nan')))}"],
        ["input", f"{' × '.join(str(d) for d in card.get('input', {}).get('shape', []))} "
                  f"{card.get('input', {}).get('dtype', '')}, {card.get('input', {}).get('layout', '')}; "
                  f"normalise {normalisation.get('formula', '')} with mean {_floats(normalisation.get('mean'))} "
                  f"and std {_floats(normalisation.get('std'))}"],
        ["classes (output order)", ", ".join(card.get("classes", []))],
    ])
    export_ratio = _float(m.get("latency_ratio_to_baseline"))
    search_ratio = float(trial.values[1])
    if export_ratio is not None and (export_ratio <= inputs.max_latency_ratio) != (search_ratio <= inputs.max_latency_ratio):
        lines += [f"The latency ratio measured at export ({fmt_ratio(export_ratio)}) and during the search "
                  f"({fmt_ratio(search_ratio)}) fall on different sides of the target ({fmt_ratio(inputs.max_latency_ratio)}): "
                  "the two measurements disagree, so confirm latency on the target phone before relying on it.", ""]
    return lines


def recommendations(inputs: Inputs, rows: Sequence[TechniqueRow], history: Sequence[tuple[int, float]],
                    savings: dict[str, Any]) -> list[str]:
    lines = ["## Recommendations (computed from the measurements above)", ""]
    items = []
    f, trial = _chosen_facts(inputs), inputs.chosen
    if f["meets_size"] and f["meets_latency"] and f["meets_accuracy"]:
        items.append(f"Ship trial {trial.number} (`{trial.user_attrs.get('pipeline', '')}`) in the {f['runtime']} runtime: "
                     f"size ratio {fmt_ratio(f['size_ratio'])}, latency ratio {fmt_ratio(f['latency_ratio'])}, "
                     f"validation accuracy {fmt_points(f['val'] - inputs.baseline_val)}, all within target.")
    else:
        table = inputs.everything
        shares = {name: float(table[f"meets_{name}"].mean()) for name in ("size", "latency", "accuracy")}
        hardest = min(shares, key=shares.get)  # type: ignore[arg-type]
        items.append(f"Do not ship yet: trial {trial.number} misses a target, and the hardest target is {hardest} "
                     f"(met by {100 * shares[hardest]:.0f}% of completed trials: size {100 * shares['size']:.0f}%, "
                     f"latency {100 * shares['latency']:.0f}%, accuracy {100 * shares['accuracy']:.0f}%).")
    feasible = [inputs.trial(int(n)) for n in inputs.front.loc[inputs.front["meets_all"], "trial"]]
    pool, pool_name = (feasible, "feasible front points") if feasible else (
        [inputs.trial(int(n)) for n in inputs.front["trial"]], "front points (none meets all targets)")
    kinds = Counter(kind for t in pool for kind in {str(s.get("kind")) for s in t.user_attrs.get("stages", [])})
    if kinds:
        ranked = ", ".join(f"{kind} in {count} of {len(pool)}" for kind, count in kinds.most_common())
        everywhere = [kind for kind, count in kinds.most_common() if count == len(pool)]
        required = sorted({SPACE_FAMILY.get(k, k) for k in everywhere})
        advice = (f"{', '.join(f'`{k}`' for k in everywhere)} appear{'s' if len(everywhere) == 1 else ''} in all of them: "
                  f"consider `space.required = {json.dumps(required)}` to spend the budget on such pipelines."
                  if everywhere else
                  f"`{kinds.most_common(1)[0][0]}` appears most often.")
        items.append(f"Stage families on the {len(pool)} {pool_name}: {ranked}. {advice}")
    for column, what in (("size_ratio", "size"), ("latency_ratio", "latency")):
        best = best_technique(rows, column)
        if best is not None:
            items.append(f"Largest {what} reduction per accuracy point lost, technique alone: `{best.name}` ({best.runtime}) — "
                         f"{what} ratio {fmt_ratio(getattr(best, column))} ({fmt_change(getattr(best, column)) if what == 'size' else fmt_faster(getattr(best, column))}) "
                         f"for {fmt_points(-best.lost)} validation accuracy ({_efficiency_text(best, column)}).")
    if len(history) >= 4:
        quarter = history[-max(1, len(history) // 4) - 1][1]
        final = history[-1][1]
        growth = (final - quarter) / final if final > 0 else 0.0
        if growth > 0:
            items.append(f"The hypervolume still grew by {100 * growth:.1f}% over the last quarter of completed trials: "
                         "a larger `search.n_trials` budget is likely to improve the front.")
        else:
            items.append("The hypervolume did not grow over the last quarter of completed trials: the front has "
                         "settled for this space; widen `[space]` rather than adding trials.")
    rejected = sum(1 for t in inputs.trials if is_rejected(t))
    if rejected:
        items.append(f"{rejected} of {len(inputs.trials)} sampled pipelines ({100 * rejected / len(inputs.trials):.0f}%) "
                     "were impossible stage orders, rejected before compute at no cost; listing fewer families in "
                     "`space.stages` makes sampling more efficient.")
    if savings["stopped"]:
        items.append(f"Stopping {savings['stopped']} trial(s) before or during training saved an estimated "
                     f"{fmt_seconds(savings['saved_by_stopping'])} against {fmt_seconds(savings['complete_total'])} spent "
                     "on completed trials: keep `search.early_stopping` on.")
    base = inputs.metrics["accuracy"]["test"]["per_class"]
    chosen = trial.user_attrs.get("test", {}).get("per_class", [])
    classes = inputs.metrics.get("classes") or [str(i) for i in range(len(base))]
    if chosen:
        drops = [(b - c, name) for b, c, name in zip(base, chosen, classes)]
        worst = max(drops)
        if worst[0] > 0:
            items.append(f"The class that lost most test accuracy is `{worst[1]}` ({fmt_points(-worst[0])}); "
                         "check it with the app team before release.")
    lines += [f"- {item}" for item in items] + [""]
    return lines


# ---------------------------------------------------------------------------------------------
# Markdown to HTML (headings, tables, lists, paragraphs, images; inline code, bold, links)

_INLINE = [
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>"),
]


def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    for pattern, replacement in _INLINE:
        text = pattern.sub(replacement, text)
    return text


def _table_cells(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def markdown_to_html(markdown: str, image_dir: Path, title: str) -> str:
    """The small Markdown subset this report uses, as one self-contained page (images as data URIs)."""
    out: list[str] = []
    paragraph: list[str] = []
    lines = markdown.splitlines()

    def flush() -> None:
        if paragraph:
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
            paragraph.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        heading = re.match(r"^(#{1,6})\s+(.*)$", line)
        image = re.match(r"^!\[([^\]]*)\]\(([^)]+)\)\s*$", line)
        if not line.strip():
            flush()
        elif heading:
            flush()
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif image:
            flush()
            data = base64.b64encode((image_dir / image.group(2)).read_bytes()).decode("ascii")
            alt = html.escape(image.group(1))
            out.append(f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"><figcaption>{alt}</figcaption></figure>')
        elif line.startswith("|"):
            flush()
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            header, body = _table_cells(block[0]), [b for b in block[1:] if not re.match(r"^\|(\s*:?-+:?\s*\|)+$", b)]
            out.append("<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in header) + "</tr></thead><tbody>")
            out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in _table_cells(row)) + "</tr>" for row in body]
            out.append("</tbody></table>")
            continue
        elif line.startswith("- "):
            flush()
            out.append("<ul>")
            while i < len(lines) and lines[i].startswith("- "):
                out.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("</ul>")
            continue
        else:
            paragraph.append(line.strip())
        i += 1
    flush()
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45;color:#222}"
             "table{border-collapse:collapse;margin:0.6em 0 1.2em;font-size:0.9em}"
             "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f2f2f2}"
             "code{background:#f4f4f4;padding:0 3px}img{max-width:100%}figure{margin:1em 0}"
             "figcaption{font-size:0.85em;color:#555}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


# ---------------------------------------------------------------------------------------------
# Entry point


@dataclass(frozen=True)
class ReportResult:
    markdown: Path
    html: Path
    images: dict[str, Path]
    trial: int


def write_report(study: StudyConfig, out_dir: Path, *, storage: str | None = None, trial: int | None = None) -> ReportResult:
    """Write ``report.md``, ``report.html`` and the figures into ``out_dir``."""
    inputs = _load_inputs(study, storage, trial)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    history = hypervolume_history(inputs.trials)
    savings = early_stopping_savings(inputs.trials)
    steps = stage_steps(inputs)
    images = {
        "pareto": plot_pareto(inputs, out_dir / FIGURES["pareto"]),
        "hypervolume": plot_hypervolume(history, inputs.trials, out_dir / FIGURES["hypervolume"]),
        "waterfall": plot_waterfall(inputs, steps, out_dir / FIGURES["waterfall"]),
        "per_class": plot_per_class(inputs, out_dir / FIGURES["per_class"]),
    }
    title = f"UdaciSense compression report: study {study.name}"
    technique_lines, rows = section_techniques(inputs)
    lines = [f"# {title}", "",
             f"Generated {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} by `udacisense report` from the "
             f"baseline measurements, the study storage `{inputs.storage_label}` and the export folder. Every number "
             "below is a stored measurement or is computed from them.", ""]
    lines += section_summary(inputs)
    lines += section_baseline(inputs)
    lines += technique_lines
    lines += section_search(inputs, history, savings)
    lines += section_chosen(inputs, steps)
    lines += section_deployment(inputs)
    lines += recommendations(inputs, rows, history, savings)
    markdown = "\n".join(lines)
    md_path = write_text(out_dir / "report.md", markdown)
    html_path = write_text(out_dir / "report.html", markdown_to_html(markdown, out_dir, title))
    return ReportResult(md_path, html_path, images, inputs.chosen.number)
