"""Which students the search still distils: one that could join the measured front, credited with what its
teacher or a student it contains reached (students can beat their teacher), never with less."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest

from udacisense.search.study.records import DISTILLED, Probe, StudyAttr, store_study
from udacisense.search.workers.probes import ProbeReport, student_structure
from udacisense.search.workers.runner import open_questions
from udacisense.search.workers.students import (
    contains,
    decide_next_student,
    distillation_estimate,
    students_pending,
    why_not,
)

TEACHER_VAL = 0.55
LEAN_HALF, LEAN_THREE_QUARTERS = (0.5, "lean"), (0.75, "lean")


def _report() -> ProbeReport:
    probes = tuple(Probe(student_structure(*student), "static xnnpack", latency, latency, latency, size, 1.0)
                   for student, latency, size in ((LEAN_HALF, 0.10, 0.05), (LEAN_THREE_QUARTERS, 0.15, 0.09)))
    return ProbeReport(probes, (), (LEAN_HALF, LEAN_THREE_QUARTERS), (), 1.0, "test cpu")


def _study(*trials: tuple[tuple[float, str] | None, float, float, float]) -> optuna.Study:
    """Measured trials: (student or None, validation top-1, latency ratio, size ratio)."""
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for student, val, latency, size in trials:
        params = {} if student is None else {"student_width": student[0], "student_architecture": student[1]}
        distributions = {} if student is None else {
            "student_width": optuna.distributions.CategoricalDistribution([0.0, 0.5, 0.75]),
            "student_architecture": optuna.distributions.CategoricalDistribution(["standard", "lean"])}
        study.add_trial(optuna.trial.create_trial(values=[val, latency, size], params=params, distributions=distributions,
                                                  user_attrs={"fidelity": "measured", "parity_ok": True}))
    return study


WORKSPACE = SimpleNamespace(profile=SimpleNamespace(val_top1=TEACHER_VAL),
                            study=SimpleNamespace(space=SimpleNamespace(student_architectures=SimpleNamespace(options=("standard", "lean")))))


def test_a_wider_student_is_distilled_after_a_narrower_one_beat_the_teacher() -> None:
    # The narrower lean student beats its teacher, more cheaply than the wider one could run: the wider one is
    # credited with at least that accuracy, so it can still add a more accurate point.
    study = _study((LEAN_HALF, 0.58, 0.10, 0.05))
    assert why_not(study, WORKSPACE, _report(), LEAN_THREE_QUARTERS) is None  # type: ignore[arg-type]


def test_a_student_is_ruled_out_by_a_cheaper_trial_more_accurate_than_all_it_contains() -> None:
    # A full-width cut (no student) more accurate than the teacher and than every trial of the students the wider
    # one contains, at no more latency and bytes than the wider student could reach.
    study = _study((LEAN_HALF, 0.56, 0.10, 0.05), (None, 0.60, 0.14, 0.08))
    reason = why_not(study, WORKSPACE, _report(), LEAN_THREE_QUARTERS)  # type: ignore[arg-type]
    assert reason is not None and reason.startswith("trial 1 is already more accurate than trial 0")
    # As accurate as the credit is not enough: it must be more accurate.
    assert why_not(_study((LEAN_HALF, 0.60, 0.10, 0.05), (None, 0.60, 0.14, 0.08)), WORKSPACE, _report(),  # type: ignore[arg-type]
                   LEAN_THREE_QUARTERS) is None


def test_containment_is_by_width_and_operators() -> None:
    assert contains((0.75, "lean"), (0.5, "lean")) and contains((0.5, "standard"), (0.5, "lean"))
    assert not contains((0.5, "lean"), (0.5, "standard")) and not contains((0.5, "lean"), (0.75, "lean"))


def _shelf_workspace(trained: set[tuple[float, str]], seconds: float = 900.0,
                     distilling: set[tuple[float, str]] | None = None) -> SimpleNamespace:
    """A shelf holding the ``trained`` students, distilled in ``seconds`` each; ``distilling`` by a live process."""
    space = SimpleNamespace(stages=("distill", "quantize"), student_widths=SimpleNamespace(options=(0.0, 0.5, 0.75)),
                            student_architectures=SimpleNamespace(options=("standard", "lean")))
    shelf = SimpleNamespace(trained=lambda w, a: (w, a) in trained, name=lambda w, a: f"width-{w:g}-{a}",
                            train_seconds=lambda w, a: seconds if (w, a) in trained else None,
                            distilling=lambda w, a: (w, a) in (distilling or set()))
    return SimpleNamespace(study=SimpleNamespace(space=space), students=shelf, profile=WORKSPACE.profile)


def test_a_distilled_student_no_trial_has_tried_holds_off_the_plateau_stop() -> None:
    report, untried = _report(), _shelf_workspace({LEAN_HALF})
    # Distilled, untried: pending whatever the time left (its first trial may move the front).
    assert students_pending(_study(), untried, report, seconds_left=60.0)  # type: ignore[arg-type]
    # Tried, and the next student (1.5x the first's 15 minutes, by width) cannot finish in 10 minutes: nothing pending.
    tried_once = _study((LEAN_HALF, 0.56, 0.10, 0.05))
    assert not students_pending(tried_once, untried, report, seconds_left=600.0)  # type: ignore[arg-type]
    assert distillation_estimate(untried, LEAN_THREE_QUARTERS) == 1350.0  # type: ignore[arg-type]
    # With time for it, the next one is pending; before any student is distilled, every undecided one is.
    assert students_pending(tried_once, untried, report, seconds_left=1400.0)  # type: ignore[arg-type]
    assert students_pending(_study(), _shelf_workspace(set()), report, seconds_left=60.0)  # type: ignore[arg-type]


def test_a_student_distilling_or_a_queued_trial_holds_off_the_plateau_stop() -> None:
    """The README run at 34b489a ended on a plateau of the trained model's cuts while the student distilled beside
    the probes was not on the shelf yet, and its portfolio starts waited for it."""
    report, shelf = _report(), _shelf_workspace({LEAN_HALF})
    tried_once = _study((LEAN_HALF, 0.56, 0.10, 0.05))  # the first student tried; no time for the next
    assert not open_questions(tried_once, shelf, report, seconds_left=600.0)  # type: ignore[arg-type]
    # The next one decided distilled and not on the shelf yet: pending, however little time is left.
    store_study(tried_once, {StudyAttr.STUDENTS: {"width-0.75-lean": DISTILLED}})
    assert students_pending(tried_once, shelf, report, seconds_left=60.0)  # type: ignore[arg-type]
    # Nothing left of the students, but a start queued: the search has its own question open.
    idle = _study((LEAN_HALF, 0.56, 0.10, 0.05))
    idle.enqueue_trial({"student_width": 0.5})
    assert open_questions(idle, shelf, report, seconds_left=600.0)  # type: ignore[arg-type]


def test_no_search_starts_a_distillation_it_cannot_finish() -> None:
    """Probed or not: the next student (1.5x the first's 15 minutes, by width) is left undecided with 10 minutes
    left, rather than distilled past the time limit while no trial runs."""
    workspace = _shelf_workspace({(0.5, "standard"), LEAN_HALF})
    distilled: list[tuple[float, str]] = []
    workspace.students.student = lambda w, a: distilled.append((w, a))
    for report in (None, _report()):
        study = _study((LEAN_HALF, 0.56, 0.10, 0.05), ((0.5, "standard"), 0.56, 0.10, 0.05))
        assert decide_next_student(study, workspace, report, seconds_left=600.0, log=False) is None  # type: ignore[arg-type]
        assert decide_next_student(study, workspace, report, seconds_left=1400.0, log=False) is not None  # type: ignore[arg-type]
    assert distilled == [(0.75, "standard"), LEAN_THREE_QUARTERS]


def test_a_student_still_distilling_beside_the_probes_holds_the_next_decision_and_keeps_samples_off_students() -> None:
    """The search started before the student distilled beside its probes is on the shelf (decided ``distilled``):
    no second distillation starts, and the workers sample no student until it is there and tried."""
    from udacisense.search.study.records import DISTILLED, StudyAttr, store_study
    from udacisense.search.workers.runner import sampler_while_students_train
    from udacisense.search.workers.students import being_distilled

    on_shelf: set[tuple[float, str]] = set()
    workspace = _shelf_workspace(on_shelf, distilling={LEAN_HALF})
    workspace.students.student = lambda w, a: pytest.fail(f"distilled {w} {a} while the first was still distilling")
    study, report = _study(), _report()
    store_study(study, {StudyAttr.STUDENTS: {"width-0.5-lean": DISTILLED}})
    assert being_distilled(study, workspace, report) == [LEAN_HALF]  # type: ignore[arg-type]
    assert decide_next_student(study, workspace, report, log=False) is None  # type: ignore[arg-type]
    sampler = optuna.samplers.RandomSampler(seed=0)
    fixed = sampler_while_students_train(sampler, study, workspace, report)  # type: ignore[arg-type]
    assert isinstance(fixed, optuna.samplers.PartialFixedSampler) and fixed._fixed_params == {"student_width": 0.0}
    # On the shelf: trials sample students again; once one has tried it, the next student is decided.
    on_shelf.add(LEAN_HALF)
    assert not being_distilled(study, workspace, report)  # type: ignore[arg-type]
    assert sampler_while_students_train(sampler, study, workspace, report) is sampler  # type: ignore[arg-type]
    tried = _study((LEAN_HALF, 0.56, 0.10, 0.05))
    store_study(tried, {StudyAttr.STUDENTS: {"width-0.5-lean": DISTILLED}})
    decided: list[tuple[float, str]] = []
    workspace.students.student = lambda w, a: decided.append((w, a))
    assert decide_next_student(tried, workspace, report, log=False) == LEAN_THREE_QUARTERS  # type: ignore[arg-type]
    assert decided == [LEAN_THREE_QUARTERS]


def test_a_student_whose_distilling_process_ended_first_is_distilled_by_the_first_worker() -> None:
    """Decided ``distilled`` beside the probes, but its process ended (failed, or the search was killed and resumed)
    before the student was on the shelf: worker 0 distils it rather than waiting for it for ever."""
    from udacisense.search.study.records import DISTILLED, StudyAttr, store_study

    workspace = _shelf_workspace(set())
    distilled: list[tuple[float, str]] = []
    workspace.students.student = lambda w, a: distilled.append((w, a))
    study = _study()
    store_study(study, {StudyAttr.STUDENTS: {"width-0.5-lean": DISTILLED}})
    assert decide_next_student(study, workspace, _report(), log=False) == LEAN_HALF  # type: ignore[arg-type]
    assert distilled == [LEAN_HALF]  # that one, not the next undecided student
