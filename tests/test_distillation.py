"""Distillation on the real (narrow) MobileNetV3-Small with a briefly trained teacher."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision
from torch import nn

from tests.conftest import snapshot, unchanged
from udacisense.common.errors import IncompatiblePipelineError, UserError
from udacisense.compression.distillation import DistillationConfig, build_student
from udacisense.compression.stage import (
    CompressedModel,
    ModelForm,
    Signature,
    StageContext,
    apply_stage,
)
from udacisense.evaluators.accuracy import evaluate_accuracy
from udacisense.evaluators.size import parameter_counts
from udacisense.models import students as students_module
from udacisense.models.mobilenet import ResizeInput
from udacisense.models.students import StudentsConfig, StudentShelf
from udacisense.search.workers.students import distilling_beside
from udacisense.spaces.distributions import Choice
from udacisense.spaces.space import SpaceConfig
from udacisense.training import Distillation, TrainConfig, fit

ONE_STEP = TrainConfig(epochs=1, lr=0.05, max_batches_per_epoch=1)


def _quick_batchnorm(module: nn.Module) -> nn.Module:
    """torchvision's BatchNorm momentum (0.01) needs hundreds of steps before eval-mode statistics are
    usable; these tests train for tens, so the running statistics must follow faster."""
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.momentum = 0.3
    return module


def _fresh(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return _quick_batchnorm(torchvision.models.mobilenet_v3_small(num_classes=4, width_mult=0.25)).eval()


@pytest.fixture(scope="module")
def teacher(tiny_bundle) -> nn.Module:
    model = _fresh(0)
    # Training batches are full ones only, so an epoch of this bundle is fewer steps than it was.
    history = fit(model, tiny_bundle.loader("train", train=True), TrainConfig(epochs=12, lr=0.1),
                  val=tiny_bundle.loader("val"), num_classes=4, progress=False)
    assert history.val_top1[-1] >= 0.9, "the teacher fixture must be good for the student to learn from it"
    return model


def test_student_learns_from_teacher(tiny_bundle, teacher):
    student = _fresh(11)
    context = StageContext(data=tiny_bundle, teacher=teacher, seed=1)
    start = evaluate_accuracy(student, tiny_bundle.loader("val"), 4).top1
    student_before, teacher_before = snapshot(student), snapshot(teacher)

    config = DistillationConfig(alpha=0.7, temperature=4.0, finetune=TrainConfig(epochs=15, lr=0.1))
    result = apply_stage(CompressedModel(student), config, context)
    end = evaluate_accuracy(result.module, tiny_bundle.loader("val"), 4).top1

    assert end >= 0.7 and end >= start + 0.2
    assert unchanged(student, student_before) and unchanged(teacher, teacher_before)
    # Both trained in channels_last, both are back in the default layout.
    assert all(p.is_contiguous() for p in [*teacher.parameters(), *result.module.parameters()])
    assert result.form is ModelForm.FLOAT


def test_narrower_student_replaces_the_model(tiny_bundle, teacher, tiny_model):
    context = StageContext(data=tiny_bundle, teacher=teacher)
    config = DistillationConfig(student_width=0.1, finetune=ONE_STEP)
    student = apply_stage(CompressedModel(tiny_model), config, context).module

    assert parameter_counts(student)[0] < parameter_counts(tiny_model)[0]
    assert student(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    untrained = build_student(tiny_model, 0.1, num_classes=4, seed=context.seed)
    assert not unchanged(student, snapshot(untrained)), "the student must have been trained"


def test_narrower_student_keeps_input_resize(tiny_bundle, teacher, tiny_model):
    wrapped = nn.Sequential(ResizeInput(48), tiny_model)
    config = DistillationConfig(student_width=0.1, finetune=TrainConfig(epochs=0))
    student = apply_stage(CompressedModel(wrapped), config, StageContext(data=tiny_bundle, teacher=teacher)).module

    assert isinstance(student[0], ResizeInput) and student[0].size == 48
    assert student(torch.randn(1, 3, 32, 32)).shape == (1, 4)


def test_student_is_reproducible_and_leaves_global_rng_alone(tiny_model):
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    first = build_student(tiny_model, 0.5, num_classes=4, seed=7)
    assert torch.equal(torch.rand(1), expected)
    assert unchanged(build_student(tiny_model, 0.5, num_classes=4, seed=7), snapshot(first))


def test_missing_teacher_is_a_user_error(tiny_bundle, tiny_model):
    with pytest.raises(UserError, match="teacher") as error:
        apply_stage(CompressedModel(tiny_model), DistillationConfig(), StageContext(data=tiny_bundle))
    assert error.value.fix


def test_transition_rejects_quantized_and_lowered():
    config = DistillationConfig()
    assert config.transition(Signature()) == Signature()
    for form in (ModelForm.QUANTIZED, ModelForm.LOWERED):
        with pytest.raises(IncompatiblePipelineError):
            config.transition(Signature(form=form, backend="qnnpack"))


def test_describe_and_validation():
    assert DistillationConfig().describe() == "distill(T=4, α=0.7)"
    assert DistillationConfig(student_width=0.5).describe() == "distill(T=4, α=0.7, width=0.5)"
    for bad in ({"alpha": 1.5}, {"temperature": 0.0}, {"student_width": 0.05}):
        with pytest.raises(UserError):
            DistillationConfig(**bad)


def test_shelf_distils_a_width_once_and_every_later_request_reuses_it(tiny_bundle, teacher, tmp_path, monkeypatch):
    schedule = TrainConfig(epochs=6, lr=0.1)
    shelf = StudentShelf(teacher, "teacher-a", tiny_bundle, schedule, tmp_path, seed=3)
    trained = shelf.student(0.35)
    fresh = build_student(teacher, 0.35, num_classes=4, seed=3)
    assert parameter_counts(trained)[0] == parameter_counts(fresh)[0]
    assert not unchanged(trained, snapshot(fresh)), "the shelf must train the student"
    assert shelf.path(0.35).is_file()

    # Another worker's shelf (same teacher and schedule) loads the stored weights instead of training.
    def no_training(*args, **kwargs):
        raise AssertionError("a stored student must not be trained again")

    monkeypatch.setattr(students_module, "fit", no_training)
    again = StudentShelf(teacher, "teacher-a", tiny_bundle, schedule, tmp_path, seed=3).student(0.35)
    assert unchanged(again, snapshot(trained))
    # A different teacher (or schedule) is a different student: the stored one is not trusted.
    with pytest.raises(AssertionError, match="must not be trained"):
        StudentShelf(teacher, "teacher-b", tiny_bundle, schedule, tmp_path, seed=3).student(0.35)
    # The study's [students] epochs replace the baseline's (0 keeps them), and name another student.
    longer = StudentShelf(teacher, "teacher-a", tiny_bundle, schedule, tmp_path, StudentsConfig(epochs=12), seed=3)
    assert longer.schedule.epochs == 12 and shelf.schedule.epochs == 6 and longer.key(0.35) != shelf.key(0.35)


KILLED_WHILE_DISTILLING = """
import sys, torchvision
from pathlib import Path
from tests.conftest import make_bundle
from udacisense.models.students import StudentShelf
from udacisense.training import TrainConfig
teacher = torchvision.models.mobilenet_v3_small(num_classes=4).eval()
StudentShelf(teacher, "teacher", make_bundle(), TrainConfig(epochs=1000, lr=0.1), Path(sys.argv[1])).student(0.35)
"""


def test_a_student_whose_distilling_process_was_killed_is_distilled_by_the_next_that_asks(tiny_bundle, teacher, tmp_path):
    """What the search reads to tell a student still distilling (beside its probes) from one whose process died."""
    shelf = StudentShelf(teacher, "teacher", tiny_bundle, TrainConfig(epochs=1, lr=0.1), tmp_path)
    space = SpaceConfig(stages=("distill", "quantize"), student_widths=Choice((0.0, 0.35)),
                        student_architectures=Choice(("standard",)), quant_types=Choice(("static",)))
    workspace = SimpleNamespace(study=SimpleNamespace(space=space), students=shelf)
    assert not shelf.distilling(0.35)
    child = subprocess.Popen([sys.executable, "-c", KILLED_WHILE_DISTILLING, str(tmp_path)],
                             cwd=Path(__file__).parents[1], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not shelf.distilling(0.35):
            assert child.poll() is None, f"it ended before distilling: {child.stderr.read().decode()[-2000:]}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "it took no lock in 5 min"
            time.sleep(0.2)
        assert not shelf.trained(0.35)
        # A search started now would have its last worker wait for this process (the space's opening student).
        assert distilling_beside(workspace) == (0.35, "standard")  # type: ignore[arg-type]
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -9
    # Killed mid-schedule: nothing on the shelf, and nobody distilling it; the next request trains it, not waits.
    assert not shelf.distilling(0.35) and not shelf.trained(0.35) and distilling_beside(workspace) is None  # type: ignore[arg-type]
    shelf.student(0.35)
    assert shelf.trained(0.35) and not shelf.distilling(0.35) and distilling_beside(workspace) is None  # type: ignore[arg-type]


def test_distill_starts_a_narrower_student_from_the_shelf(tiny_bundle, teacher, tiny_model, tmp_path):
    shelf = StudentShelf(teacher, "teacher", tiny_bundle, TrainConfig(epochs=10, lr=0.1), tmp_path)
    shelved = shelf.student(0.35)
    context = StageContext(data=tiny_bundle, teacher=teacher, students=shelf.student)
    wrapped = nn.Sequential(ResizeInput(48), tiny_model)
    config = DistillationConfig(student_width=0.35, finetune=TrainConfig(epochs=0))
    student = apply_stage(CompressedModel(wrapped), config, context).module

    # The shelf's weights, behind the current model's input resize, and the shelf's copy untouched.
    assert isinstance(student[0], ResizeInput) and student[0].size == 48
    assert unchanged(student[1], snapshot(shelved))
    assert student[1] is not shelved
    fresh_accuracy = evaluate_accuracy(build_student(tiny_model, 0.35, 4, 0), tiny_bundle.loader("val"), 4).top1
    assert evaluate_accuracy(shelved, tiny_bundle.loader("val"), 4).top1 >= max(0.6, fresh_accuracy + 0.2)


def test_a_lean_student_has_no_squeeze_excite_nor_hard_activation_and_is_shelved_apart(tiny_bundle, teacher, tmp_path):
    from torchvision.ops import SqueezeExcitation

    shelf = StudentShelf(teacher, "teacher", tiny_bundle, TrainConfig(epochs=2, lr=0.1), tmp_path)
    lean = shelf.student(0.35, "lean")
    kinds = {type(m) for m in lean.modules()}
    assert SqueezeExcitation not in kinds and nn.Hardswish not in kinds and nn.Hardsigmoid not in kinds and nn.ReLU in kinds
    assert lean(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    # Its own file and key: the standard student of the same width is another network, not this one.
    assert shelf.path(0.35, "lean") != shelf.path(0.35) and shelf.key(0.35, "lean") != shelf.key(0.35)
    assert shelf.trained(0.35, "lean") and not shelf.trained(0.35)
    # A distill stage asking for it gets a copy of the shelved weights.
    context = StageContext(data=tiny_bundle, teacher=teacher, students=shelf.student)
    config = DistillationConfig(student_width=0.35, student_architecture="lean", finetune=TrainConfig(epochs=0))
    student = apply_stage(CompressedModel(copy.deepcopy(teacher)), config, context).module
    assert unchanged(student, snapshot(lean)) and student is not lean
    assert "lean" in config.describe()


class _Recording(nn.Module):
    """A network that keeps the batches it is trained on (its inputs in train mode)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network, self.seen = network, []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images.detach().clone())
        return self.network(images)


