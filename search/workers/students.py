"""Students on demand: the first worker distils the students the probes ranked, the most promising first, and
each next one only once it could still join the measured front.

A student is credited with its cheapest probed program's latency and bytes, and with the accuracy of its teacher
or of any measured trial of a student it contains (no wider, no richer in operators), whichever is higher: a
distilled student can beat its teacher, and a wider one is expected to do at least what a narrower one did. If a
measured trial (parity passed) is more accurate than that and as cheap, the student cannot add a point to the front,
and its 5-15 minutes of distillation go to trials instead.
The decision on each student is stored on the study (``StudyAttr.STUDENTS``), so a trial of any worker that
samples a student not distilled is rejected before compute rather than distilling it on the spot. The cheapest
student may still be distilling beside the probes (``workers.opening``) when the search starts: decided
``distilled`` before it is on the shelf, it holds the next decision until a trial has tried it. If the process
distilling it ends before it is there (it failed, or the search was stopped and resumed), the first worker distils it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from udacisense.models.students import StudentArchitecture
from udacisense.search.study.records import DISTILLED, StudyAttr, StudyRecord, store_study
from udacisense.search.study.trial_record import records
from udacisense.search.study.workspace import Workspace
from udacisense.search.workers.opening import opening_student
from udacisense.search.workers.probe_decisions import student_probe
from udacisense.search.workers.probes import ProbeReport
from udacisense.spaces.families import STUDENT_ARCHITECTURE, STUDENT_WIDTH

Student = tuple[float, StudentArchitecture]


def ranked_students(workspace: Workspace, report: ProbeReport | None) -> list[Student]:
    """The students the space may pick: in the probes' order, or (unprobed) as the space lists them."""
    space = workspace.study.space
    if "distill" not in space.stages:
        return []
    if report is not None:
        return [(width, architecture) for width, architecture in report.students
                if width in space.student_widths.options and architecture in space.student_architectures.options]
    return [(width, architecture) for width in space.student_widths.options if width
            for architecture in space.student_architectures.options]


def undecided_students(study: optuna.Study, workspace: Workspace, report: ProbeReport | None) -> list[Student]:
    """The ranked students neither on the shelf nor ruled out, most promising first."""
    decisions = StudyRecord.of(study).student_decisions
    return [(w, a) for w, a in ranked_students(workspace, report)
            if not workspace.students.trained(w, a) and workspace.students.name(w, a) not in decisions]


def being_distilled(study: optuna.Study, workspace: Workspace, report: ProbeReport | None) -> list[Student]:
    """The ranked students decided ``distilled`` but not on this machine's shelf yet: distilling beside the probes,
    or left unfinished by a process that ended (``decide_next_student`` distils those)."""
    decisions = StudyRecord.of(study).student_decisions
    return [(w, a) for w, a in ranked_students(workspace, report)
            if not workspace.students.trained(w, a) and decisions.get(workspace.students.name(w, a)) == DISTILLED]


def distilling_beside(workspace: Workspace) -> Student | None:
    """The student distilled beside the opening trials and the probes (``workers.opening``) while a process distils
    it still: when it outlasts the probes, it runs beside the search's workers."""
    opening = opening_student(workspace.study.space)
    return opening[0] if opening is not None and workspace.students.distilling(*opening[0]) else None


def record_decision(study: optuna.Study, name: str, decision: str) -> None:
    """Add one student's decision to the study's (one worker decides students, so read-modify-write is safe)."""
    store_study(study, {StudyAttr.STUDENTS: {**StudyRecord.of(study).student_decisions, name: decision}})


def why_not(study: optuna.Study, workspace: Workspace, report: ProbeReport, student: Student) -> str | None:
    """Why ``student`` cannot join the measured front (a measured trial as accurate and as cheap as the student
    could be), or None when it still could."""
    cheapest = student_probe(report, *student)
    if cheapest is None:
        return None
    latency, size = cheapest
    measured = [r for r in records(study.get_trials(deepcopy=False)) if r.is_measured and r.parity_ok]
    credit, source = workspace.profile.val_top1, "the teacher"
    for record in measured:
        smaller = student_of(workspace, record.trial.params)
        if smaller is not None and contains(student, smaller) and record.val_accuracy > credit:
            credit, source = record.val_accuracy, f"trial {record.number} of the student it contains"
    for record in measured:
        if record.val_accuracy > credit and record.latency_ratio <= latency and record.size_ratio <= size:
            return (f"trial {record.number} is already more accurate than {source} ({record.val_accuracy:.3f} > "
                    f"{credit:.3f}) at x{record.latency_ratio:.2f} latency and x{record.size_ratio:.2f} bytes, no more "
                    f"than the student's cheapest probed program (x{latency:.2f}, x{size:.2f})")
    return None


