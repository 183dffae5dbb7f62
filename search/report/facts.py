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
from udacisense.search.baseline_profile import FILE_NAME, BaselineProfile
from udacisense.search.front import pareto_trials, pick, trials_table
from udacisense.search.hypervolume import hypervolume
from udacisense.search.records import EARLY_STOPS, StopReason, TrialRecord, records
from udacisense.search.study import StudyConfig


@dataclass
class Inputs:
    study: StudyConfig
    storage_label: str
    profile: BaselineProfile
    metrics_path: Path
    optuna_study: optuna.Study
    trials: list[TrialRecord]
    complete: list[TrialRecord]
    front: pd.DataFrame
    everything: pd.DataFrame
    chosen: TrialRecord
    choice_note: str
    techniques: pd.DataFrame | None
    techniques_path: Path
    card: dict[str, Any] | None
    card_path: Path
    notes: list[str] = field(default_factory=list)

    @property
    def baseline_val(self) -> float:
        return self.profile.val_top1

    @property
    def floor(self) -> float:
        return self.baseline_val - self.study.targets.max_accuracy_drop

    @property
    def max_latency_ratio(self) -> float:
        return 1 - self.study.targets.latency_reduction

    @property
    def max_size_ratio(self) -> float:
        return 1 - self.study.targets.size_reduction

    def trial(self, number: int) -> TrialRecord:
        return next(t for t in self.trials if t.number == number)


def _storage_label(url: str) -> str:
    return url.split("@")[-1] if "@" in url else url


def load_inputs(study: StudyConfig, storage: str | None, trial_number: int | None) -> Inputs:
    from udacisense.search.storage import open_study

    metrics_path = study.run_dir / "baseline" / FILE_NAME
    profile = BaselineProfile.load(metrics_path)
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
    front = trials_table(pareto_trials(complete), study.targets, profile.val_top1)
    everything = trials_table(complete, study.targets, profile.val_top1)
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
    return Inputs(study, _storage_label(url), profile, metrics_path, optuna_study, records(trials), records(complete),
                  front, everything, TrialRecord.of(chosen), note, techniques, techniques_path, card, card_path)


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
        number = pick(front, policy, study.targets)
        note = f"the study's default pick policy `{policy}` on the Pareto front"
    except UserError:
        number = pick(front, "knee", study.targets)
        note = (f"the `knee` policy, because the study's default policy `{policy}` needs a front point "
                "that meets all targets and there is none")
    return next(t for t in trials if t.number == number), note


def family(trial: TrialRecord) -> str:
    """A trial's pipeline family: the set of its stage kinds."""
    kinds = sorted(trial.stage_kinds)
    return " + ".join(kinds) if kinds else "no stage"


STOP_CATEGORIES = {
    StopReason.REJECTED: "rejected before compute (impossible stage order)",
    StopReason.DUPLICATE: "duplicate configuration (not run again)",
    StopReason.OVER_BUDGET: "over budget (another worker took the last trial first; nothing ran)",
    StopReason.BEFORE_TRAINING: "stopped before training (estimated to miss the size or latency target)",
    StopReason.DURING_TRAINING: "stopped early during training (accuracy hopeless)",
    StopReason.BELOW_FLOOR: "stopped after training, before lowering (clearly below the accuracy floor)",
}
UNRECORDED = "pruned without a recorded reason"


def prune_category(trial: TrialRecord) -> str:
    """The report's heading for why ``trial`` stopped, from its recorded stop reason (never its prose)."""
    reason = trial.stop_reason
    return STOP_CATEGORIES[reason] if reason is not None else UNRECORDED


def state_counts(trials: Sequence[TrialRecord]) -> dict[str, int]:
    counts = Counter(t.state.name.lower() for t in trials)
    return {name: counts.get(name, 0) for name in ("complete", "pruned", "fail", "running", "waiting")}


def hypervolume_history(trials: Sequence[TrialRecord]) -> list[tuple[int, float]]:
    """(trial number, hypervolume of all trials completed up to it) for every completed trial."""
    history, points = [], []
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.has_values:
            points.append(list(trial.values))
            history.append((trial.number, hypervolume(points)))
    return history


def early_stopping_savings(trials: Sequence[TrialRecord]) -> dict[str, Any]:
    """Estimate: median seconds of complete trials x pruned trials - seconds the pruned trials spent.

    ``stopped`` and ``saved_by_stopping`` count only trials the early-stopping rules stopped (before
    or during training): rejected orders, duplicates and over-budget trials would never have run.
    """
    complete = [t.seconds for t in trials if t.state is TrialState.COMPLETE]
    pruned = [t for t in trials if t.state is TrialState.PRUNED]
    median = statistics.median(complete) if complete else 0.0
    by_category: dict[str, dict[str, float]] = {}
    for trial in pruned:
        entry = by_category.setdefault(prune_category(trial), {"trials": 0, "spent": 0.0})
        entry["trials"] += 1
        entry["spent"] += trial.seconds
    for entry in by_category.values():
        entry["saved"] = median * entry["trials"] - entry["spent"]
    spent = sum(t.seconds for t in pruned)
    stopped = [t for t in pruned if t.stop_reason in EARLY_STOPS]
    return {"median_complete": median, "pruned": len(pruned), "spent": spent, "saved": median * len(pruned) - spent,
            "complete_total": sum(complete), "by_category": by_category, "stopped": len(stopped),
            "saved_by_stopping": median * len(stopped) - sum(t.seconds for t in stopped)}



