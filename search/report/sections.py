"""The report's sections as Markdown lines, written from the facts and figures."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from optuna.trial import TrialState

from udacisense.common.files import sha256_of
from udacisense.evaluators.intervals import wilson
from udacisense.search.budget import is_rejected
from udacisense.search.front import TIMINGS
from udacisense.search.hypervolume import HV_REFERENCE
from udacisense.search.records import StopReason, TrialRecord
from udacisense.search.report.facts import (
    OUTCOMES,
    STOP_CATEGORIES,
    UNRECORDED,
    ChosenFacts,
    EarlyStoppingSavings,
    Inputs,
    PhaseTotal,
    TechniqueRow,
    as_float,
    baseline_ci95,
    best_technique,
    chosen_facts,
    class_comparison,
    family,
    operator_latency_fit,
    operator_trials,
    prune_category,
    reduction_per_point,
    state_counts,
    technique_rows,
    trial_outcome,
)
from udacisense.search.report.figures import FIGURES
from udacisense.search.report.format import (
    fmt_acc,
    fmt_acc_ci,
    fmt_bytes,
    fmt_change,
    fmt_drop_ci,
    fmt_faster,
    fmt_int,
    fmt_millions,
    fmt_ms,
    fmt_points,
    fmt_points_ci,
    fmt_ratio,
    fmt_ratio_ci,
    fmt_seconds,
    fmt_verdict,
    fmt_verdict_mark,
    md_table,
)
from udacisense.search.screening import ACCURATE_WITHIN, ScreeningSummary, model_errors
from udacisense.spaces.families import FAMILY_OF_KIND


def _nan(value: float | None) -> float:
    """A measurement a trial may lack, as NaN for formatting."""
    return float("nan") if value is None else value


def _or_na(value: object) -> object:
    return "n/a" if value is None else value


def _or_blank(value: object) -> object:
    return "" if value is None else value


def _bytes(value: float | None) -> str:
    return "n/a" if value is None else f"{fmt_bytes(value)} ({fmt_int(value)} B)"


def _list(value: Any) -> list[float] | None:
    """A stored interval (a [low, high] list), or None where a row has none."""
    return value if isinstance(value, list) else None


def _ms(value: float | None) -> str:
    return "n/a" if value is None else fmt_ms(value)


def _efficiency_text(row: TechniqueRow, column: str) -> str:
    per_point = reduction_per_point(getattr(row, column), row.lost)
    if per_point is None:
        return "no accuracy lost"
    return f"{per_point:.1f}% per point"


def _targets_sentence(f: ChosenFacts) -> str:
    """Whether the chosen model meets its targets, in one sentence: the same judgement as its model card's."""
    if f.missed:
        text = f"**It misses the {' and '.join(f.missed)} target{'s' if len(f.missed) > 1 else ''}.**"
        if f.meets_targets:
            text += (" (What the pick selects on is met: validation accuracy, the selection score, is above the floor; "
                     "but on the held-out test images the accuracy drop is beyond the allowance.)")
        return text
    if not f.uncertain:
        return "**It meets all three targets with confidence** (every 95% interval lies inside its allowance)."
    return (f"**It meets all three targets, the {' and '.join(f.uncertain)} on the point estimate only**: the measured "
            "value is inside the allowance, but its 95% interval reaches past it (or there is no interval).")


def intervals_paragraph(inputs: Inputs, f: ChosenFacts) -> str:
    """What the intervals mean and why a test set of this size cannot resolve one point: for a newcomer."""
    text = ("**How sure these numbers are.** Every accuracy here was counted on a limited set of images, so it is an "
            "estimate; the bracket after it is its 95% interval, the range that holds the model's true accuracy on "
            "images like these in 19 studies out of 20. ")
    n = f.test.images if f.test is not None else inputs.profile.training.test_samples
    base = inputs.profile.test_top1
    if n:
        low, high = wilson(round(base * n), n)
        text += (f"On {fmt_int(n)} test images, an accuracy near {fmt_acc(base)} (the baseline's) is known to about "
                 f"±{100 * (high - low) / 2:.1f} points, so two models scored separately cannot be told apart unless "
                 "they differ by more than that. ")
    text += ("Scoring both models on the same images (a paired comparison) does better: the images both get right, or "
             "both get wrong, say nothing about which is better; only those where they disagree do. ")
    if f.test is not None:
        disagree = round((1 - f.test.agreement) * f.test.images)
        low, high = f.test.drop_ci95
        text += (f"The chosen model and the baseline disagree on {fmt_int(disagree)} of the {fmt_int(f.test.images)} test "
                 f"images, which leaves its accuracy drop known to ±{100 * (high - low) / 2:.1f} points "
                 f"({fmt_points_ci(f.test.drop_ci95)}). ")
    text += ("A one-point difference is resolved only when that paired interval is narrower than ±1 point, which takes "
             "two models that disagree on very few images, or many more test images. A target is *met with confidence* "
             "when the whole interval lies inside its allowance, *met on the point estimate only* when the measured value "
             "is inside but the interval reaches past it, and *missed* when the measured value is outside. Test accuracy "
             "judges, because no test image was used to choose; validation accuracy chose this model among many noisy "
             "candidates, so its validation score is likely a little high. Latency intervals come from timing the model "
             "against the baseline in several independent blocks; a single timing run has none.")
    return text


