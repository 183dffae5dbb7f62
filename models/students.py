"""Narrower students distilled from the baseline over its full schedule: trained once per width and
architecture, then reused.

A student has the baseline's architecture (MobileNetV3-Small or -Large) at another width. A fresh
MobileNetV3-Small of width 0.5 learns nothing useful in a trial's few fine-tune epochs; distilled
for the baseline's whole schedule it can match the baseline at a quarter of its weights. Training that
costs as much as the baseline, so each width is trained once per baseline (by whichever worker asks
first, the others wait for it) and every trial that picks the width starts from a copy.

A student is ``standard`` (torchvision's network of that width) or ``lean``: without its
squeeze-excite blocks and with ReLU for the hard activations. At 32x32 an XNNPACK program pays per
operator, not per multiply-add, and the lean network runs half the operators (ReLU fuses into the
convolution): random-weight width-0.5 int8 programs measured 0.40 of the float baseline's latency
standard and 0.24 lean.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from udacisense.common.files import save_torch
from udacisense.common.schema import bounded, check_bounds
from udacisense.datasources.loaders import DataBundle
from udacisense.evaluators.exclusive import exclusive, held
from udacisense.models.config import Arch
from udacisense.models.lean import lean_network
from udacisense.models.mobilenet import BUILDERS, ResizeInput, arch_of
from udacisense.training import Distillation, TrainConfig, fit


@dataclass(frozen=True)
class StudentsConfig:
    """How the shelf distils its students from the baseline (the ``[students]`` table).

    Fixed per study, so a stored student is the same whichever trial asked for it first; each trial
    then fine-tunes its copy with its own alpha, temperature and epochs.
    """

    # A student learns from 4,500 images what the baseline learnt: on cifar10-offline, width 0.5
    # reached val 0.534 in the baseline's 40 epochs and 0.564 in 80 (baseline 0.570).
    epochs: int = bounded(0, min=0, max=10000, doc="0: the baseline's epochs")
    alpha: float = bounded(0.7, min=0.0, max=1.0)
    temperature: float = bounded(4.0, min=0.1, max=100.0)
    # Consistent mixup gave the lean width-0.5 student of cifar10-offline +1.1 test points over none (paired 95%
    # [+0.3, +2.0] on 10,000 images) at 80 epochs, for 1.2x its time, and nothing at 160 (-0.0 [-0.8, +0.8], 1.03x
    # the time): kept for the shorter schedules it helps. A moving average of the weights gave +0.3 [-0.2, +0.9]
    # at 80: not resolved, so off (scripts/student_recipes.py, 2 cores, one recipe a core).
    mixup: float = bounded(0.4, min=0.0, max=10.0, doc="Beta(mixup, mixup) blends of each batch for teacher and "
                           "student alike (training.Distillation); 0: off")
    weight_average: float = bounded(0.0, min=0.0, max=0.99999, doc="per-step decay of the moving average of the "
                                    "weights the student keeps (training.fit); 0: its last weights")

    def __post_init__(self) -> None:
        check_bounds(self, "students")


StudentArchitecture = Literal["standard", "lean"]


def input_resize(module: nn.Module) -> ResizeInput | None:
    """The in-model resize a network starts with (an upsampled study's model), or None."""
    if isinstance(module, nn.Sequential) and len(module) and isinstance(module[0], ResizeInput):
        return module[0]
    return None


def build_student(current: nn.Module, width: float, num_classes: int, seed: int,
                  architecture: StudentArchitecture = "standard", *, arch: Arch | None = None) -> nn.Module:
    """A fresh MobileNetV3 of ``arch`` and ``width`` (``lean``: without squeeze-excite, ReLU activations) that takes
    the same input as ``current`` and normalises like it; ``arch`` None: the architecture of ``current``, which must
    then be an unmodified MobileNetV3 (the baseline)."""
    arch = arch or arch_of(current)
    # Seeded without touching the global generator, so the student does not depend on what ran before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student: nn.Module = BUILDERS[arch](num_classes=num_classes, width_mult=width)
    if architecture == "lean":
        student = lean_network(student, squeeze_excite=False, activation="relu")
    # The study sets the baseline's BatchNorm momentum for short CPU schedules (torchvision's 0.01
    # leaves eval-mode statistics unsettled after a few hundred steps); the student trains as briefly.
    momentum = next((m.momentum for m in current.modules() if isinstance(m, nn.BatchNorm2d)), None)
    if momentum is not None:
        for layer in student.modules():
            if isinstance(layer, nn.BatchNorm2d):
                layer.momentum = momentum
    return _behind_input_of(current, student)


def with_input_of(current: nn.Module, student: nn.Module) -> nn.Module:
    """``student`` (a copy) taking the input ``current`` takes: the same in-model resize, or none."""
    network = student[1] if isinstance(student, nn.Sequential) and input_resize(student) else student
    return _behind_input_of(current, copy.deepcopy(network))


def _behind_input_of(current: nn.Module, network: nn.Module) -> nn.Module:
    resize = input_resize(current)
    return nn.Sequential(ResizeInput(resize.size), network) if resize is not None else network


@dataclass
class StudentShelf:
    """The distilled students of one baseline, trained on first request and kept in ``directory``."""

    teacher: nn.Module
    teacher_key: str
    data: DataBundle
    baseline_schedule: TrainConfig
    directory: Path
    recipe: StudentsConfig = StudentsConfig()
    seed: int = 0
    progress: bool = False
    _loaded: dict[tuple[float, StudentArchitecture], nn.Module] = field(default_factory=dict, repr=False)
    # How long each student on the shelf took to distil, read with its weights (workers ask before every trial).
    _seconds: dict[tuple[float, StudentArchitecture], float] = field(default_factory=dict, repr=False)

    @property
    def schedule(self) -> TrainConfig:
        return replace(self.baseline_schedule.training_only(), epochs=self.recipe.epochs or self.baseline_schedule.epochs)

    def key(self, width: float, architecture: StudentArchitecture = "standard") -> str:
        """Everything that changes a student's weights; a different key means training it again."""
        payload = {"teacher": self.teacher_key, "width": width, "schedule": asdict(self.schedule),
                   "alpha": self.recipe.alpha, "temperature": self.recipe.temperature, "seed": self.seed}
        if architecture != "standard":  # standard students stored before architectures existed keep their key
            payload["architecture"] = architecture
        # Likewise students distilled before these recipe settings existed.
        payload |= {name: value for name, value in (("mixup", self.recipe.mixup),
                                                    ("weight_average", self.recipe.weight_average)) if value}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def name(self, width: float, architecture: StudentArchitecture = "standard") -> str:
        return f"width-{width:g}" + ("" if architecture == "standard" else f"-{architecture}")

    def path(self, width: float, architecture: StudentArchitecture = "standard") -> Path:
        return self.directory / f"{self.name(width, architecture)}.pt"

    def student(self, width: float, architecture: StudentArchitecture = "standard") -> nn.Module:
        """The student of ``width`` and ``architecture`` distilled over the full schedule (trained now if no worker has yet)."""
        if (width, architecture) not in self._loaded:
            # One worker trains a student while the others that need it wait, instead of all training it.
            with exclusive(self._lock(width, architecture)):
                self._loaded[width, architecture] = self._stored(width, architecture) or self._train(width, architecture)
        return self._loaded[width, architecture]

    def trained(self, width: float, architecture: StudentArchitecture = "standard") -> bool:
        """Whether the student of ``width`` and ``architecture`` is on the shelf already (asking never trains it)."""
        # Workers ask before every trial: a student found on disk is kept, not loaded again.
        if (width, architecture) not in self._loaded and (stored := self._stored(width, architecture)) is not None:
            self._loaded[width, architecture] = stored
        return (width, architecture) in self._loaded

    def distilling(self, width: float, architecture: StudentArchitecture = "standard") -> bool:
        """Whether a process of this machine is distilling the student now (it holds the student's lock; the kernel
        releases it when that process ends, however it ends)."""
        return not self.trained(width, architecture) and held(self._lock(width, architecture))

    def _lock(self, width: float, architecture: StudentArchitecture) -> Path:
        return self.directory / f"{self.name(width, architecture)}.lock"

    def train_seconds(self, width: float, architecture: StudentArchitecture = "standard") -> float | None:
        """How long the stored student took to distil; None when it is not on the shelf."""
        if not self.trained(width, architecture):
            return None
        return self._seconds.get((width, architecture)) or None

    def _stored(self, width: float, architecture: StudentArchitecture) -> nn.Module | None:
        path = self.path(width, architecture)
        if not path.is_file():
            return None
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged cache file is retrained, never trusted
            return None
        if not isinstance(checkpoint, dict) or checkpoint.get("key") != self.key(width, architecture):
            return None
        student = build_student(self.teacher, width, len(self.data.classes), self.seed, architecture)
        student.load_state_dict(checkpoint["state_dict"])
        self._seconds[width, architecture] = float(checkpoint.get("train_seconds", 0.0))
        return student.eval()

    def _train(self, width: float, architecture: StudentArchitecture) -> nn.Module:
        student = build_student(self.teacher, width, len(self.data.classes), self.seed, architecture)
        started = time.perf_counter()
        fit(student, self.data.loader("train", train=True), self.schedule, val=self.data.loader("val"),
            num_classes=len(self.data.classes), seed=self.seed, progress=self.progress,
            description=f"student {self.name(width, architecture)}", weight_average=self.recipe.weight_average,
            distillation=Distillation(self.teacher, self.recipe.alpha, self.recipe.temperature, self.recipe.mixup))
        self._seconds[width, architecture] = time.perf_counter() - started
        save_torch(self.path(width, architecture), {"key": self.key(width, architecture), "state_dict": student.state_dict(),
                                                    "width": width, "architecture": architecture,
                                                    "train_seconds": self._seconds[width, architecture]})
        return student.eval()
