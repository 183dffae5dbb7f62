"""The report's sections as Markdown lines, written from the facts and figures."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from optuna.trial import TrialState

from udacisense.common.files import sha256_of
from udacisense.search.budget import is_rejected
from udacisense.search.hypervolume import HV_REFERENCE
from udacisense.search.records import StopReason, TrialRecord
from udacisense.search.report.facts import (
    STOP_CATEGORIES,
    UNRECORDED,
    EarlyStoppingSavings,
    Inputs,
    PhaseTotal,
    TechniqueRow,
    as_float,
    best_technique,
    chosen_facts,
    family,
    prune_category,
    reduction_per_point,
    state_counts,
    technique_rows,
)
from udacisense.search.report.figures import FIGURES
from udacisense.search.report.format import (
    fmt_acc,
    fmt_bytes,
    fmt_change,
    fmt_faster,
    fmt_int,
    fmt_millions,
    fmt_ms,
    fmt_points,
    fmt_ratio,
    fmt_seconds,
    md_table,
    yes_no,
)
from udacisense.spaces.families import FAMILY_OF_KIND


def _nan(value: float | None) -> float:
    """A measurement a trial may lack, as NaN for formatting."""
    return float("nan") if value is None else value


def _or_na(value: object) -> object:
    return "n/a" if value is None else value


def _or_blank(value: object) -> object:
    return "" if value is None else value


def _efficiency_text(row: TechniqueRow, column: str) -> str:
    per_point = reduction_per_point(getattr(row, column), row.lost)
    if per_point is None:
        return "no accuracy lost"
    return f"{per_point:.1f}% per point"


def section_summary(inputs: Inputs) -> list[str]:
    f = chosen_facts(inputs)
    targets = inputs.study.targets
    trial = inputs.chosen
    base_test = inputs.profile.test_top1
    lines = ["## Executive summary", ""]
    lines.append(f"The recommended model is **trial {trial.number}**: `{trial.pipeline}`, "
                 f"shipped in the {f['runtime']} runtime. It was selected by {inputs.choice_note}.")
    lines.append("")
    lines += md_table(
        ["measure", "baseline", "chosen model", "change", "target", "verdict"],
        [
            ["artifact size", f"{fmt_bytes(f['baseline_bytes'])} ({fmt_int(f['baseline_bytes'])} B)",
             f"{fmt_bytes(f['bytes'])} ({fmt_int(f['bytes'])} B)", f"ratio {fmt_ratio(f['size_ratio'])} ({fmt_change(f['size_ratio'])})",
             f"ratio ≤ {fmt_ratio(inputs.max_size_ratio)} (at least {100 * targets.size_reduction:.0f}% smaller)",
             yes_no(f["meets_size"])],
            ["latency (median, batch 1, CPU)", fmt_ms(f["baseline_latency_ms"]), fmt_ms(f["latency_ms"]),
             f"ratio {fmt_ratio(f['latency_ratio'])} ({fmt_faster(f['latency_ratio'])})",
             f"ratio ≤ {fmt_ratio(inputs.max_latency_ratio)} (at least {100 * targets.latency_reduction:.0f}% faster)",
             yes_no(f["meets_latency"])],
            ["validation top-1", fmt_acc(inputs.baseline_val), fmt_acc(f["val"]), fmt_points(f["val"] - inputs.baseline_val),
             f"≥ {fmt_acc(max(inputs.floor, 0.0))} (at most {100 * targets.max_accuracy_drop:.1f} points lower)",
             yes_no(f["meets_accuracy"])],
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
        ["trials", f"{len(inputs.trials)} recorded: {counts['complete']} complete, {counts['pruned']} pruned, "
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
    lines += _phase_lines(phases)
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
          fmt_acc(r.val_top1), fmt_acc(r.test_top1) if as_float(r.test_top1) is not None else "n/a",
          fmt_ms(r.latency_ms) if as_float(r.latency_ms) is not None else "n/a", fmt_ratio(r.latency_ratio),
          fmt_bytes(r.size_bytes) if as_float(r.size_bytes) is not None else "n/a", fmt_ratio(r.size_ratio),
          "✓" if r.meets_accuracy else "✗", "✓" if r.meets_latency else "✗", "✓" if r.meets_size else "✗"]
         for r in inputs.front.itertuples()],
    )
    lines += [f"![Pareto projections: accuracy vs latency ratio and vs size ratio]({FIGURES['pareto']})", ""]
    return lines


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
    lines += md_table(["phase", "seconds", "share", "trials", "training"], [
        [p.name, f"{p.seconds:.0f}", f"{100 * p.share(total):.1f}%", p.trials, "yes" if p.training else ""]
        for p in phases])
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
    rows.append([f"artifact ({f['runtime']})", f"lowered for {f['runtime']}"
                 + (f", {trial.backend} kernels" if trial.backend else ""), "",
                 fmt_acc(f["val"]), fmt_points(f["val"] - previous) if previous is not None else "",
                 fmt_bytes(f["bytes"]), f"{fmt_ratio(f['size_ratio'])} of the baseline artifact", "lowered", "—", "—", "—"])
    lines += md_table(["step", "what", "time", "val top-1", "change", "size", "size / baseline", "form", "parameters",
                       "non-zero", "FLOPs / baseline"], rows)
    parity = trial.parity
    lines += [f"Final artifact: {fmt_int(f['bytes'])} B ({fmt_bytes(trial.artifact_gzip_bytes or 0)} gzipped), "
              f"latency median {fmt_ms(_nan(trial.latency_ms))} (p10 {fmt_ms(_nan(trial.latency_p10_ms))}, "
              f"p90 {fmt_ms(_nan(trial.latency_p90_ms))}) against {fmt_ms(f['baseline_latency_ms'])} for the float baseline "
              f"in {trial.reference_runtime or inputs.study.evaluation.reference_runtime}, timed alongside "
              f"(ratio {fmt_ratio(f['latency_ratio'])}); test top-1 "
              f"{fmt_acc(f['test']) if f['test'] is not None else 'n/a'}; parity with its PyTorch model: top-1 agreement "
              f"{fmt_acc(parity.get('top1_agreement', float('nan')))} on {parity.get('samples', 'n/a')} test images.", ""]
    lines += [f"![Size and accuracy after each stage]({FIGURES['waterfall']})", ""]
    lines += ["### Per-class accuracy, baseline vs chosen model (test split)", ""]
    classes = inputs.profile.classes
    base = inputs.profile.test_per_class
    chosen = trial.test_per_class
    lines += md_table(["class", "baseline", "chosen", "change"], [
        [name, fmt_acc(b), fmt_acc(c), fmt_points(c - b)] for name, b, c in zip(classes, base, chosen)])
    lines += [f"![Per-class test accuracy, baseline vs chosen]({FIGURES['per_class']})", ""]
    return lines


def _floats(values: Any) -> str:
    try:
        return "[" + ", ".join(f"{float(v):.4f}" for v in values) + "]"
    except (TypeError, ValueError):
        return str(values)


def section_deployment(inputs: Inputs) -> list[str]:
    trial, card = inputs.chosen, inputs.card
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
            ["latency", f"{fmt_ms(_nan(trial.latency_ms))} median"],
        ])
        return lines
    export_dir = inputs.card_dir
    checksum = "the export folder is not on this machine: not checked here"
    if export_dir is not None:
        artifact = export_dir / str(card.get("artifact", ""))
        checksum = "the artifact file is missing"
        if artifact.is_file():
            checksum = "matches the file on disk" if sha256_of(artifact) == card.get("sha256") else "**does not match the file on disk**"
    m, parity = card.get("metrics", {}), card.get("parity", {})
    normalisation = card.get("input", {}).get("normalisation", {})
    where = f"to `{export_dir}`" if export_dir is not None else "(the model card as stored with the study)"
    lines += [f"Exported {where}, created {card.get('created', 'n/a')}.", ""]
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
                              + f" (ratio {fmt_ratio(m.get('latency_ratio_to_baseline', float('nan')))} to the float baseline "
                              f"in {m.get('reference_runtime', inputs.study.evaluation.reference_runtime)})"],
        ["accuracy of the artifact", f"test top-1 {fmt_acc(m.get('test_top1', float('nan')))}, "
                                     f"validation top-1 {fmt_acc(m.get('val_top1', float('nan')))}"],
        ["input", f"{' × '.join(str(d) for d in card.get('input', {}).get('shape', []))} "
                  f"{card.get('input', {}).get('dtype', '')}, {card.get('input', {}).get('layout', '')}; "
                  f"normalise {normalisation.get('formula', '')} with mean {_floats(normalisation.get('mean'))} "
                  f"and std {_floats(normalisation.get('std'))}"],
        ["classes (output order)", ", ".join(card.get("classes", []))],
    ])
    export_ratio = as_float(m.get("latency_ratio_to_baseline"))
    search_ratio = trial.latency_ratio
    if export_ratio is not None and (export_ratio <= inputs.max_latency_ratio) != (search_ratio <= inputs.max_latency_ratio):
        lines += [f"The latency ratio measured at export ({fmt_ratio(export_ratio)}) and during the search "
                  f"({fmt_ratio(search_ratio)}) fall on different sides of the target ({fmt_ratio(inputs.max_latency_ratio)}): "
                  "the two measurements disagree, so confirm latency on the target phone before relying on it.", ""]
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
        text = (f"Early stopping stopped {savings.stopped} trial(s): {len(before)} before training (estimated to miss the "
                f"size or latency target) and {len(during)} during training (accuracy hopeless). Estimated compute saved: "
                f"**{fmt_seconds(savings.saved)}**, the {savings.epochs_left} fine-tune epoch(s) those trials had left, "
                "each at the seconds per epoch the trial measured itself in the stage it was stopped in, else the median "
                "of the completed trials' stages of the same kind. Lowering and timing are not counted: a trial stopped "
                "as hopeless would most likely have stopped below the floor before them.")
        if before:
            text += " A trial stopped before training might have been lowered: for those the figure is a lower bound."
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
                for reason, costs in ((StopReason.BEFORE_TRAINING, before), (StopReason.DURING_TRAINING, during)) if costs])
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


def recommendations(inputs: Inputs, rows: Sequence[TechniqueRow], history: Sequence[tuple[int, float]],
                    savings: EarlyStoppingSavings) -> list[str]:
    lines = ["## Recommendations (computed from the measurements above)", ""]
    items = []
    f, trial = chosen_facts(inputs), inputs.chosen
    if f["meets_size"] and f["meets_latency"] and f["meets_accuracy"]:
        items.append(f"Ship trial {trial.number} (`{trial.pipeline}`) in the {f['runtime']} runtime: "
                     f"size ratio {fmt_ratio(f['size_ratio'])}, latency ratio {fmt_ratio(f['latency_ratio'])}, "
                     f"validation accuracy {fmt_points(f['val'] - inputs.baseline_val)}, all within target.")
    else:
        table = inputs.everything
        shares = {name: float(table[f"meets_{name}"].mean()) for name in ("size", "latency", "accuracy")}
        hardest = min(shares, key=shares.__getitem__)
        items.append(f"Do not ship yet: trial {trial.number} misses a target, and the hardest target is {hardest} "
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
    base = inputs.profile.test_per_class
    chosen = trial.test_per_class
    classes = inputs.profile.classes or [str(i) for i in range(len(base))]
    if chosen:
        drops = [(b - c, name) for b, c, name in zip(base, chosen, classes)]
        worst = max(drops)
        if worst[0] > 0:
            items.append(f"The class that lost most test accuracy is `{worst[1]}` ({fmt_points(-worst[0])}); "
                         "check it with the app team before release.")
    lines += [f"- {item}" for item in items] + [""]
    return lines