def section_summary(inputs: Inputs) -> list[str]:
    f = chosen_facts(inputs)
    targets = inputs.study.targets
    trial, profile = inputs.chosen, inputs.profile
    lines = ["## Executive summary", ""]
    lines.append(f"The recommended model is **trial {trial.number}**: `{trial.pipeline}`, "
                 f"shipped in the {f.runtime} runtime. It was selected by {inputs.choice_note}. Its figures are "
                 f"{f.source}; latency: {f.timing_note}.")
    lines.append("")
    test = f.test
    test_row = ["test top-1 (held out: the headline)", fmt_acc_ci(profile.test_top1, baseline_ci95(profile, "test")),
                "n/a" if f.test_top1 is None else fmt_acc_ci(f.test_top1, None if test is None else test.top1_ci95),
                "n/a" if test is None else f"drop {fmt_points(test.drop)}, paired 95% interval {fmt_points_ci(test.drop_ci95)}",
                f"drop ≤ {100 * targets.max_accuracy_drop:.1f} points", fmt_verdict(f.verdicts.get("accuracy"))]
    lines += md_table(
        ["measure", "baseline", "chosen model", "change", "target", "verdict"],
        [
            test_row,
            ["validation top-1 (the selection score)", fmt_acc_ci(inputs.baseline_val, baseline_ci95(profile, "val")),
             fmt_acc_ci(f.val_top1, None if f.val is None else f.val.top1_ci95), fmt_points(f.val_top1 - inputs.baseline_val),
             f"≥ {fmt_acc(max(inputs.floor, 0.0))}, the floor searched for", "above the floor" if f.meets["accuracy"]
             else "**below the floor**"],
            ["artifact size", f"{_bytes(f.baseline_bytes)} in {f.reference_runtime}", _bytes(f.bytes),
             f"ratio {fmt_ratio(f.size_ratio)} ({fmt_change(f.size_ratio)})",
             f"ratio ≤ {fmt_ratio(inputs.max_size_ratio)} (at least {100 * targets.size_reduction:.0f}% smaller)",
             fmt_verdict(f.verdicts.get("size"))],
            ["latency (median, batch 1, CPU)", f"{_ms(f.reference_latency_ms)} in {f.reference_runtime}", _ms(f.latency_ms),
             f"ratio {fmt_ratio_ci(f.latency_ratio, f.latency_ratio_ci95)} ({fmt_faster(f.latency_ratio)})",
             f"ratio ≤ {fmt_ratio(inputs.max_latency_ratio)} (at least {100 * targets.latency_reduction:.0f}% faster)",
             fmt_verdict(f.verdicts.get("latency"))],
        ],
    )
    words = (f"In plain words: the compressed model's file is {fmt_change(f.size_ratio)} than the original "
             f"(the goal was at least {100 * targets.size_reduction:.0f}% smaller), it answers "
             f"{fmt_faster(f.latency_ratio)} (one image at a time on CPU, in the {f.runtime} runtime) "
             f"(goal: at least {100 * targets.latency_reduction:.0f}% faster)")
    if f.test_top1 is not None:
        words += (f", and it recognises {fmt_acc(f.test_top1)} of the test images, never used during the search, against "
                  f"{fmt_acc(profile.test_top1)} for the original (allowed drop: {100 * targets.max_accuracy_drop:.1f} points)")
    words += ". " + _targets_sentence(f)
    feasible = int(inputs.everything["meets_all"].sum())
    words += (f" Of {len(inputs.complete)} completed candidate(s), {feasible} met all targets on the figures a pick "
              f"compares ({int(inputs.front['meets_all'].sum())} of them on the Pareto front of {len(inputs.front)}).")
    lines += [words, "", intervals_paragraph(inputs, f), ""]
    return lines


def section_baseline(inputs: Inputs) -> list[str]:
    profile, model = inputs.profile, inputs.study.model
    train = profile.training
    lines = ["## Baseline analysis", "",
             f"Source: {inputs.profile.source}.", ""]
    lines += md_table(["property", "value"], [
        ["architecture", f"{model.arch}, width multiplier {model.width_mult:g}, weights {model.pretrained}"
                         + (f", resized in-model to {model.input_resolution} px" if model.input_resolution else "")],
        ["input", " × ".join(str(d) for d in profile.input_shape)],
        ["classes", f"{len(profile.classes)}: {', '.join(profile.classes)}"],
        ["training", f"{_or_na(train.epochs)} epochs on {_or_na(train.samples)} images "
                     f"({_or_na(train.val_samples)} validation, {_or_na(train.test_samples)} test), "
                     f"{fmt_seconds(profile.train_seconds)}"],
        ["parameters", f"{fmt_int(profile.parameters)} ({fmt_int(profile.nonzero_parameters)} non-zero)"],
        ["compute per image", f"{fmt_millions(profile.flops)}FLOPs, {fmt_millions(profile.macs)}MACs"],
        ["peak memory (batch-1 eager forward)", f"{fmt_bytes(profile.peak_memory_bytes)} "
                                                f"({fmt_int(profile.peak_memory_bytes)} B)"],
        ["top-1 validation / test", f"{fmt_acc(profile.val_top1)} / {fmt_acc(profile.test_top1)}"],
        ["top-5 validation / test", f"{fmt_acc(profile.val_top5)} / {fmt_acc(profile.test_top5)}"],
    ])
    lines += ["### Size per format", ""]
    lines += md_table(["format", "bytes", "size", "gzip bytes", "gzip / raw"], [
        [name, fmt_int(r.bytes), fmt_bytes(r.bytes), fmt_int(r.gzip_bytes), fmt_ratio(r.gzip_bytes / r.bytes)]
        for name, r in profile.sizes.items()])
    lines += ["### Latency per runtime", ""]
    lines += md_table(["runtime", "median", "p10", "p90", "mean", "runs", "torch / ExecuTorch threads"], [
        [name, fmt_ms(r.median_ms), fmt_ms(r.p10_ms), fmt_ms(r.p90_ms), fmt_ms(r.mean_ms),
         _or_blank(r.runs), f"{r.torch_threads} / {r.executorch_threads}"]
        for name, r in profile.latencies.items()])
    lines += ["### Per-class accuracy", ""]
    classes = profile.classes or [str(i) for i in range(len(profile.test_per_class))]
    lines += md_table(["class", "validation top-1", "test top-1"], [
        [name, fmt_acc(v), fmt_acc(t)] for name, v, t in zip(classes, profile.val_per_class, profile.test_per_class)])
    env = profile.environment
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


