"""What the probes decide (see ``workers.probes`` for what they measure): the options that leave the study's space,
the students' order, the starting trials, and the study's one stored report that every worker reads."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import optuna

from udacisense.common.forked import SPAWNED, Beside
from udacisense.compression.pruning import UnstructuredPruningConfig
from udacisense.evaluators.latency import LOAD_SPREAD
from udacisense.models.students import StudentArchitecture
from udacisense.search.study.config import StudyConfig
from udacisense.search.study.records import DISTILLED, StudyAttr, StudyRecord, store_study
from udacisense.search.study.trial_record import TrialRecord, records
from udacisense.search.study.workspace import Workspace
from udacisense.search.trial.portfolio import Entry, distilled_first, fit_to_space, only_quantize
from udacisense.search.workers.opening import distil_and_open, opening_student, record_opening, run_opening
from udacisense.search.workers.probes import (
    BASELINE,
    Dropped,
    Form,
    Measured,
    Probe,
    ProbeReport,
    Structure,
    depth_cut,
    depth_cut_name,
    measure_probes,
    student_structure,
)
from udacisense.spaces.space import SpaceConfig


def run_probes(workspace: Workspace, *, progress: bool = True, processes: int = 1,
               opening: Sequence[TrialRecord] = ()) -> ProbeReport:
    """Measure the probes (lowering on ``processes`` cores, timing the programs the ``opening`` trials kept) and
    decide from them."""
    return decide(workspace.study, measure_probes(workspace, progress=progress, processes=processes, opening=opening))


def decide(study: StudyConfig, measured: Measured) -> ProbeReport:
    max_latency, max_size = study.targets.max_latency_ratio, study.targets.max_size_ratio
    structures, probes = measured.structures, measured.probes
    dropped = _dropped(study.space, structures, measured.forms, probes, max_latency, max_size)
    students = _ranked_students(structures, probes, dropped, max_latency, max_size)
    report = ProbeReport(probes, tuple(dropped), tuple(students), (), measured.minutes, measured.cpu)
    return dataclasses.replace(report, portfolio=tuple(probe_portfolio(study.space, structures, report, max_latency, max_size)))


def stored_probes(study: optuna.Study) -> ProbeReport | None:
    stored = StudyRecord.of(study).probes
    return None if stored is None else ProbeReport.from_dict(stored)


def ensure_probes(study: optuna.Study, workspace: Workspace, *, progress: bool = True,
                  processes: int = 1) -> ProbeReport | None:
    """The study's probe report: the stored one, else measured now (lowering on ``processes`` cores) and stored,
    after the opening trials (``workers.opening``) and beside the distillation of the space's cheapest student and
    its opening trial, which then enter the study; None for a study whose trials were sampled before probes existed
    (narrowing its space would no longer match them)."""
    report = stored_probes(study)
    if report is not None or not workspace.study.search.probes:
        return report
    if study.get_trials(deepcopy=False):
        return None
    first_student = opening_student(workspace.study.space)
    probing = SPAWNED.Event()
    probing.set()
    beside = None if first_student is None else (first_student[0], Beside(partial(
        distil_and_open, workspace.study, *first_student, probing, progress=progress)))
    # One more process than cores while it runs: the probes' lowering and the distillation share them. Leaving the
    # distillation a core of its own (an Intel Xeon, 2 cores, one README run each) brought the student to the shelf
    # 18.8 min after it started against 19.6 sharing, but the probes took 8.5 min on the other core against 6.1 on
    # both: later trials for every structure, for 0.8 min of the student's; and a short search spent its whole
    # limit probing.
    opening = run_opening(workspace, processes=processes, progress=progress)
    report = run_probes(workspace, progress=progress, processes=processes, opening=records(opening))
    if beside is not None:
        student, distillation = beside
        if workspace.students.trained(*student):
            opening += distillation.result()  # its opening trial, running or about to
        else:
            # A longer distillation than the probes: the search starts beside it, and the student's portfolio
            # trials wait for it (``workers.students``), rather than the search waiting for its opening trial. Should
            # its process end first, the first worker distils the student.
            probing.clear()
    # Another process may have probed meanwhile: the first report stored is the study's.
    already = stored_probes(study)
    if already is not None:
        return already
    # The students' decisions first: the report's presence says the probing finished.
    shelf = workspace.students
    decisions = {shelf.name(*d.value): f"not distilled: dropped by the probes: {d.reason}"
                 for d in report.dropped if d.setting == "student"}
    if first_student is not None:
        name = shelf.name(*first_student[0])
        decisions[name] = (DISTILLED if name not in decisions else
                           decisions[name].replace("not distilled:", "distilled beside the probes, then", 1))
    store_study(study, {StudyAttr.STUDENTS: decisions})
    store_study(study, {StudyAttr.PROBES: report.as_dict()})
    # After the report: a process killed in between loses the opening trials, but leaves no trial that keeps a
    # later process from probing.
    record_opening(study, opening, narrowed_space(workspace.study.space, report))
    return report


def _dropped(space: SpaceConfig, structures: Sequence[Structure], forms: Sequence[Form], probes: Sequence[Probe],
             max_latency: float, max_size: float) -> list[Dropped]:
    dropped: list[Dropped] = []

    def unreachable(case: Probe) -> str:
        return (f"its cheapest probed program ({case.structure}, {case.form}) runs at x{case.latency_ratio:.2f} of the "
                f"float .pte's latency and x{case.size_ratio:.2f} of its bytes; no program with it can meet the targets "
                f"(x{max_latency:.2f}, x{max_size:.2f})")

    form_of = {f.name: f for f in forms}
    options: list[tuple[str, str, Callable[[Form], bool]]] = [
        ("quant_backends", b, partial(_on_backend, b)) for b in space.quant_backends.options]
    options += [("quant_types", q, partial(_of_type, q)) for q in space.quant_types.options]
    for setting, value, has in options:
        with_it = [p for p in probes if p.form in form_of and has(form_of[p.form])]
        if with_it and not any(p.meets(max_latency, max_size) for p in with_it):
            dropped.append(Dropped(setting, value, unreachable(min(with_it, key=lambda p: p.cost(max_latency, max_size)))))
    if 4 in space.linear_weight_bits.options:
        pairs = [(p8, p4) for p4 in probes if p4.form.endswith("int4 Linear")
                 for p8 in probes if p8.structure == p4.structure and p8.form == p4.form.removesuffix(" int4 Linear")]
        if pairs and all(p4.size_ratio >= p8.size_ratio for p8, p4 in pairs):
            dropped.append(Dropped("linear_weight_bits", 4, "int4 Linear weights saved no bytes over int8 on any probed "
                                   "structure, and round more"))
    if "prune" in space.stages:
        pruned = next((p for p in probes if p.structure == UnstructuredPruningConfig(amount=space.prune_amount.high).describe()), None)
        # Cheaper would be fewer bytes, or faster by more than a program load moves the ratio even at the slow end
        # of its rounds: one block's rounds share their load's memory placement, which shifts them all alike.
        if pruned is not None and pruned.size_ratio >= 0.995 and pruned.latency_ratio_p90 >= 1 - LOAD_SPREAD:
            dropped.append(Dropped("stages", "prune", f"dominated by no pruning at less accuracy risk: the float program "
                                   f"with {space.prune_amount.high:.0%} of its weights zeroed has x{pruned.size_ratio:.2f} "
                                   f"of the bytes and x{pruned.latency_ratio:.2f} of the latency [rounds' p10-p90 "
                                   f"{pruned.latency_ratio_p10:.2f}-{pruned.latency_ratio_p90:.2f}] (XNNPACK stores "
                                   "weights dense)"))
    dropped += _dominated_students(structures, probes, max_latency, max_size)
    return dropped


def _on_backend(backend: str, form: Form) -> bool:
    return form.backend == backend


def _of_type(quant_type: str, form: Form) -> bool:
    return form.quant_type == {"qat": "static"}.get(quant_type, quant_type)  # QAT ships the static form


def _dominated_students(structures: Sequence[Structure], probes: Sequence[Probe], max_latency: float,
                        max_size: float) -> list[Dropped]:
    """A student whose every program misses the targets, or that a student no narrower and no leaner matches on
    both costs in its cheapest form."""
    students = [s for s in structures if s.student is not None]
    best = {s.name: min((p for p in probes if p.structure == s.name), key=lambda p: p.cost(max_latency, max_size))
            for s in students}
    dropped = []
    for student in students:
        mine = best[student.name]
        if not any(p.meets(max_latency, max_size) for p in probes if p.structure == student.name):
            dropped.append(Dropped("student", student.student, f"its cheapest program ({mine.form}) runs at "
                                   f"x{mine.latency_ratio:.2f} latency and x{mine.size_ratio:.2f} bytes: it cannot meet the targets"))
            continue
        safer = [other for other in students if other is not student
                 and all(a <= b for a, b in zip(other.risk, student.risk, strict=True))
                 and best[other.name].latency_ratio_p90 <= mine.latency_ratio_p10
                 and best[other.name].size_ratio <= mine.size_ratio]
        if safer:
            other = best[safer[0].name]
            dropped.append(Dropped("student", student.student, f"{safer[0].name} is no riskier and as cheap "
                                   f"(x{other.latency_ratio:.2f} latency, x{other.size_ratio:.2f} bytes against "
                                   f"x{mine.latency_ratio:.2f}, x{mine.size_ratio:.2f})"))
    return dropped


def _ranked_students(structures: Sequence[Structure], probes: Sequence[Probe], dropped: Sequence[Dropped],
                     max_latency: float, max_size: float) -> list[tuple[float, str]]:
    gone = {d.value for d in dropped if d.setting == "student"}
    ranked = []
    for structure in structures:
        if structure.student is not None and structure.student not in gone:
            cost = min(p.cost(max_latency, max_size) for p in probes if p.structure == structure.name)
            ranked.append((cost, structure.student))
    return [student for _, student in sorted(ranked)]


def narrowed_space(space: SpaceConfig, report: ProbeReport | None) -> SpaceConfig:
    """``space`` without the options the probes dropped (a setting keeps at least one choice, a study at least one
    family); the students stay as the report ranks them."""
    if report is None:
        return space
    changes: dict[str, Any] = {}
    for drop in report.dropped:
        if drop.setting == "stages":
            stages = tuple(s for s in changes.get("stages", space.stages) if s != drop.value)
            if stages:
                changes["stages"] = stages
                changes["required"] = tuple(s for s in space.required if s in stages)
        elif drop.setting != "student":
            choice = changes.get(drop.setting, getattr(space, drop.setting))
            kept = tuple(o for o in choice.options if o != drop.value)
            if kept:
                changes[drop.setting] = dataclasses.replace(choice, options=kept)
    students = report.students
    if "distill" in space.stages and students:
        widths = tuple(w for w in space.student_widths.options if not w or any(w == s for s, _ in students))
        architectures = tuple(a for a in space.student_architectures.options if any(a == s for _, s in students))
        changes["student_widths"] = dataclasses.replace(space.student_widths, options=widths)
        changes["student_architectures"] = dataclasses.replace(space.student_architectures, options=architectures)
    return dataclasses.replace(space, **changes)


def probe_portfolio(space: SpaceConfig, structures: Sequence[Structure], report: ProbeReport, max_latency: float,
                    max_size: float) -> list[dict[str, Any]]:
    """Starting trials: the baseline, the first student, that student with its last block dropped (where that is
    cheaper) and the least aggressive architecture cut, each in the least risky static int8 form whose probed program
    meets every target at the slow end of its timing rounds (a start that meets them on a lucky reading misses on the
    next: the latency target is hard), 8-bit Linear weights before int4, and again in the target-meeting form with the
    smallest file where that is another (int4 Linear weights): the smaller file is a point of the front that the
    search might otherwise sample late or never."""
    narrowed = narrowed_space(space, report)
    if not ({"static", "qat"} & set(narrowed.quant_types.options)):
        return []
    allowed = {Form("static", b, bits).name: Form("static", b, bits) for b in narrowed.quant_backends.options
               for bits in narrowed.linear_weight_bits.options}
    off = only_quantize(narrowed)

    def quantized(structure: str) -> list[dict[str, Any]]:
        meeting = [p for p in report.probes if p.structure == structure and p.form in allowed
                   and p.meets(max_latency, max_size, slow=True)]
        if not meeting:
            return []
        safest = min(meeting, key=lambda p: (allowed[p.form].linear_bits == 4, p.cost(max_latency, max_size, slow=True)))
        smallest = min(meeting, key=lambda p: p.size_ratio)
        return [{"quant_type": "static", "quant_backend": allowed[p.form].backend,
                 "linear_weight_bits": allowed[p.form].linear_bits, "float_prefix_blocks": 0}
                for p in dict.fromkeys((safest, smallest))]

    entries = [{**off, **quantize} for quantize in quantized(BASELINE)]
    if report.students:
        width, architecture = report.students[0]
        student = student_structure(width, architecture)
        entries += [{**distilled_first(narrowed, width, architecture), **quantize} for quantize in quantized(student)]
        depth = depth_cut(narrowed)
        if depth is not None and _cheaper(report.probes, depth_cut_name(student, depth), student):
            entries += [{**distilled_first(narrowed, width, architecture), "use_architecture": True,
                         "architecture_squeeze_excite": depth.squeeze_excite, "architecture_activation": depth.activation,
                         "architecture_drop_blocks": depth.drop_blocks, **quantize}
                        for quantize in quantized(depth_cut_name(student, depth))]
    cuts = [(s, q) for s in structures if s.choices and s.choices[0][0] == "architecture_squeeze_excite"
            and (q := quantized(s.name))]
    if cuts and "architecture" in narrowed.stages:
        cut, forms = cuts[0]
        # The cut as probed: no blocks dropped beyond the fewest the space drops (else the sampler draws a depth).
        entries += [{**off, "use_architecture": True, **dict(cut.choices),
                     "architecture_drop_blocks": narrowed.architecture_drop_blocks.low, **quantize} for quantize in forms]
    return entries


def _cheaper(probes: Sequence[Probe], structure: str, than: str) -> bool:
    """Whether ``structure`` runs faster than ``than`` in a form both were probed in (no heavier)."""
    return any(p.structure == structure and q.structure == than and p.form == q.form
               and p.latency_ratio < q.latency_ratio and p.size_ratio <= q.size_ratio for p in probes for q in probes)


def narrowed_study(config: StudyConfig, report: ProbeReport | None) -> StudyConfig:
    return config if report is None else dataclasses.replace(config, space=narrowed_space(config.space, report))


def portfolio_entries(config: StudyConfig, report: ProbeReport | None) -> list[Entry]:
    """The study file's portfolio, then the probes' starting trials, as ``config``'s (narrowed) space samples them;
    every worker derives the same list from the same file and stored report, so an entry's index names it."""
    entries = [*config.search.portfolio, *(report.portfolio if report is not None else ())]
    return [fitted for entry in entries if (fitted := fit_to_space(config.space, entry)) is not None]


def student_probe(report: ProbeReport, width: float, architecture: StudentArchitecture) -> tuple[float, float] | None:
    """The lowest latency ratio and the fewest bytes (ratio) the student's probed programs reach, each."""
    mine = [p for p in report.probes if p.structure == student_structure(width, architecture)]
    if not mine:
        return None
    return min(p.latency_ratio for p in mine), min(p.size_ratio for p in mine)
