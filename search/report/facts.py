"""What the report says, read from stored measurements: the inputs, trial facts, savings, technique rows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from udacisense.common.errors import UserError
from udacisense.evaluators.evidence import ClassDifference, SplitEvidence, resolved_class_drops
from udacisense.evaluators.intervals import Interval, wilson
from udacisense.search.results.export import CARD_NAME
from udacisense.search.results.front import (
    TIMINGS,
    knee,
    pick,
    shown_tables,
)
from udacisense.search.study.baseline_profile import FILE_NAME, BaselineProfile
from udacisense.search.study.config import StudyConfig
from udacisense.search.study.records import StudyAttr, StudyRecord
from udacisense.search.study.trial_record import TrialRecord, records


@dataclass
class Inputs:
    study: StudyConfig
    storage_label: str
    profile: BaselineProfile
    optuna_study: optuna.Study
    trials: list[TrialRecord]
    complete: list[TrialRecord]
    front: pd.DataFrame
    everything: pd.DataFrame
    chosen: TrialRecord
    choice_note: str
    techniques: pd.DataFrame | None  # the techniques benchmark stored with the study; None when it never ran
    card: dict[str, Any] | None
    # The export folder holding the card's artifact on this machine; None when only the storage has the card.
    card_dir: Path | None
    notes: list[str] = field(default_factory=list)

    @property
    def baseline_val(self) -> float:
        return self.profile.val_top1

    @property
    def floor(self) -> float:
        return self.baseline_val - self.study.targets.max_accuracy_drop

    @property
    def max_latency_ratio(self) -> float:
        return self.study.targets.max_latency_ratio

    @property
    def max_size_ratio(self) -> float:
        return self.study.targets.max_size_ratio

    def trial(self, number: int) -> TrialRecord:
        return next(t for t in self.trials if t.number == number)


def _storage_label(url: str) -> str:
    return url.split("@")[-1] if "@" in url else url


def load_inputs(study: StudyConfig, storage: str | None, trial_number: int | None) -> Inputs:
    from udacisense.search.study.storage import open_study

    url = storage or study.storage_url
    optuna_study = open_study(study, storage, read_only=True)
    profile = BaselineProfile.of_study(optuna_study, study.run_dir / "baseline" / FILE_NAME)
    trials = optuna_study.get_trials(deepcopy=False)
    complete = [t for t in trials if TrialRecord.of(t).is_measured]  # screened trials' estimates are no result
    if not complete:
        raise UserError(f"The study {study.name!r} has no measured trials ({len(trials)} trial(s) in total), "
                        "so there is nothing to report on.", "run `udacisense search --study ...` until trials complete.")
    exported, card_dir = _exported_card(optuna_study, study, trials)
    front, everything = shown_tables(trials, study.targets, profile.val_top1, exported,
                                     StudyRecord.of(optuna_study).retimed_front)
    if trial_number is not None:
        match = [t for t in trials if t.number == trial_number]
        if not match:
            raise UserError(f"The study has no trial {trial_number} (it has {len(trials)}).",
                            "pick a number from `udacisense front`.")
        if not TrialRecord.of(match[0]).is_measured:
            state = "screened on estimates" if TrialRecord.of(match[0]).has_values else match[0].state.name.lower()
            raise UserError(f"Trial {trial_number} is {state}, not measured; it has no measurements.",
                            "pick a measured trial from `udacisense front`.")
        chosen, note = match[0], f"trial {trial_number}, chosen with `--trial`"
    else:
        chosen, note = _default_choice(study, trials, front, exported)
    # From the storage only, never runs/<name>/techniques/techniques.csv: a report made from a copy of the
    # database says what the original says.
    stored_techniques = StudyRecord.of(optuna_study).techniques
    techniques = None if stored_techniques is None else pd.DataFrame(stored_techniques)
    card = exported if exported is not None and exported.get("trial") == chosen.number else None
    return Inputs(study, _storage_label(url), profile, optuna_study, records(trials), records(complete),
                  front, everything, TrialRecord.of(chosen), note, techniques, card, card_dir)


def _exported_card(optuna_study: optuna.Study, study: StudyConfig,
                   trials: Sequence[FrozenTrial]) -> tuple[dict[str, Any] | None, Path | None]:
    """The latest export's model card (stored with the study; for a study exported before it was, the card in
    ``runs/<name>/export``) when it belongs to a completed trial of this study, and the local export folder
    holding its artifact when this machine has it."""
    local_path = study.run_dir / "export" / CARD_NAME
    try:
        local = json.loads(local_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        local = None
    card = StudyRecord.of(optuna_study).exported_card or local
    if card is None:
        return None, None
    number = card.get("trial")
    belongs = card.get("name") == f"{study.name}-trial-{number}"
    complete = any(t.number == number and t.state is TrialState.COMPLETE for t in trials)
    if not (belongs and complete):
        return None, None
    return card, local_path.parent if local is not None and local.get("sha256") == card.get("sha256") else None


def _default_choice(study: StudyConfig, trials: Sequence[FrozenTrial], front: pd.DataFrame,
                    exported: dict[str, Any] | None) -> tuple[FrozenTrial, str]:
    """The exported trial when there is one (it was picked on a re-timed front, so its figures are the
    better ones), otherwise the study's pick policy on the front with its latest timings."""
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
        policy = "knee"
    on_validation = knee(front, study.targets).note if policy == "knee" else None
    if on_validation is not None:
        note += f"; {on_validation}"
    return next(t for t in trials if t.number == number), note


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
        return rows, (f"the techniques benchmark stored with the study (study attribute `{StudyAttr.TECHNIQUES.value}`, "
                      "written by scripts/techniques.py: every technique applied alone to the baseline, accuracy lost "
                      "measured against the baseline row in the same runtime)")
    rows = []
    for trial in inputs.complete:
        stages = trial.stages
        if len(stages) != 1:
            continue
        rows.append(TechniqueRow(str(stages[0].get("description", stages[0].get("kind"))), trial.runtime,
                                 trial.val_accuracy, trial.test_top1, as_float(trial.artifact_bytes), trial.size_ratio,
                                 trial.latency_ms, trial.latency_ratio, inputs.baseline_val, trial.number))
    source = ("the search's completed single-stage trials (no techniques benchmark stored with the study; run "
              "`scripts/techniques.py --study ...` for every technique on equal terms: it stores its table with the study)")
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