def section_search(inputs: Inputs, history: Sequence[tuple[int, float]], savings: EarlyStoppingSavings,
                   phases: Sequence[PhaseTotal]) -> list[str]:
    config = inputs.study.search
    counts = state_counts(inputs.trials)
    names = inputs.optuna_study.metric_names or ["objective 0", "objective 1", "objective 2"]
    directions = [d.name.lower() for d in inputs.optuna_study.directions]
    lines = ["## The search", ""]
    rejected = sum(1 for t in inputs.trials if is_rejected(t.trial))
    budget = f"{config.n_trials} trials" + (f" or {config.timeout_minutes:g} minutes" if config.timeout_minutes else "")
    sampler = config.sampler + (f" (population {config.population_size})" if config.sampler in ("nsga2", "nsga3") else "")
    lines += md_table(["setting", "value"], [
        ["storage", f"`{inputs.storage_label}` (study `{inputs.optuna_study.study_name}`)"],
        ["objectives", ", ".join(f"{n} ({d})" for n, d in zip(names, directions))],
        ["budget", budget],
        ["sampler", sampler],
        ["early stopping", f"on, margin {config.patience_margin:g} below the accuracy floor" if config.early_stopping else "off"],
        ["stage families in the space", ", ".join(inputs.study.space.stages)],
        ["trials", f"{len(inputs.trials)} recorded: {counts['complete']} complete "
                   f"({len(inputs.complete)} measured, {counts['complete'] - len(inputs.complete)} screened), {counts['pruned']} pruned, "
                   f"{counts['fail']} failed" + (f", {counts['running']} running" if counts["running"] else "")
                   + (f", {counts['waiting']} waiting" if counts["waiting"] else "")
                   + (f"; {rejected} of the pruned were impossible orders rejected before compute, which do not count "
                      "against the budget" if rejected else "")],
        ["retries of trials whose worker died", str(sum(1 for t in inputs.trials if t.retry_of is not None))],
    ])
    pruned = [t for t in inputs.trials if t.state is TrialState.PRUNED]
    if pruned:
        lines += ["### Why trials were pruned", ""]
        groups: dict[str, dict[str, list[TrialRecord]]] = {}
        for trial in pruned:
            reason = trial.stop_message
            detail = reason.split(": ", 1)[1] if reason.startswith(("rejected before compute", "stopped before training")) else reason
            key = re.sub(r"\d+(\.\d+)?", "#", detail)
            groups.setdefault(prune_category(trial), {}).setdefault(key, []).append(trial)
        rows = []
        for category, details in groups.items():
            for members in details.values():
                detail = members[0].stop_message or "(none)"
                rows.append([category, len(members), ", ".join(str(t.number) for t in members), detail])
        lines += md_table(["category", "trials", "trial numbers", "reason (first trial of the group)"], rows)
    failed = [t for t in inputs.trials if t.state is TrialState.FAIL]
    if failed:
        lines += ["### Failed trials", ""]
        groups_f: dict[str, list[TrialRecord]] = {}
        for trial in failed:
            error = trial.error or "no error recorded (worker died or was interrupted)"
            groups_f.setdefault(error.split(":", 1)[0], []).append(trial)
        lines += md_table(["error", "trials", "trial numbers", "message (first trial)"], [
            [kind, len(members), ", ".join(str(t.number) for t in members),
             (members[0].error or "no error recorded")[:240]] for kind, members in groups_f.items()])
    lines += ["### Compute and early stopping", ""]
    lines += [f"Completed trials took {fmt_seconds(savings.complete_total)} in total (median "
              f"{fmt_seconds(savings.median_complete)} per trial); the {savings.pruned_count} pruned trial(s) spent "
              f"{fmt_seconds(savings.spent)}.", ""]
    lines += _early_stopping_lines(inputs, savings)
    lines += _screening_lines(inputs)
    lines += _phase_lines(phases)
    lines += ["### Hypervolume", ""]
    final = history[-1][1] if history else 0.0
    ideal = abs(HV_REFERENCE[0] - (-1.0)) * HV_REFERENCE[1] * HV_REFERENCE[2]
    lines += [f"Hypervolume of the measured trials in the space (−accuracy, latency ratio, size ratio) against the "
              f"reference point {HV_REFERENCE}: **{final:.4f}** after trial {history[-1][0]} "
              f"({100 * final / ideal:.1f}% of the box between the reference and a perfect, free model)."
              if history else "No completed trial: no hypervolume.", ""]
    lines += [f"![Hypervolume over trials]({FIGURES['hypervolume']})", ""]
    lines += ["### Pareto front", ""]
    lines += [f"{len(inputs.front)} non-dominated trial(s) among {len(inputs.complete)} measured; "
              f"{int(inputs.front['meets_all'].sum())} meet all targets on the figures a pick compares (validation "
              "accuracy at or above the floor, latency and size ratios within their targets). The chosen trial is "
              "marked ◀. Accuracies carry their 95% interval; the test drop is the baseline's test top-1 minus the "
              "trial's, paired on the same images. Latency is each trial's latest timing: "
              + ", ".join(f"`{key}` {words}" for key, words in TIMINGS.items())
              + " (one run, no interval). Verdicts on the accuracy (paired test drop), latency and size targets: ✓ met "
              "with confidence, ~ met on the point estimate only, ✗ missed, ? not judged.", ""]
    lines += md_table(
        ["trial", "pipeline", "runtime", "val top-1 (selection)", "test top-1", "test drop (points)", "latency", "latency ratio",
         "timing", "size", "size ratio", "verdicts a/l/s"],
        [[f"{int(r.trial)}{' ◀' if int(r.trial) == inputs.chosen.number else ''}", r.pipeline, r.runtime,
          fmt_acc_ci(r.val_top1, _list(r.val_top1_ci95)),
          fmt_acc_ci(r.test_top1, _list(r.test_top1_ci95)) if as_float(r.test_top1) is not None else "n/a",
          fmt_drop_ci(r.test_drop, r.test_drop_ci95) if isinstance(r.test_drop_ci95, list) else "n/a",
          fmt_ms(r.latency_ms) if as_float(r.latency_ms) is not None else "n/a",
          fmt_ratio_ci(r.latency_ratio, _list(r.latency_ratio_ci95)), r.timing,
          fmt_bytes(r.size_bytes) if as_float(r.size_bytes) is not None else "n/a", fmt_ratio(r.size_ratio),
          "".join(fmt_verdict_mark(v) for v in (r.verdict_accuracy, r.verdict_latency, r.verdict_size))]
         for r in inputs.front.itertuples()],
    )
    lines += [f"![Pareto projections: accuracy vs latency ratio and vs size ratio]({FIGURES['pareto']})", ""]
    lines += _operator_lines(inputs)
    return lines


