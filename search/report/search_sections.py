"""The report's sections on the search itself (trials, screening, early stopping, where the time went)
and its recommendations, as Markdown lines."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
from optuna.trial import TrialState

from udacisense.search.report.facts import (
    Inputs,
    TechniqueRow,
    as_float,
    best_technique,
    chosen_facts,
    class_comparison,
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
    fmt_ms,
    fmt_points,
    fmt_points_ci,
    fmt_ratio,
    fmt_ratio_ci,
    fmt_seconds,
    fmt_verdict_mark,
    md_table,
    stored_interval,
)
from udacisense.search.report.sections import efficiency_text
from udacisense.search.report.trial_facts import (
    OUTCOMES,
    STOP_CATEGORIES,
    UNRECORDED,
    EarlyStoppingSavings,
    PhaseTotal,
    early_stopping_verdict,
    false_stop_rate_bound,
    operator_latency_fit,
    operator_trials,
    prune_category,
    state_counts,
    trial_outcome,
)
from udacisense.search.results.convergence import Convergence
from udacisense.search.results.front import TIMINGS
from udacisense.search.results.hypervolume import HV_REFERENCE
from udacisense.search.study.budget import is_rejected
from udacisense.search.study.records import STOP_WORDS, UNSPENT, FalseStops, StopReason
from udacisense.search.study.trial_record import TrialRecord
from udacisense.search.trial.screening import ACCURATE_WITHIN, BOUNDED_FROM, ScreeningSummary, model_errors
from udacisense.spaces.families import FAMILY_OF_KIND


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
          fmt_acc_ci(r.val_top1, stored_interval(r.val_top1_ci95)),
          fmt_acc_ci(r.test_top1, stored_interval(r.test_top1_ci95)) if as_float(r.test_top1) is not None else "n/a",
          fmt_drop_ci(r.test_drop, r.test_drop_ci95) if isinstance(r.test_drop_ci95, list) else "n/a",
          fmt_ms(r.latency_ms) if as_float(r.latency_ms) is not None else "n/a",
          fmt_ratio_ci(r.latency_ratio, stored_interval(r.latency_ratio_ci95)), r.timing,
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
               "dominates its optimistic point (its PyTorch model's validation top-1 plus a 90% bound of its "
               f"model-to-artifact gap, wider while fewer than {BOUNDED_FROM} gaps are seen, and "
               f"{config.screen_accuracy_margin:g}; its structure's measured latency and "
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


REPLAY_MORE = "too few replays to say early stopping is safe; replay more with `--false-stops N`"


def false_stop_rate(measured: FalseStops) -> str:
    """How many replays reached the floor, and the false-stop rate they cannot rule out."""
    return (f"**{measured.false_stops} of {measured.measured}** replays reached the floor: false-stop rate ≤ "
            f"{false_stop_rate_bound(measured):.0%} (95% upper bound)")


def false_stops_line(savings: EarlyStoppingSavings) -> str:
    measured = savings.false_stops
    if measured is None and not savings.costs:
        return "False stops: nothing to measure (early stopping stopped no trial)."
    how = ("`.venv/bin/python scripts/search_benchmark.py --study ... --summary-only --false-stops N` replays a random "
           "sample of N trials early stopping stopped (halved, during or before training) to the end, with their "
           "parameters and seed, and early stopping, halving and screening off")
    if measured is None:
        return f"False stops: not measured (run it: {how})."
    if not measured.measured:
        return f"False stops: not measured: no replay finished when it was tried (the replays failed; {how})."
    kinds = Counter(t.reason for t in measured.trials)
    replays = ", ".join(f"{t.original} → {fmt_acc(t.final_val)}" for t in measured.trials)
    verdict = f" — {REPLAY_MORE}" if early_stopping_verdict(measured) == "undecided" else ""
    return (f"False stops: {false_stop_rate(measured)}{verdict}. The replays: a random sample of {measured.measured} of "
            f"the {savings.stopped} trial(s) early stopping stopped ({', '.join(f'{n} {STOP_WORDS[r]}' for r, n in kinds.items())}), each "
            "run to the end with its parameters and seed, and early stopping, halving and screening off; one that "
            f"reaches the floor {fmt_acc(measured.trials[0].floor)} was a false stop (trial → its replay's final val "
            f"top-1: {replays}).")


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
                "`search/trial/halving.py`). Estimated compute saved: "
                f"**{fmt_seconds(savings.saved)}**, the {savings.epochs_left} fine-tune epoch(s) those trials had left, "
                "each at the time between epoch ends the trial measured itself in the stage it was stopped in (never the "
                "stage's set-up, such as a pruning cut), else the median of the completed trials' stages of the same "
                "kind. Lowering and timing are not counted: a trial stopped "
                "as hopeless would most likely have stopped below the floor before them.")
        if before or halved:
            text += (" A trial stopped before training or halved might have been lowered and measured: for those the "
                     "figure is a lower bound.")
        if savings.uncosted_epochs:
            text += (f" {savings.uncosted_epochs} of those epochs belong to stage kinds no completed trial trained two "
                     "epochs of (no time between epoch ends): not costed.")
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
               for reason in UNSPENT if savings.pruned.get(reason)]
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
    rate, verdict = false_stop_rate(measured), early_stopping_verdict(measured)
    if verdict == "safe":
        return f"{saved}, and {rate}: keep `search.early_stopping` on."
    if verdict == "undecided":
        return f"{saved}, but {rate}: {REPLAY_MORE} (`scripts/search_benchmark.py`) before relying on it."
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


def recommendations(inputs: Inputs, rows: Sequence[TechniqueRow], front_state: Convergence | None,
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
                         f"for {fmt_points(-best.lost)} validation accuracy ({efficiency_text(best, column)}).")
    if front_state is not None:
        state = front_state.describe()
        items.append(state[0].upper() + state[1:] + (
            ": the front has settled for this space; widen `[space]` rather than giving the search more time."
            if front_state.converged else
            ": a longer search (`search.timeout_minutes`, or `search.n_trials` where the trial budget ran out first) "
            "is likely to improve the front."))
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
