"""The report's sections as Markdown lines, written from the facts and figures."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from udacisense.common.files import sha256_of
from udacisense.evaluators.intervals import wilson
from udacisense.search.report.facts import (
    ChosenFacts,
    Inputs,
    TechniqueRow,
    baseline_ci95,
    chosen_facts,
    class_comparison,
    reduction_per_point,
    technique_rows,
)
from udacisense.search.report.figures import FIGURES
from udacisense.search.report.format import (
    fmt_acc,
    fmt_acc_ci,
    fmt_bytes,
    fmt_bytes_exact,
    fmt_change,
    fmt_faster,
    fmt_int,
    fmt_millions,
    fmt_ms,
    fmt_ms_or_na,
    fmt_points,
    fmt_points_ci,
    fmt_ratio,
    fmt_ratio_ci,
    fmt_seconds,
    fmt_verdict,
    md_table,
    or_blank,
    or_na,
    or_nan,
)
from udacisense.search.report.trial_facts import (
    family,
)
from udacisense.search.results.front import knee
from udacisense.spaces.families import STUDENT_WIDTH


def efficiency_text(row: TechniqueRow, column: str) -> str:
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
            ["artifact size", f"{fmt_bytes_exact(f.baseline_bytes)} in {f.reference_runtime}", fmt_bytes_exact(f.bytes),
             f"ratio {fmt_ratio(f.size_ratio)} ({fmt_change(f.size_ratio)})",
             f"ratio ≤ {fmt_ratio(inputs.max_size_ratio)} (at least {100 * targets.size_reduction:.0f}% smaller)",
             fmt_verdict(f.verdicts.get("size"))],
            ["latency (median, batch 1, CPU)", f"{fmt_ms_or_na(f.reference_latency_ms)} in {f.reference_runtime}", fmt_ms_or_na(f.latency_ms),
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
        ["training", f"your model, loaded from its checkpoint (not trained here); validated on {or_na(train.val_samples)} "
                     f"images, tested on {or_na(train.test_samples)}" if profile.loaded else
                     f"{or_na(train.epochs)} epochs on {or_na(train.samples)} images "
                     f"({or_na(train.val_samples)} validation, {or_na(train.test_samples)} test), "
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
         or_blank(r.runs), f"{r.torch_threads} / {r.executorch_threads}"]
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
          efficiency_text(r, "size_ratio"), efficiency_text(r, "latency_ratio")] + ([r.trial] if r.trial is not None else [])
         for r in sorted(rows, key=lambda r: r.size_ratio)],
    )
    return lines, rows


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
                 "", fmt_acc(f.val_top1), fmt_points(f.val_top1 - previous) if previous is not None else "", fmt_bytes_exact(f.bytes),
                 f"{fmt_ratio(f.size_ratio)} of the baseline artifact in {f.reference_runtime}", "lowered", "—", "—", "—"])
    lines += md_table(["step", "what", "time", "val top-1", "change", "size", "size / baseline", "form", "parameters",
                       "non-zero", "FLOPs / baseline"], rows)
    parity = trial.parity
    spread = (f" (p10 {fmt_ms(or_nan(trial.latency_p10_ms))}, p90 {fmt_ms(or_nan(trial.latency_p90_ms))} of the rounds "
              "within that one run, which do not cover the spread between runs)" if f.timing == "search" else "")
    test = "n/a" if f.test_top1 is None else fmt_acc_ci(f.test_top1, None if f.test is None else f.test.top1_ci95)
    lines += [f"Final artifact: {fmt_bytes_exact(f.bytes)}, {fmt_bytes(trial.artifact_gzip_bytes or 0)} gzipped; latency median "
              f"{fmt_ms_or_na(f.latency_ms)}{spread} against {fmt_ms_or_na(f.reference_latency_ms)} for the float baseline in "
              f"{f.reference_runtime}, timed alongside (ratio {fmt_ratio_ci(f.latency_ratio, f.latency_ratio_ci95)}; "
              f"{f.timing_note}); test top-1 {test}; parity with its PyTorch model: top-1 agreement "
              f"{fmt_acc(parity.get('top1_agreement', float('nan')))} on {parity.get('samples', 'n/a')} test images.", ""]
    lines += [f"![Size and accuracy after each stage]({FIGURES['waterfall']})", ""]
    lines += _pick_lines(inputs) + _recipe_lines(inputs)
    lines += ["### Per-class accuracy, baseline vs chosen model (test split)", ""]
    comparison = class_comparison(inputs)
    if comparison.paired:
        lines += ["Each class has only its share of the test images, so its interval is wide. A class counts as "
                  "resolvably worse when the paired interval of its drop (baseline minus chosen, on the same images), "
                  "widened for comparing every class at once (Bonferroni), lies above zero: with "
                  f"{len(comparison.classes)} classes, {100 * (1 - 0.95 ** len(comparison.classes)):.0f}% of studies "
                  "would show at least one plain 95% interval excluding zero by chance alone.", ""]
    lines += md_table(["class", "test images", "baseline", "chosen", "change", "resolvably worse"], [
        [c.name, or_na(c.images), fmt_acc_ci(c.baseline, c.baseline_ci95),
         "n/a" if c.chosen is None else fmt_acc_ci(c.chosen, c.chosen_ci95),
         "n/a" if c.chosen is None else fmt_points(c.chosen - c.baseline),
         ("**yes**" if c.resolvably_worse else "no") if comparison.paired else "not judged (no per-image results)"]
        for c in comparison.classes])
    lines += [f"![Per-class test accuracy, baseline vs chosen]({FIGURES['per_class']})", ""]
    return lines


def _pick_lines(inputs: Inputs) -> list[str]:
    """What scoring the front afresh on the test images changed: the knee's pick on those confirmation scores
    beside the one the same rule makes on the validation scores the front was selected on."""
    front = inputs.front
    if front.empty or inputs.chosen.number not in set(front["trial"]):
        return []
    choice = knee(front, inputs.study.targets)
    if choice.split != "test":
        return []

    def described(number: int) -> str:
        row = front[front["trial"] == number].iloc[0]
        interval = row["test_drop_ci95"]
        drop = "" if not isinstance(interval, list) else (
            f", test drop {fmt_points(row['test_drop'])} (paired 95% {fmt_points_ci((interval[0], interval[1]))})")
        return (f"trial {number} (`{row['pipeline']}`): validation {fmt_acc(row['val_top1'])}, test "
                f"{fmt_acc(row['test_top1'])}{drop}, latency {fmt_ratio(row['latency_ratio'])}, bytes {fmt_ratio(row['size_ratio'])}")

    lines = ["### How it was picked", "",
             f"The front's {len(front)} rows were selected on the validation images, so each is the luckiest there of "
             "the near-equal trials at its cost; the knee scores them afresh on the test images, on which none was "
             f"selected ({choice.comparisons} accuracy gaps judged together). On those scores it picks "
             f"{described(choice.trial)}."]
    if choice.on_validation == choice.trial:
        lines[-1] += " The same rule on the validation scores picks the same trial."
    else:
        lines[-1] += f" On the validation scores it would have picked {described(choice.on_validation)}."
    if inputs.chosen.number != choice.trial:
        lines[-1] += f" The model reported here is trial {inputs.chosen.number} ({inputs.choice_note})."
    lossless = [row for _, row in front.sort_values("latency_ratio").iterrows()
                if isinstance(row["test_drop_ci95"], list) and row["test_drop_ci95"][0] <= 0]
    if lossless and int(lossless[0]["trial"]) != choice.trial:
        lines += ["", f"The front's fastest row not resolvably less accurate than the baseline on the test images (its "
                      f"paired drop interval reaches zero): {described(int(lossless[0]['trial']))}."]
    return [*lines, ""]


def _recipe_lines(inputs: Inputs) -> list[str]:
    """What the shelf's distillation recipe contributed, for a pick built on a shelf student: the study's recipe,
    and the gains ``scripts/student_recipes.py`` measured (paired on the test images) where it has run."""
    if not inputs.chosen.trial.params.get(STUDENT_WIDTH):
        return []
    recipe = inputs.study.students
    lines = ["### Its student's recipe", "",
             f"The student was distilled once on the shelf with the study's `[students]` recipe: "
             f"{recipe.epochs or inputs.study.baseline.epochs} epochs, α {recipe.alpha:g}, T {recipe.temperature:g}, "
             f"mixup {recipe.mixup:g}, weight average {recipe.weight_average:g}."]
    measured = inputs.study.run_dir / "student_recipes" / "recipes.json"
    if not measured.is_file():
        lines[-1] += " What each setting contributes: `scripts/student_recipes.py` (not run for this study)."
        return [*lines, ""]
    document = json.loads(measured.read_text())
    student, rows = document["student"], document["rows"]
    lines[-1] += (f" `scripts/student_recipes.py` measured the width-{student['width']:g} {student['architecture']} "
                  f"student under each recipe, against the first (`{rows[0]['recipe']}`), paired on the test images:")
    lines += [""] + md_table(["recipe", "epochs", "mixup", "weight average", "test top-1", "gain over the first",
                              "drop against the baseline", "CPU-minutes"], [
        [row["recipe"], str(row["epochs"]), f"{row['mixup']:g}", f"{row['weight_average']:g}", fmt_acc(row["test_top1"]),
         f"{fmt_points(row['test_gain_over_first'])} {fmt_points_ci(tuple(row['test_gain_ci95']))}",
         f"{fmt_points(row['test_drop'])} {fmt_points_ci(tuple(row['test_drop_ci95']))}", f"{row['train_minutes']:.1f}"]
        for row in rows])
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
            ["latency", f"{fmt_ms_or_na(f.latency_ms)} median, ratio {fmt_ratio_ci(f.latency_ratio, f.latency_ratio_ci95)} to the "
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
        ["size", f"{fmt_bytes_exact(f.bytes)}; baseline artifact in {f.reference_runtime} {fmt_bytes_exact(f.baseline_bytes)}; "
                 f"ratio {fmt_ratio(f.size_ratio)}"],
        ["sha256", f"`{card.get('sha256')}` ({checksum})"],
        ["parity on the test split", f"top-1 agreement {fmt_acc(parity.get('top1_agreement', float('nan')))} "
                                     f"(required ≥ {fmt_acc(parity.get('rule', parity).get('min_agreement', float('nan')))}), max |diff| "
                                     f"{parity.get('max_abs_diff', float('nan')):.5f} on {parity.get('samples', 'n/a')} images"],
        ["latency at export", f"{fmt_ms_or_na(f.latency_ms)} median against {fmt_ms_or_na(f.reference_latency_ms)} for the float baseline "
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