def _operator_lines(inputs: Inputs) -> list[str]:
    """Latency against the operators each ``.pte`` runs: at small inputs the runtime pays per operator."""
    lines = ["### Latency against operator count", ""]
    fit = operator_latency_fit(inputs.complete)
    counted = len(operator_trials(inputs.complete))
    if fit is None:
        lines.append(f"{counted} completed trial(s) recorded the operators their `.pte` runs (trials lowered before the "
                     "counts were stored, and TorchScript artifacts, have none): too few, or all of one count, to fit "
                     "latency against the operator count.")
    else:
        fitted = (f"least squares of the latency ratio on the operator count (delegated + portable) over the "
                  f"{fit.trials} measured `.pte` trials: {fit.per_operator:.5f} of the float baseline's latency per "
                  f"operator, intercept {fmt_ratio(fit.intercept)}, R² {fit.r2:.2f}")
        text = (f"Fitted by {fitted}." if fit.reference_ms is None else
                f"Each operator a `.pte` runs costs about **{fit.per_operator * fit.reference_ms:.4f} ms**: the float "
                f"baseline's {fmt_ms(fit.reference_ms)} times the slope of the {fitted}.")
        lines.append(text + " Where R² is high the operator count, not the arithmetic, sets the latency: removing "
                     "operators (squeeze-excite blocks, activations the delegate cannot fuse) pays where removing weights "
                     "does not.")
    return lines + ["", f"![Latency ratio against operator count]({FIGURES['operators']})", ""]


def _screening_lines(inputs: Inputs) -> list[str]:
    """Candidates by fidelity and stop reason, the memo's hit rate and the cost model's error."""
    lines = ["### Screening: which candidates were lowered", ""]
    summary = ScreeningSummary.of(inputs.trials)
    config = inputs.study.search
    lines += [("Screening is on: a trained candidate is recorded on its estimates and not lowered when a measured trial "
               "dominates its optimistic point (its PyTorch model's validation top-1 plus the 90th percentile of the "
               f"model-to-artifact gaps seen and {config.screen_accuracy_margin:g}; its structure's measured latency and "
               f"bytes, or the cost model's less {config.screen_latency_margin:.0%} or its error on structures left out "
               "of its fit), or when a measured trial of its structure is already as accurate. Screened trials never "
               "reach the front, the export or the figures above as measurements."
               if config.screening else "Screening is off: every trained candidate was lowered and measured."),
              "", f"{summary.describe()}.", ""]
    rows: Counter[tuple[str, str]] = Counter()
    for trial in inputs.trials:
        if trial.state.is_finished():
            reason = trial.stop_reason.value if trial.stop_reason is not None else trial.state.name.lower()
            rows[(trial_outcome(trial), "completed" if trial.has_values else reason)] += 1
    order = {o: i for i, o in enumerate(OUTCOMES)}
    lines += md_table(["fidelity", "how it ended", "trials"],
                      [[o, how, n] for (o, how), n in sorted(rows.items(), key=lambda item: (order[item[0][0]], -item[1]))])
    errors = model_errors(inputs.trials)
    if errors:
        lines += ["", f"The cost model's latency estimates, made before each lowering of a structure it had not seen: "
                  f"{sum(e <= ACCURATE_WITHIN for e in errors)} of {len(errors)} within ±{ACCURATE_WITHIN:.0%} of the "
                  f"measured ratio (median error {100 * float(np.median(errors)):.1f}%, largest {100 * max(errors):.1f}%)."]
    return lines + [""]