def test_mixup_shows_teacher_and_student_the_same_blended_batches(tiny_bundle, teacher):
    student, watched = _Recording(_fresh(5)), _Recording(teacher)
    loader = tiny_bundle.loader("train", train=True)
    fit(student, loader, TrainConfig(epochs=1, lr=0.05, max_batches_per_epoch=2), num_classes=4, progress=False,
        distillation=Distillation(watched, alpha=0.5, temperature=4.0, mixup=0.4))
    assert len(student.seen) == len(watched.seen) == 2
    first, _ = next(iter(tiny_bundle.loader("train", train=True)))  # the same seed: the batch before blending
    assert torch.equal(student.seen[0], watched.seen[0])
    # A blend of the batch with a shuffled copy of itself: the same mean image, different images.
    assert not torch.allclose(student.seen[0], first) and torch.allclose(student.seen[0].mean(0), first.mean(0), atol=1e-4)


def test_weight_averaging_ends_with_the_average_not_the_last_weights(tiny_bundle):
    schedule = TrainConfig(epochs=1, lr=0.5, max_batches_per_epoch=3)
    start, last, averaged = _fresh(7), _fresh(7), _fresh(7)
    fit(last, tiny_bundle.loader("train", train=True), schedule, num_classes=4, progress=False)
    fit(averaged, tiny_bundle.loader("train", train=True), schedule, num_classes=4, progress=False,
        weight_average=0.99999)
    assert not unchanged(last, snapshot(start))
    # An average that barely moves from its first step keeps nearly the first step's weights: far closer to the
    # start than the last weights are.
    def distance(model: nn.Module) -> float:
        return sum(float((a - b).abs().sum()) for a, b in zip(model.state_dict().values(), start.state_dict().values(), strict=True))

    assert distance(averaged) < 0.5 * distance(last)


def test_a_recipe_setting_names_another_student_and_one_without_them_keeps_the_old_key(tiny_bundle, teacher, tmp_path):
    schedule = TrainConfig(epochs=6, lr=0.1)
    def key(recipe: StudentsConfig) -> str:
        return StudentShelf(teacher, "teacher-a", tiny_bundle, schedule, tmp_path, recipe, seed=3).key(0.35)

    plain = StudentsConfig(mixup=0.0)
    keys = {key(StudentsConfig(mixup=0.4)), key(StudentsConfig(mixup=0.0, weight_average=0.998)), key(plain)}
    assert len(keys) == 3
    # A student distilled before the recipe settings existed is still found by the recipe without them.
    before = {"teacher": "teacher-a", "width": 0.35, "schedule": dataclasses.asdict(schedule), "alpha": plain.alpha,
              "temperature": plain.temperature, "seed": 3}
    assert key(plain) == hashlib.sha256(json.dumps(before, sort_keys=True, default=str).encode()).hexdigest()[:16]
    with pytest.raises(UserError):
        StudentsConfig(weight_average=1.0)
