"""Knowledge distillation: a student learns from the teacher's softened outputs as well as the labels.

The student is either the current model (recovering accuracy lost by earlier stages) or a narrower
network of the teacher's architecture that replaces it: one already distilled over the full schedule
when the context has a shelf of students (the search), else a fresh one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

from udacisense.common.errors import UserError
from udacisense.common.schema import bounded, check_bounds
from udacisense.compression.finetune import finetune
from udacisense.compression.stage import CompressedModel, ModelForm, Signature, StageContext, register_stage, require_form
from udacisense.models.mobilenet import arch_of
from udacisense.models.students import StudentArchitecture, build_student, with_input_of
from udacisense.training import Distillation, TrainConfig


@dataclass(frozen=True)
class DistillationConfig:
    """Fine-tune on ``alpha * T^2 * KL(student_T || teacher_T) + (1 - alpha) * CE``."""

    kind: ClassVar[str] = "distill"

    alpha: float = bounded(0.7, min=0.0, max=1.0)
    temperature: float = bounded(4.0, min=0.1, max=100.0)
    student_width: float = bounded(0.0, min=0.0, max=2.0, doc="0: distil into the current model")
    # With a width: torchvision's network, or the operator-lean one (no squeeze-excite, ReLU; models.students).
    student_architecture: StudentArchitecture = "standard"
    finetune: TrainConfig = TrainConfig(epochs=5, lr=0.05)

    def __post_init__(self) -> None:
        check_bounds(self, self.kind)
        # torchvision rounds channels to multiples of 8, so widths under 0.1 all give the same network.
        if self.student_width and not 0.1 <= self.student_width <= 2.0:
            raise UserError(f"`student_width` is {self.student_width}, out of range.",
                            "set `student_width` to 0 (distil into the current model) or between 0.1 and 2.")

    def transition(self, signature: Signature) -> Signature:
        require_form(self, signature, ModelForm.FLOAT)
        return signature

    def describe(self) -> str:
        width = f", width={self.student_width:g}" if self.student_width else ""
        width += f" {self.student_architecture}" if self.student_width and self.student_architecture != "standard" else ""
        return f"distill(T={self.temperature:g}, α={self.alpha:g}{width})"


@register_stage(DistillationConfig)
def distill(model: CompressedModel, config: DistillationConfig, context: StageContext) -> CompressedModel:
    if context.teacher is None:
        raise UserError(f"`{config.describe()}` needs a teacher, and none was given.",
                        "train or load the baseline first and pass it as the teacher, or remove the distill stage.")
    if config.student_width and context.students is not None:
        student = with_input_of(model.module, context.students(config.student_width, config.student_architecture))
    elif config.student_width:
        # The current model may have lost blocks to earlier surgery; the teacher (the baseline) has not.
        student = build_student(model.module, config.student_width, context.num_classes, context.seed,
                                config.student_architecture, arch=arch_of(context.teacher))
    else:
        student = copy.deepcopy(model.module)
    finetune(student, config.finetune, context, description=config.describe(),
             distillation=Distillation(context.teacher, config.alpha, config.temperature))
    return model.evolve(module=student)