def _phase_lines(phases: Sequence[PhaseTotal]) -> list[str]:
    lines = ["### Where the trials' time went", ""]
    total = sum(p.seconds for p in phases)
    if not total:
        return lines + ["No trial recorded its seconds per phase (`phase_seconds`).", ""]
    training = sum(p.seconds for p in phases if p.training)
    lowering = sum(p.seconds for p in phases if p.name == "lowering")
    lines += [f"Over the finished trials, training stages took **{100 * training / total:.0f}%** of the "
              f"{fmt_seconds(total)} of trial compute; everything else {100 * (total - training) / total:.0f}% "
              f"(lowering to the runtime alone {100 * lowering / total:.0f}%).", ""]
    lines += ["Each phase's seconds are split by the trials' fidelity: measured (lowered, run and timed), screened "
              "(completed on estimates, never lowered) and stopped (pruned or failed).", ""]
    lines += md_table(["phase", "seconds", "share", "trials", "training", *(f"{o} s" for o in OUTCOMES)], [
        [p.name, f"{p.seconds:.0f}", f"{100 * p.share(total):.1f}%", p.trials, "yes" if p.training else "",
         *(f"{p.by_outcome.get(o, 0.0):.0f}" for o in OUTCOMES)]
        for p in phases])
    outcome_totals = {o: sum(p.by_outcome.get(o, 0.0) for p in phases) for o in OUTCOMES}
    lines += ["", "In all: " + ", ".join(f"{o} trials {fmt_seconds(s)}" for o, s in outcome_totals.items()) + ".", ""]
    return lines + [f"![Seconds per phase]({FIGURES['phases']})", ""]