def contains(student: Student, other: Student) -> bool:
    """Whether ``other`` is no wider than ``student`` and has no operator ``student`` lacks (a lean student is
    contained in a standard one of its width, not the other way round)."""
    return other[0] <= student[0] and (other[1] == student[1] or other[1] == "lean")


def student_of(workspace: Workspace, params: Mapping[str, Any]) -> Student | None:
    """The student sampled parameters (a trial's, a portfolio entry's) pick, or None (the current model); a space
    with one architecture does not sample it."""
    width = params.get(STUDENT_WIDTH)
    if not width:
        return None
    return float(width), params.get(STUDENT_ARCHITECTURE, workspace.study.space.student_architectures.options[0])


def student_ready(workspace: Workspace, entry: Mapping[str, Any]) -> bool:
    """Whether a portfolio entry can run now: it needs no student, or its student is on the shelf."""
    student = student_of(workspace, entry)
    return student is None or workspace.students.trained(*student)


def tried(study: optuna.Study, workspace: Workspace, student: Student) -> bool:
    """Whether a finished trial used ``student``: what it measured is known before the next student is decided."""
    finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    return any(student_of(workspace, trial.params) == student for trial in finished)


def distillation_estimate(workspace: Workspace, student: Student) -> float | None:
    """Seconds ``student`` will take to distil: the slowest distilled student's time, scaled by width (the students
    share the schedule); None before any is distilled."""
    timed = [(seconds, width) for width, architecture in ranked_students(workspace, None)
             if (seconds := workspace.students.train_seconds(width, architecture)) is not None]
    if not timed:
        return None
    return max(seconds * student[0] / width for seconds, width in timed)


def students_pending(study: optuna.Study, workspace: Workspace, report: ProbeReport | None,
                     seconds_left: float | None) -> bool:
    """Whether a student could still move the front: one distilled that no finished trial has tried yet, one being
    distilled (beside the probes, typically: the README run on the EPYC ended on a plateau of the trained model's
    cuts while its most promising student was 2 minutes from the shelf), or an undecided one that could still be
    distilled in ``seconds_left``. A search with any has not converged on what it can reach."""
    if any(workspace.students.trained(*s) and not tried(study, workspace, s) for s in ranked_students(workspace, report)):
        return True
    if being_distilled(study, workspace, report):
        return True
    return any(seconds_left is None or (estimate := distillation_estimate(workspace, s)) is None or estimate <= seconds_left
               for s in undecided_students(study, workspace, report))


def decide_next_student(study: optuna.Study, workspace: Workspace, report: ProbeReport | None, *,
                        seconds_left: float | None = None, log: bool = True) -> Student | None:
    """Distil a student decided ``distilled`` that no process is distilling, else the most promising undecided
    student, or record why it cannot matter; returns the student distilled or decided, None when it is not yet time
    (a distilled student not tried yet), a distillation would outlast the search's ``seconds_left`` (undecided: a
    longer run distils it), or none is left.

    Without probes every student the space lists is distilled, in its order, each once there is time for it.
    """
    shelf = workspace.students
    unfinished = [s for s in being_distilled(study, workspace, report) if not shelf.distilling(*s)]
    if unfinished:
        if log:
            print(f"[students] distilling {shelf.name(*unfinished[0])}: decided distilled, but no process of this "
                  "machine is distilling it and it is not on the shelf (its process ended first)", flush=True)
        shelf.student(*unfinished[0])
        return unfinished[0]
    undecided = undecided_students(study, workspace, report)
    if not undecided:
        return None
    # On the shelf, or decided and still distilling (beside the probes).
    decisions = StudyRecord.of(study).student_decisions
    distilled = [s for s in ranked_students(workspace, report) if shelf.trained(*s) or decisions.get(shelf.name(*s)) == DISTILLED]
    if report is not None and distilled and not all(tried(study, workspace, s) for s in distilled):
        return None  # its first measurement decides whether the next student could still matter
    student = undecided[0]
    estimate = distillation_estimate(workspace, student)
    if seconds_left is not None and estimate is not None and estimate > seconds_left:
        return None
    name = shelf.name(*student)
    reason = why_not(study, workspace, report, student) if report is not None else None
    if reason is not None:
        record_decision(study, name, f"not distilled: {reason}")
        if log:
            print(f"[students] {name} not distilled: {reason}", flush=True)
        return student
    if log:
        place = ranked_students(workspace, report).index(student) + 1
        order = f"ranked {place} by its probes" if report is not None else f"student {place} in the space's order; not probed"
        print(f"[students] distilling {name} ({order})", flush=True)
    shelf.student(*student)
    record_decision(study, name, DISTILLED)
    return student


def train_students(workspace: Workspace, report: ProbeReport | None = None) -> None:
    """Distil every student the space may pick that is not on the shelf yet (benchmarks that compare searching,
    not distilling, do it once before their arms)."""
    for student in ranked_students(workspace, report):
        workspace.students.student(*student)