@dataclass(frozen=True)
class ChosenFacts:
    """The chosen model's figures and verdicts, all from one source (``source``): its exported model card when
    the latest export is this trial, else its front row with its latest timing (re-timed before the latest
    pick, else the search's own single run, which has no interval)."""

    source: str
    timing: str  # a TIMINGS key
    runtime: str
    reference_runtime: str
    val_top1: float  # the selection score: biased upwards in a chosen trial
    val: SplitEvidence | None
    test_top1: float | None  # the headline: test images never select
    test: SplitEvidence | None
    latency_ms: float | None
    reference_latency_ms: float | None
    latency_ratio: float
    latency_ratio_ci95: Interval | None
    latency_blocks: int
    bytes: int | None
    baseline_bytes: int | None  # the float baseline's artifact in the reference runtime: the size ratio's denominator
    size_ratio: float
    meets: dict[str, bool]  # what a pick selects on: accuracy (validation at or above the floor), latency, size, parity
    verdicts: dict[str, str | None]  # accuracy (paired test drop), latency, size: see search.evidence.verdict
    meets_targets: bool

    @property
    def timing_note(self) -> str:
        """Where the latency figures come from and what their interval covers."""
        if self.timing == "search":
            return "search-time, one timing run, so no interval across runs"
        if self.latency_ratio_ci95 is None:
            return f"{TIMINGS[self.timing]}, one timing block, so no interval across runs"
        return f"{TIMINGS[self.timing]}, 95% interval across {self.latency_blocks} independent timing blocks"

    @property
    def missed(self) -> list[str]:
        """The targets missed: on a verdict (test accuracy, latency, size) or on what the pick selects on."""
        names = [name for name in ("size", "latency", "accuracy")
                 if not self.meets[name] or self.verdicts.get(name) == "missed"]
        return names + ([] if self.meets["parity"] else ["parity"])

    @property
    def uncertain(self) -> list[str]:
        """The targets met on the point estimate only (or, for accuracy, without paired evidence to judge it)."""
        return [name for name in ("size", "latency", "accuracy")
                if name not in self.missed and self.verdicts.get(name) != "met"]

    @property
    def ships(self) -> bool:
        return self.meets_targets and not self.missed


def _interval(value: Any) -> Interval | None:
    return (float(value[0]), float(value[1])) if isinstance(value, list | tuple) and len(value) == 2 else None


def _evidence(document: Any, fallback: SplitEvidence | None) -> SplitEvidence | None:
    return SplitEvidence.from_dict(document) if isinstance(document, dict) else fallback