# Stage kinds whose phase is (mostly) gradient steps; the others calibrate, convert or rewrite.
TRAINING_KINDS = frozenset({"distill", "prune", "gradual", "channels", "resolution", "qat"})


@dataclass(frozen=True)
class PhaseTotal:
    name: str  # a measuring phase (lowering, latency, ...) or `stage: <kind>`
    seconds: float  # summed over every finished trial that recorded phases
    trials: int  # trials in which the phase ran
    training: bool

    def share(self, total: float) -> float:
        return self.seconds / total if total else 0.0


def phase_totals(trials: Sequence[TrialRecord]) -> list[PhaseTotal]:
    """Seconds per phase over the finished trials, stages grouped by kind, largest first.

    Pruned trials count too: their compute was spent. A stage's seconds include its validation
    passes only where the stage itself measured them; the per-stage `validation` phase is separate.
    """
    seconds: dict[str, float] = {}
    present: Counter[str] = Counter()
    for trial in trials:
        if not trial.state.is_finished():
            continue
        for name, value in trial.phase_seconds.items():
            # Stage phases are named `stage <index> <kind>`: the kind is what is comparable across trials.
            key = f"stage: {name.split(' ', 2)[2]}" if name.startswith("stage ") and name.count(" ") >= 2 else name
            seconds[key] = seconds.get(key, 0.0) + float(value)
            present[key] += 1
    return [PhaseTotal(name, value, present[name], name.startswith("stage: ") and name[7:] in TRAINING_KINDS)
            for name, value in sorted(seconds.items(), key=lambda item: -item[1])]


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
        stages = trial.stages
        if len(stages) != 1:
            continue
        rows.append(TechniqueRow(str(stages[0].get("description", stages[0].get("kind"))), trial.runtime,
                                 trial.val_accuracy, trial.test_top1, as_float(trial.artifact_bytes), trial.size_ratio,
                                 trial.latency_ms, trial.latency_ratio, inputs.baseline_val, trial.number))
    source = ("the search's completed single-stage trials (no techniques benchmark at "
              f"`{inputs.techniques_path}`; run `scripts/techniques.py --study ...` for every technique on equal terms)")
    return rows, source


def as_float(value: Any) -> float | None:  # a stored JSON or CSV value: a number, a string or null
    try:
        result = float(value)
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
    profile, trial = inputs.profile, inputs.chosen
    state = profile.sizes["state_dict"]
    steps = [{"label": "baseline", "what": "trained baseline (float)", "seconds": None,
              "val_top1": inputs.baseline_val, "bytes": state.bytes, "form": "float",
              "parameters": state.parameters, "nonzero_parameters": state.nonzero_parameters,
              "flops": profile.flops}]
    for i, stage in enumerate(trial.stages, start=1):
        m = stage.get("metrics", {})
        steps.append({"label": f"{i}. {stage.get('kind')}", "what": stage.get("description", ""),
                      "seconds": stage.get("seconds"), "val_top1": m.get("val_top1"), "bytes": m.get("state_dict_bytes"),
                      "form": m.get("form"), "parameters": m.get("parameters"),
                      "nonzero_parameters": m.get("nonzero_parameters"), "flops": m.get("flops")})
    return steps


def chosen_facts(inputs: Inputs) -> dict[str, Any]:
    trial = inputs.chosen
    acc, latency_ratio, size_ratio = trial.val_accuracy, trial.latency_ratio, trial.size_ratio
    artifact_bytes = trial.artifact_bytes
    baseline_size = inputs.profile.size(trial.runtime)
    baseline_bytes: float | None = baseline_size.bytes if baseline_size is not None else None
    if baseline_bytes is None and artifact_bytes:
        baseline_bytes = artifact_bytes / size_ratio
    return {
        "runtime": trial.runtime, "val": acc, "latency_ratio": latency_ratio, "size_ratio": size_ratio,
        "test": trial.test_top1, "bytes": artifact_bytes, "baseline_bytes": baseline_bytes,
        "latency_ms": trial.latency_ms, "baseline_latency_ms": trial.reference_latency_ms,
        "meets_accuracy": acc >= inputs.floor, "meets_latency": latency_ratio <= inputs.max_latency_ratio,
        "meets_size": size_ratio <= inputs.max_size_ratio,
    }

