"""What the report says, read from stored measurements: the inputs, trial facts, savings, technique rows."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from udacisense.common.errors import UserError
from udacisense.search.front import pareto_trials, pick, trials_table
from udacisense.search.hypervolume import hypervolume
from udacisense.search.records import EARLY_STOPS, Attr, StopReason, stop_reason
from udacisense.search.study import StudyConfig


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


def load_inputs(study: StudyConfig, storage: str | None, trial_number: int | None) -> Inputs:
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
    card_path = study.run_dir / "export" / "model_card.json"
    exported = _read_card(card_path, study, trials)
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
        chosen, note = _default_choice(study, trials, front, exported)
    techniques_path = study.run_dir / "techniques" / "techniques.csv"
    techniques = None
    if techniques_path.is_file():
        try:
            techniques = pd.read_csv(techniques_path)
        except (OSError, ValueError, pd.errors.ParserError):
            techniques = None
    card = exported if exported is not None and exported.get("trial") == chosen.number else None
    return Inputs(study, _storage_label(url), metrics, metrics_path, optuna_study, trials, complete, front, everything,
                  chosen, note, techniques, techniques_path, card, card_path)


def _read_card(card_path: Path, study: StudyConfig, trials: Sequence[FrozenTrial]) -> dict[str, Any] | None:
    """The export folder's model card when it belongs to a completed trial of this study, else None."""
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    number = card.get("trial")
    belongs = card.get("name") == f"{study.name}-trial-{number}"
    complete = any(t.number == number and t.state is TrialState.COMPLETE for t in trials)
    return card if belongs and complete else None


def _default_choice(study: StudyConfig, trials: Sequence[FrozenTrial], front: pd.DataFrame,
                    exported: dict[str, Any] | None) -> tuple[FrozenTrial, str]:
    """The exported trial when there is one (it was picked on a re-timed front, so its figures are the
    better ones), otherwise the study's pick policy on the stored front."""
    if exported is not None:
        number = int(exported["trial"])
        how = exported.get("picked_by", "an earlier `udacisense export`")
        return next(t for t in trials if t.number == number), f"the exported model, chosen by {how}"
    policy = study.search.default_pick
    try:
        number = pick(front, policy)
        note = f"the study's default pick policy `{policy}` on the Pareto front"
    except UserError:
        number = pick(front, "knee")
        note = (f"the `knee` policy, because the study's default policy `{policy}` needs a front point "
                "that meets all targets and there is none")
    return next(t for t in trials if t.number == number), note


def family(trial: FrozenTrial) -> str:
    """A trial's pipeline family: the set of its stage kinds."""
    kinds = sorted({str(s.get("kind")) for s in trial.user_attrs.get(Attr.STAGES, [])})
    return " + ".join(kinds) if kinds else "no stage"


def trial_seconds(trial: FrozenTrial) -> float:
    seconds = trial.user_attrs.get(Attr.SECONDS)
    if seconds is not None:
        return float(seconds)
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return 0.0


STOP_CATEGORIES = {
    StopReason.REJECTED: "rejected before compute (impossible stage order)",
    StopReason.DUPLICATE: "duplicate configuration (not run again)",
    StopReason.OVER_BUDGET: "over budget (another worker took the last trial first; nothing ran)",
    StopReason.BEFORE_TRAINING: "stopped before training (estimated to miss the size or latency target)",
    StopReason.DURING_TRAINING: "stopped early during training (accuracy hopeless)",
}
UNRECORDED = "pruned without a recorded reason"