def chosen_facts(inputs: Inputs) -> ChosenFacts:
    trial, card = inputs.chosen, inputs.card
    row = inputs.everything[inputs.everything["trial"] == trial.number].iloc[0]
    reference = trial.reference_runtime or inputs.study.evaluation.reference_runtime
    baseline_size = inputs.profile.size(reference)
    searched = ChosenFacts(
        source="the search's measurements of its artifact",
        timing=str(row["timing"]), runtime=trial.runtime, reference_runtime=reference, val_top1=trial.val_accuracy,
        val=trial.evidence("val"), test_top1=trial.test_top1, test=trial.evidence("test"),
        latency_ms=as_float(row["latency_ms"]), reference_latency_ms=as_float(row["reference_latency_ms"]),
        latency_ratio=float(row["latency_ratio"]), latency_ratio_ci95=_interval(row["latency_ratio_ci95"]),
        latency_blocks=int(row["latency_blocks"]), bytes=trial.artifact_bytes,
        baseline_bytes=None if baseline_size is None else baseline_size.bytes, size_ratio=trial.size_ratio,
        meets={name: bool(row[f"meets_{name}"]) for name in ("accuracy", "latency", "size")} | {"parity": bool(row["parity_ok"])},
        verdicts={name: row[f"verdict_{name}"] for name in ("accuracy", "latency", "size")},
        meets_targets=bool(row["meets_all"]))
    if card is None:
        return searched
    # The card's latency is already the row's (``search.front.with_latest_timings``); the rest is read from the card itself.
    metrics, targets = card.get("metrics", {}), card.get("targets", {})
    evidence = metrics.get("accuracy_evidence") or {}
    constraints = {str(k): float(v) <= 0 for k, v in targets.get("constraints", {}).items()}
    meets = {name: constraints.get(name, met) for name, met in searched.meets.items()}
    return replace(
        searched, source="those of its model card (the latest `udacisense export`)",
        val_top1=float(metrics.get("val_top1", searched.val_top1)), val=_evidence(evidence.get("val"), searched.val),
        test_top1=as_float(metrics.get("test_top1", searched.test_top1)), test=_evidence(evidence.get("test"), searched.test),
        bytes=card.get("bytes", searched.bytes), baseline_bytes=metrics.get("baseline", {}).get("bytes", searched.baseline_bytes),
        size_ratio=float(metrics.get("size_ratio_to_baseline", searched.size_ratio)), meets=meets,
        # Cards from before verdicts were recorded: the same judgement, made on the same figures.
        verdicts=targets.get("verdicts") or searched.verdicts,
        meets_targets=bool(targets.get("meets_targets", all(meets.values()))))


def baseline_ci95(profile: BaselineProfile, split: str) -> Interval | None:
    """The baseline's top-1 interval on ``split``; None when its per-image results were not stored."""
    if not profile.records_correctness:
        return None
    correct = profile.correct(split)
    return wilson(int(correct.sum()), correct.numel()) if correct.numel() else None


@dataclass(frozen=True)
class ClassAccuracy:
    """One class's test accuracy, baseline against the chosen model, with 95% (Wilson) intervals when the
    per-image results are stored."""

    name: str
    images: int | None
    baseline: float
    baseline_ci95: Interval | None
    chosen: float | None
    chosen_ci95: Interval | None
    resolvably_worse: bool  # the chosen model is worse on it beyond noise (see ``resolved_class_drops``)


@dataclass(frozen=True)
class ClassComparison:
    classes: list[ClassAccuracy]
    worse: list[ClassDifference]  # the classes resolvably worse, worst first; empty without per-image results
    paired: bool  # both stored their per-image results: the intervals and ``worse`` could be computed
    images: int | None  # test images in all

    def name(self, difference: ClassDifference) -> str:
        return self.classes[difference.index].name


def class_comparison(inputs: Inputs) -> ClassComparison:
    """Per-class test accuracy of the baseline and the chosen model, from the per-image results where both stored
    them (with intervals, and the classes the chosen model is resolvably worse on), else the stored accuracies."""
    profile, trial = inputs.profile, inputs.chosen
    names = profile.classes or [str(i) for i in range(len(profile.test_per_class))]
    labels, chosen_correct = profile.test_labels, trial.correct("test")
    base_correct = profile.correct("test") if profile.records_correctness else None
    if base_correct is None or chosen_correct is None or not labels.shape == base_correct.shape == chosen_correct.shape:
        chosen = trial.test_per_class
        return ClassComparison([ClassAccuracy(name, None, base, None, chosen[i] if i < len(chosen) else None, None, False)
                                for i, (name, base) in enumerate(zip(names, profile.test_per_class))], [], False,
                               profile.training.test_samples)
    worse = resolved_class_drops(chosen_correct, base_correct, labels, len(names))
    rows = []
    for index, name in enumerate(names):
        members = labels == index
        n, base_hits, chosen_hits = int(members.sum()), int(base_correct[members].sum()), int(chosen_correct[members].sum())
        rows.append(ClassAccuracy(name, n, base_hits / n if n else float("nan"), wilson(base_hits, n) if n else None,
                                  chosen_hits / n if n else None, wilson(chosen_hits, n) if n else None,
                                  any(c.index == index for c in worse)))
    return ClassComparison(rows, worse, True, int(labels.numel()))
