"""What a stage is: a frozen config, a function ``(model, config, context) -> model``, and the forms it accepts.

A model moves through forms as a pipeline runs: float (trainable) -> quantized (int8, frozen)
-> lowered (a runtime artifact). Each stage config maps a Signature (form, backend) to the next
one, so a pipeline can reject an impossible order before spending any compute.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import Field, dataclass, replace
from typing import Any, ClassVar, Protocol, TypeVar

from torch import nn

from udacisense.common.errors import IncompatiblePipelineError
from udacisense.datasources.loaders import DataBundle
from udacisense.models.students import StudentArchitecture
from udacisense.runtime import Backend, Delegation, Runtime
from udacisense.training import EpochEndHook


class ModelForm(enum.Enum):
    FLOAT = "float"
    QUANTIZED = "quantized"
    LOWERED = "lowered"


@dataclass(frozen=True)
class CompressedModel:
    """A model and what it has become: its form, the quantization backend, the runtime it targets."""

    module: nn.Module
    form: ModelForm = ModelForm.FLOAT
    backend: Backend | None = None
    runtime: Runtime = "eager"
    # Bytes of the lowered artifact (TorchScript or .pte) once a graph stage has produced one.
    artifact: bytes | None = None
    # How much of a ``.pte`` artifact the XNNPACK delegate runs; None until lowered to ExecuTorch.
    delegation: Delegation | None = None

    def evolve(self, **changes: object) -> CompressedModel:
        return replace(self, **changes)  # type: ignore[arg-type]  # replace() cannot type-check **kwargs of object


@dataclass(frozen=True)
class StageContext:
    """Everything a stage may need besides the model: data, the teacher, the seed, hooks."""

    data: DataBundle
    teacher: nn.Module | None = None
    seed: int = 0
    progress: bool = False
    # Called after every fine-tune epoch with (epoch, val top-1); the search uses it to stop hopeless trials.
    epoch_end_hooks: tuple[EpochEndHook, ...] = ()
    # (width, architecture) -> a student already distilled over the full schedule (the search's shelf
    # of students); None: a narrower student starts from fresh weights.
    students: Callable[[float, StudentArchitecture], nn.Module] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.data.classes)


@dataclass(frozen=True)
class Signature:
    """What a pipeline knows about a model before running anything: its form and quantization backend."""

    form: ModelForm = ModelForm.FLOAT
    backend: Backend | None = None


class StageConfig(Protocol):
    """Every stage config is a frozen dataclass that can say, without compute, what it does to a model."""

    kind: ClassVar[str]
    # What makes it a dataclass to the type checker (``dataclasses.replace`` takes it).
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    def transition(self, signature: Signature) -> Signature:
        """The signature after this stage; raises IncompatiblePipelineError if it cannot run on ``signature``."""
        ...

    def describe(self) -> str:
        """A short readable form, e.g. ``prune(l1, 0.50)``."""
        ...


def require_form(config: StageConfig, signature: Signature, *allowed: ModelForm) -> None:
    """Raise IncompatiblePipelineError unless ``signature.form`` is one of ``allowed``."""
    if signature.form not in allowed:
        raise IncompatiblePipelineError(
            f"`{config.describe()}` cannot run on a {signature.form.value} model "
            f"(it needs {' or '.join(f.value for f in allowed)}).",
            "reorder the pipeline: training and pruning stages come before quantization, "
            "and lowering to a runtime comes last.",
        )


def check_runs_on(config: StageConfig, model: CompressedModel) -> None:
    """Raise IncompatiblePipelineError if ``config`` cannot run on ``model`` (stages call this first)."""
    config.transition(Signature(model.form, model.backend))


C = TypeVar("C")
StageFunction = Callable[[CompressedModel, C, StageContext], CompressedModel]
_STAGES: dict[type, StageFunction] = {}


def register_stage(config_type: type[C]) -> Callable[[StageFunction], StageFunction]:
    """Declare ``fn`` as the implementation of ``config_type``; stages are looked up by config type."""

    def decorate(fn: StageFunction) -> StageFunction:
        _STAGES[config_type] = fn
        return fn

    return decorate


def apply_stage(model: CompressedModel, config: StageConfig, context: StageContext) -> CompressedModel:
    """Run one stage. The input model is never mutated; the stage works on a copy."""
    try:
        fn = _STAGES[type(config)]
    except KeyError:
        raise TypeError(f"no stage is registered for {type(config).__name__}") from None
    return fn(model, config, context)