def prune_category(trial: FrozenTrial) -> str:
    """The report's heading for why ``trial`` stopped, from its recorded stop reason (never its prose)."""
    reason = stop_reason(trial)
    return STOP_CATEGORIES[reason] if reason is not None else UNRECORDED


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
    """Estimate: median seconds of complete trials x pruned trials - seconds the pruned trials spent.

    ``stopped`` and ``saved_by_stopping`` count only trials the early-stopping rules stopped (before
    or during training): rejected orders, duplicates and over-budget trials would never have run.
    """
    complete = [trial_seconds(t) for t in trials if t.state is TrialState.COMPLETE]
    pruned = [t for t in trials if t.state is TrialState.PRUNED]
    median = statistics.median(complete) if complete else 0.0
    by_category: dict[str, dict[str, float]] = {}
    for trial in pruned:
        entry = by_category.setdefault(prune_category(trial), {"trials": 0, "spent": 0.0})
        entry["trials"] += 1
        entry["spent"] += trial_seconds(trial)
    for entry in by_category.values():
        entry["saved"] = median * entry["trials"] - entry["spent"]
    spent = sum(trial_seconds(t) for t in pruned)
    stopped = [t for t in pruned if stop_reason(t) in EARLY_STOPS]
    return {"median_complete": median, "pruned": len(pruned), "spent": spent, "saved": median * len(pruned) - spent,
            "complete_total": sum(complete), "by_category": by_category, "stopped": len(stopped),
            "saved_by_stopping": median * len(stopped) - sum(trial_seconds(t) for t in stopped)}


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
                             as_float(r.get("test_top1")), as_float(r.get("bytes")), float(r["size_ratio"]),
                             as_float(r.get("latency_ms")), float(r["latency_ratio"]),
                             baselines.get(str(r["runtime"]), inputs.baseline_val))
                for _, r in table.iterrows() if r["technique"] != "baseline"]
        return rows, (f"the techniques benchmark `{inputs.techniques_path}` (scripts/techniques.py: every technique "
                      "applied alone to the baseline, accuracy lost measured against the baseline row in the same runtime)")
    rows = []
    for trial in inputs.complete:
        stages = trial.user_attrs.get(Attr.STAGES, [])
        if len(stages) != 1:
            continue
        attrs = trial.user_attrs
        rows.append(TechniqueRow(str(stages[0].get("description", stages[0].get("kind"))), str(attrs.get(Attr.RUNTIME, "")),
                                 float(trial.values[0]), as_float(attrs.get(Attr.TEST, {}).get("top1")),
                                 as_float(attrs.get(Attr.ARTIFACT_BYTES)), float(trial.values[2]),
                                 as_float(attrs.get(Attr.LATENCY, {}).get("median_ms")), float(trial.values[1]),
                                 inputs.baseline_val, trial.number))
    source = ("the search's completed single-stage trials (no techniques benchmark at "
              f"`{inputs.techniques_path}`; run `scripts/techniques.py --study ...` for every technique on equal terms)")
    return rows, source


def as_float(value: object) -> float | None:
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


def stage_steps(inputs: Inputs) -> list[dict[str, Any]]:
    """The chosen model after each stage: baseline first, then every stage, then the shipped artifact."""
    metrics, trial = inputs.metrics, inputs.chosen
    state = metrics["size"]["state_dict"]
    steps = [{"label": "baseline", "what": "trained baseline (float)", "seconds": None,
              "val_top1": inputs.baseline_val, "bytes": state["bytes"], "form": "float",
              "parameters": state.get("parameters"), "nonzero_parameters": state.get("nonzero_parameters"),
              "flops": metrics["flops"]["flops"]}]
    for i, stage in enumerate(trial.user_attrs.get(Attr.STAGES, []), start=1):
        m = stage.get("metrics", {})
        steps.append({"label": f"{i}. {stage.get('kind')}", "what": stage.get("description", ""),
                      "seconds": stage.get("seconds"), "val_top1": m.get("val_top1"), "bytes": m.get("state_dict_bytes"),
                      "form": m.get("form"), "parameters": m.get("parameters"),
                      "nonzero_parameters": m.get("nonzero_parameters"), "flops": m.get("flops")})
    return steps


def chosen_facts(inputs: Inputs) -> dict[str, Any]:
    trial, metrics = inputs.chosen, inputs.metrics
    attrs = trial.user_attrs
    runtime = attrs.get(Attr.RUNTIME, "")
    acc, latency_ratio, size_ratio = trial.values
    artifact_bytes = attrs.get(Attr.ARTIFACT_BYTES)
    baseline_bytes = metrics["size"].get(runtime, {}).get("bytes")
    if baseline_bytes is None and artifact_bytes:
        baseline_bytes = artifact_bytes / size_ratio
    return {
        "runtime": runtime, "val": acc, "latency_ratio": latency_ratio, "size_ratio": size_ratio,
        "test": attrs.get(Attr.TEST, {}).get("top1"), "bytes": artifact_bytes, "baseline_bytes": baseline_bytes,
        "latency_ms": attrs.get(Attr.LATENCY, {}).get("median_ms"),
        "baseline_latency_ms": attrs.get(Attr.REFERENCE_LATENCY, {}).get("median_ms"),
        "meets_accuracy": acc >= inputs.floor, "meets_latency": latency_ratio <= inputs.max_latency_ratio,
        "meets_size": size_ratio <= inputs.max_size_ratio,
    }