def section_chosen(inputs: Inputs, steps: Sequence[dict[str, Any]]) -> list[str]:
    trial = inputs.chosen
    f = chosen_facts(inputs)
    lines = ["## The chosen pipeline, stage by stage", "",
             f"Trial {trial.number}: `{trial.pipeline}` (family: {family(trial)}; "
             f"{fmt_seconds(trial.seconds)} to build and measure). Validation accuracy, state-dict size, "
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
    rows.append([f"artifact ({f.runtime})", f"lowered for {f.runtime}" + (f", {trial.backend} kernels" if trial.backend else ""),
                 "", fmt_acc(f.val_top1), fmt_points(f.val_top1 - previous) if previous is not None else "", _bytes(f.bytes),
                 f"{fmt_ratio(f.size_ratio)} of the baseline artifact in {f.reference_runtime}", "lowered", "—", "—", "—"])
    lines += md_table(["step", "what", "time", "val top-1", "change", "size", "size / baseline", "form", "parameters",
                       "non-zero", "FLOPs / baseline"], rows)
    parity = trial.parity
    spread = (f" (p10 {fmt_ms(_nan(trial.latency_p10_ms))}, p90 {fmt_ms(_nan(trial.latency_p90_ms))} of the rounds "
              "within that one run, which do not cover the spread between runs)" if f.timing == "search" else "")
    test = "n/a" if f.test_top1 is None else fmt_acc_ci(f.test_top1, None if f.test is None else f.test.top1_ci95)
    lines += [f"Final artifact: {_bytes(f.bytes)}, {fmt_bytes(trial.artifact_gzip_bytes or 0)} gzipped; latency median "
              f"{_ms(f.latency_ms)}{spread} against {_ms(f.reference_latency_ms)} for the float baseline in "
              f"{f.reference_runtime}, timed alongside (ratio {fmt_ratio_ci(f.latency_ratio, f.latency_ratio_ci95)}; "
              f"{f.timing_note}); test top-1 {test}; parity with its PyTorch model: top-1 agreement "
              f"{fmt_acc(parity.get('top1_agreement', float('nan')))} on {parity.get('samples', 'n/a')} test images.", ""]
    lines += [f"![Size and accuracy after each stage]({FIGURES['waterfall']})", ""]
    lines += ["### Per-class accuracy, baseline vs chosen model (test split)", ""]
    comparison = class_comparison(inputs)
    if comparison.paired:
        lines += ["Each class has only its share of the test images, so its interval is wide. A class counts as "
                  "resolvably worse when the paired interval of its drop (baseline minus chosen, on the same images), "
                  "widened for comparing every class at once (Bonferroni), lies above zero: with "
                  f"{len(comparison.classes)} classes, {100 * (1 - 0.95 ** len(comparison.classes)):.0f}% of studies "
                  "would show at least one plain 95% interval excluding zero by chance alone.", ""]
    lines += md_table(["class", "test images", "baseline", "chosen", "change", "resolvably worse"], [
        [c.name, _or_na(c.images), fmt_acc_ci(c.baseline, c.baseline_ci95),
         "n/a" if c.chosen is None else fmt_acc_ci(c.chosen, c.chosen_ci95),
         "n/a" if c.chosen is None else fmt_points(c.chosen - c.baseline),
         ("**yes**" if c.resolvably_worse else "no") if comparison.paired else "not judged (no per-image results)"]
        for c in comparison.classes])
    lines += [f"![Per-class test accuracy, baseline vs chosen]({FIGURES['per_class']})", ""]
    return lines


def _floats(values: Any) -> str:
    try:
        return "[" + ", ".join(f"{float(v):.4f}" for v in values) + "]"
    except (TypeError, ValueError):
        return str(values)


def section_deployment(inputs: Inputs) -> list[str]:
    trial, card, f = inputs.chosen, inputs.card, chosen_facts(inputs)
    lines = ["## Deployment", ""]
    if card is None:
        lines += [f"Trial {trial.number} has not been exported yet (no model card for it, in the study storage or in "
                  f"`{inputs.study.run_dir / 'export'}`); the "
                  f"values below are the search's own measurements of its artifact. Export and verify it with "
                  f"`udacisense export --study ... --trial {trial.number} --out DIR`.", ""]
        parity = trial.parity
        lines += md_table(["property", "value"], [
            ["artifact", f"`{trial.artifact_path or ''}`"],
            ["runtime", trial.runtime + (f" ({trial.backend} quantization)" if trial.backend else "")],
            ["size", f"{fmt_int(trial.artifact_bytes or 0)} B ({fmt_bytes(trial.artifact_gzip_bytes or 0)} gzipped)"],
            ["sha256", f"`{trial.artifact_sha256 or ''}`"],
            ["parity (test split)", f"top-1 agreement {fmt_acc(parity.get('top1_agreement', float('nan')))}, max |diff| "
                                    f"{parity.get('max_abs_diff', float('nan')):.5f} on {parity.get('samples', 'n/a')} images"],
            ["latency", f"{_ms(f.latency_ms)} median, ratio {fmt_ratio_ci(f.latency_ratio, f.latency_ratio_ci95)} to the "
                        f"float baseline in {f.reference_runtime} ({f.timing_note})"],
        ])
        return lines
    export_dir = inputs.card_dir
    checksum = "the export folder is not on this machine: not checked here"
    if export_dir is not None:
        artifact = export_dir / str(card.get("artifact", ""))
        checksum = "the artifact file is missing"
        if artifact.is_file():
            checksum = "matches the file on disk" if sha256_of(artifact) == card.get("sha256") else "**does not match the file on disk**"
    parity = card.get("parity", {})
    normalisation = card.get("input", {}).get("normalisation", {})
    where = f"to `{export_dir}`" if export_dir is not None else "(the model card as stored with the study)"
    lines += [f"Exported {where}, created {card.get('created', 'n/a')}.", ""]
    lines += md_table(["property", "value"], [
        ["artifact", f"`{card.get('artifact')}`: {card.get('format')}"],
        ["runtime", f"{card.get('runtime')}" + (f", quantization backend {card.get('quantization_backend')}"
                                                 if card.get("quantization_backend") else "")],
        ["size", f"{_bytes(f.bytes)}; baseline artifact in {f.reference_runtime} {_bytes(f.baseline_bytes)}; "
                 f"ratio {fmt_ratio(f.size_ratio)}"],
        ["sha256", f"`{card.get('sha256')}` ({checksum})"],
        ["parity on the test split", f"top-1 agreement {fmt_acc(parity.get('top1_agreement', float('nan')))} "
                                     f"(required ≥ {fmt_acc(parity.get('rule', parity).get('min_agreement', float('nan')))}), max |diff| "
                                     f"{parity.get('max_abs_diff', float('nan')):.5f} on {parity.get('samples', 'n/a')} images"],
        ["latency at export", f"{_ms(f.latency_ms)} median against {_ms(f.reference_latency_ms)} for the float baseline "
                              f"in {f.reference_runtime} timed alongside: ratio "
                              f"{fmt_ratio_ci(f.latency_ratio, f.latency_ratio_ci95)} ({f.timing_note})"],
        ["accuracy of the artifact", "test top-1 " + ("n/a" if f.test_top1 is None else fmt_acc_ci(
            f.test_top1, None if f.test is None else f.test.top1_ci95)) + ("" if f.test is None else
            f", drop against the baseline {fmt_points(f.test.drop)} (paired 95% interval {fmt_points_ci(f.test.drop_ci95)}, "
            f"{fmt_acc(f.test.agreement)} of the images judged alike)")
            + f"; validation top-1 {fmt_acc_ci(f.val_top1, None if f.val is None else f.val.top1_ci95)}, the selection score"],
        ["input", f"{' × '.join(str(d) for d in card.get('input', {}).get('shape', []))} "
                  f"{card.get('input', {}).get('dtype', '')}, {card.get('input', {}).get('layout', '')}; "
                  f"normalise {normalisation.get('formula', '')} with mean {_floats(normalisation.get('mean'))} "
                  f"and std {_floats(normalisation.get('std'))}"],
        ["classes (output order)", ", ".join(card.get("classes", []))],
    ])
    search_ratio = trial.latency_ratio
    if (f.latency_ratio <= inputs.max_latency_ratio) != (search_ratio <= inputs.max_latency_ratio):
        lines += [f"The latency ratio measured at export ({fmt_ratio(f.latency_ratio)}) and the search's single timing run "
                  f"({fmt_ratio(search_ratio)}) fall on different sides of the target ({fmt_ratio(inputs.max_latency_ratio)}): "
                  "this report and the model card judge on the export's, timed in independent blocks; confirm latency on "
                  "the target phone before relying on it.", ""]
    return lines


# At most one stop in ten cut a trial that would have reached the floor: the time saved is then
# worth the few front candidates lost.
LOW_FALSE_STOP_RATE = 0.1


def false_stops_line(savings: EarlyStoppingSavings) -> str:
    measured = savings.false_stops
    if measured is None and not savings.costs_of(StopReason.DURING_TRAINING):
        return "False stops: nothing to measure (no trial was stopped during training)."
    how = ("`.venv/bin/python scripts/search_benchmark.py --study ... --summary-only --false-stops N` re-runs up to N "
           "trials stopped during training to the end, with their parameters and seed and early stopping off")
    if measured is None:
        return f"False stops: not measured (run it: {how})."
    if not measured.measured:
        return (f"False stops: not measured: no re-run of a trial stopped during training finished when it was tried "
                f"(none was stopped then, or the re-runs failed; {how}).")
    reruns = ", ".join(f"{t.original} → {fmt_acc(t.final_val)}" for t in measured.trials)
    return (f"False stops: **{measured.false_stops} of {measured.measured}** (measured by re-running {measured.measured} "
            "trial(s) stopped during training to the end, with the same parameters and seed and early stopping off: "
            f"a re-run that reaches the floor {fmt_acc(measured.trials[0].floor)} was a false stop; trial → its "
            f"re-run's final val top-1: {reruns}).")


def _early_stopping_lines(inputs: Inputs, savings: EarlyStoppingSavings) -> list[str]:
    lines = []
    if not inputs.study.search.early_stopping:
        lines += ["Early stopping is off in this study (`search.early_stopping = false`): it stopped nothing and saved "
                  "nothing.", ""]
    elif not savings.stopped:
        lines += ["Early stopping stopped no trial: it saved nothing.", ""]
    else:
        before, during = savings.costs_of(StopReason.BEFORE_TRAINING), savings.costs_of(StopReason.DURING_TRAINING)
        halved = savings.costs_of(StopReason.HALVED)
        text = (f"Early stopping stopped {savings.stopped} trial(s): {len(before)} before training (estimated to miss the "
                f"size or latency target), {len(during)} during training (accuracy hopeless) and {len(halved)} halved "
                f"(outranked where successive halving looked, 1/{inputs.study.search.halving_rate} going on; see "
                "`search/halving.py`). Estimated compute saved: "
                f"**{fmt_seconds(savings.saved)}**, the {savings.epochs_left} fine-tune epoch(s) those trials had left, "
                "each at the seconds per epoch the trial measured itself in the stage it was stopped in, else the median "
                "of the completed trials' stages of the same kind. Lowering and timing are not counted: a trial stopped "
                "as hopeless would most likely have stopped below the floor before them.")
        if before or halved:
            text += (" A trial stopped before training or halved might have been lowered and measured: for those the "
                     "figure is a lower bound.")
        if savings.uncosted_epochs:
            text += (f" {savings.uncosted_epochs} of those epochs belong to stage kinds no completed trial trained: "
                     "not costed.")
        if savings.unplanned:
            text += f" {savings.unplanned} stopped trial(s) stored no stage plan (an older version): not costed."
        lines += [text, ""]
        if savings.costs:
            lines += md_table(["stopped by early stopping", "trials", "time spent", "fine-tune epochs left",
                               "estimated saving"], [
                [STOP_CATEGORIES[reason], len(costs), fmt_seconds(sum(c.spent for c in costs)),
                 sum(c.epochs_left for c in costs), fmt_seconds(sum(c.seconds for c in costs))]
                for reason, costs in ((StopReason.BEFORE_TRAINING, before), (StopReason.DURING_TRAINING, during),
                                      (StopReason.HALVED, halved)) if costs])
    if inputs.study.search.early_stopping or savings.false_stops is not None:
        lines += [false_stops_line(savings), ""]
    below = savings.pruned.get(StopReason.BELOW_FLOOR, [])
    if below:
        lines += [f"Not savings of early stopping: {len(below)} trial(s) stopped after training, clearly below the "
                  f"accuracy floor (they spent {fmt_seconds(sum(t.seconds for t in below))}); that stop happens whatever "
                  "`search.early_stopping` is set to.", ""]
    skipped = [(STOP_CATEGORIES[reason], len(savings.pruned[reason]))
               for reason in (StopReason.REJECTED, StopReason.DUPLICATE, StopReason.OVER_BUDGET) if savings.pruned.get(reason)]
    if None in savings.pruned:
        skipped.append((UNRECORDED, len(savings.pruned[None])))
    if skipped:
        lines += ["Other pruned trials, counts only: " + "; ".join(f"{name}: {count}" for name, count in skipped) + ".", ""]
    return lines


def _early_stopping_advice(inputs: Inputs, savings: EarlyStoppingSavings) -> str:
    """Advice on early stopping: keep it only where it saved time and was measured to stop rightly."""
    saved = (f"Early stopping saved an estimated {fmt_seconds(savings.saved)} of training (the epochs its "
             f"{savings.stopped} stopped trial(s) had left) against {fmt_seconds(savings.complete_total)} spent on "
             "completed trials")
    measured = savings.false_stops
    if measured is None or not measured.measured:
        return (f"{saved}; how often it stops a trial that would have reached the floor was not measured, so whether "
                "it cost front points is unknown: measure it with `scripts/search_benchmark.py --study ... "
                "--summary-only --false-stops N` before relying on it.")
    rate = f"{measured.false_stops} of {measured.measured} stopped trial(s) re-run to the end reached the floor"
    if measured.false_stops / measured.measured <= LOW_FALSE_STOP_RATE:
        return f"{saved}, and {rate}: keep `search.early_stopping` on."
    return (f"{saved}, but {rate}: it stops trials that would have shipped; raise `search.patience_margin` (now "
            f"{inputs.study.search.patience_margin:g}) or turn `search.early_stopping` off.")


# How to settle a target met on the point estimate only.
CONFIRM = {"latency": "time it on the target phone", "accuracy": "measure its accuracy on more test images"}


def _class_advice(inputs: Inputs) -> list[str]:
    """Advice on single classes: only where the chosen model is worse beyond noise (paired, Bonferroni), never on
    the largest of the raw per-class differences, which on a few dozen images each is mostly noise."""
    comparison = class_comparison(inputs)
    if not comparison.paired:
        return []
    if not comparison.worse:
        return [f"No class is resolvably worse on the {fmt_int(comparison.images or 0)} test images: every per-class "
                "difference between the chosen model and the baseline is within the noise of its class's images, so "
                "no class calls for work on this evidence."]
    worse = "; ".join(f"`{comparison.name(c)}` {fmt_points(-c.drop)} on its {c.images} test images (paired interval of "
                      f"the drop {fmt_points_ci(c.drop_ci95)})" for c in comparison.worse)
    return [f"Recommend improving the class{'es' if len(comparison.worse) > 1 else ''} the chosen model is worse on "
            f"beyond noise: {worse}. Check with the app team before release (more training images of "
            f"{'that class' if len(comparison.worse) == 1 else 'those classes'}, or a pipeline that loses less on "
            f"{'it' if len(comparison.worse) == 1 else 'them'})."]


def recommendations(inputs: Inputs, rows: Sequence[TechniqueRow], history: Sequence[tuple[int, float]],
                    savings: EarlyStoppingSavings) -> list[str]:
    lines = ["## Recommendations (computed from the measurements above)", ""]
    items = []
    f, trial = chosen_facts(inputs), inputs.chosen
    if f.ships:
        accuracy = ("" if f.test is None else f", test accuracy drop {fmt_points(f.test.drop)} (paired 95% interval "
                                              f"{fmt_points_ci(f.test.drop_ci95)})")
        text = (f"Ship trial {trial.number} (`{trial.pipeline}`) in the {f.runtime} runtime: size ratio "
                f"{fmt_ratio(f.size_ratio)}, latency ratio {fmt_ratio_ci(f.latency_ratio, f.latency_ratio_ci95)} "
                f"({f.timing_note}){accuracy}, all within target")
        if f.uncertain:
            checks = [CONFIRM.get(name, f"measure its {name} again") for name in f.uncertain]
            text += (f"; the {' and '.join(f.uncertain)} on the point estimate only (the interval reaches past the "
                     f"allowance): {' and '.join(checks)} before relying on {'it' if len(checks) == 1 else 'them'}")
        items.append(text + ".")
    else:
        table = inputs.everything
        shares = {name: float(table[f"meets_{name}"].mean()) for name in ("size", "latency", "accuracy")}
        hardest = min(shares, key=shares.__getitem__)
        items.append(f"Do not ship yet: trial {trial.number} misses the {' and '.join(f.missed)} target"
                     f"{'s' if len(f.missed) > 1 else ''}, and the hardest target is {hardest} "
                     f"(met by {100 * shares[hardest]:.0f}% of completed trials: size {100 * shares['size']:.0f}%, "
                     f"latency {100 * shares['latency']:.0f}%, accuracy {100 * shares['accuracy']:.0f}%).")
    feasible = [inputs.trial(int(n)) for n in inputs.front.loc[inputs.front["meets_all"], "trial"]]
    pool, pool_name = (feasible, "feasible front points") if feasible else (
        [inputs.trial(int(n)) for n in inputs.front["trial"]], "front points (none meets all targets)")
    kinds = Counter(kind for t in pool for kind in t.stage_kinds)
    if kinds:
        ranked = ", ".join(f"{kind} in {count} of {len(pool)}" for kind, count in kinds.most_common())
        everywhere = [kind for kind, count in kinds.most_common() if count == len(pool)]
        required = sorted({FAMILY_OF_KIND.get(k, k) for k in everywhere})
        advice = (f"{', '.join(f'`{k}`' for k in everywhere)} appear{'s' if len(everywhere) == 1 else ''} in all of them: "
                  f"consider `space.required = {json.dumps(required)}` to spend the budget on such pipelines."
                  if everywhere else
                  f"`{kinds.most_common(1)[0][0]}` appears most often.")
        items.append(f"Stage families on the {len(pool)} {pool_name}: {ranked}. {advice}")
    for column, what in (("size_ratio", "size"), ("latency_ratio", "latency")):
        best = best_technique(rows, column)
        if best is not None:
            ratio = getattr(best, column)
            change = fmt_change(ratio) if what == "size" else fmt_faster(ratio)
            items.append(f"Largest {what} reduction per accuracy point lost, technique alone: `{best.name}` ({best.runtime}) — "
                         f"{what} ratio {fmt_ratio(ratio)} ({change}) "
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
    rejected = sum(1 for t in inputs.trials if is_rejected(t.trial))
    if rejected:
        items.append(f"{rejected} of {len(inputs.trials)} sampled pipelines ({100 * rejected / len(inputs.trials):.0f}%) "
                     "were impossible stage orders, rejected before compute at no cost; listing fewer families in "
                     "`space.stages` makes sampling more efficient.")
    if inputs.study.search.early_stopping and savings.saved > 0:
        items.append(_early_stopping_advice(inputs, savings))
    items += _class_advice(inputs)
    lines += [f"- {item}" for item in items] + [""]
    return lines

