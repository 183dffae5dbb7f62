"""Probes: what each structural option of a study's space costs on the phone's yardstick, measured before any
trial trains, and the options that cannot matter dropped from the study's space.

A dense program's bytes and single-thread latency are fixed by its structure, not by its trained weights
(``evaluators.structure``), so one lowered program per option tells what the option can buy. The probes lower
the baseline in every quantized form of the space, every other structure (each student, each squeeze-excite
and activation cut, the widest channel cut, the sparsest unstructured pruning) in float and in the baseline's
cheapest int8 form, and every form again on the cheapest structure (and the cheapest student with its last block
dropped, in that int8 form). The baseline's programs that the opening trials kept (``workers.opening``) are timed
here, not lowered again. An option leaves the space when

- its **cheapest case cannot meet the targets**: no probed program with it is within the latency and the
  size allowances (TorchScript int8 from the x86 backend on a phone's single thread), or
- it is **dominated on cost at no more accuracy risk**: another choice of the same setting, never riskier,
  is as cheap on both costs (unstructured pruning: XNNPACK stores weights dense, so the pruned program is
  the unpruned one; int4 Linear weights that save no bytes over int8).

Accuracy is never judged here (nothing is trained); the search judges it. The surviving students are
ranked by how close their cheapest program comes to zero latency and bytes in units of the allowances,
which is the order the search distils them in (``workers.students``), and the cheapest target-meeting
structure of each surviving family becomes a starting trial (``portfolio``).

Probes are made once per study: the report is stored on the study in one write (``StudyAttr.PROBES``), so
every worker, on any machine, reads the same decision, and a process killed while probing leaves none.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from udacisense.common.env import cpu_name
from udacisense.common.forked import map_forked
from udacisense.compression.architecture import ArchitectureConfig
from udacisense.compression.graph import lower
from udacisense.compression.pipeline import Pipeline
from udacisense.compression.pruning import StructuredPruningConfig, UnstructuredPruningConfig
from udacisense.compression.quantization import DynamicQuantConfig, StaticQuantConfig
from udacisense.compression.stage import CompressedModel, StageConfig, StageContext
from udacisense.evaluators.structure import Structure as ProgramStructure
from udacisense.evaluators.structure import structure_of
from udacisense.models.students import StudentArchitecture, build_student
from udacisense.runtime import load_runner, runtime_for, warm_executorch_lowering
from udacisense.search.study.records import Probe
from udacisense.search.study.trial_record import TrialRecord
from udacisense.search.study.workspace import Workspace
from udacisense.search.trial.measuring import Yardstick
from udacisense.spaces.space import SpaceConfig

BASELINE = "baseline"
FLOAT = "float"


@dataclass(frozen=True)
class Form:
    """How a structure ships: float, or a quantization type on a backend (with its Linear weight bits)."""

    quant_type: str  # "none", "dynamic" or "static" (QAT ships the static form)
    backend: str | None = None
    linear_bits: int = 8

    @property
    def name(self) -> str:
        if self.quant_type == "none":
            return FLOAT
        bits = " int4 Linear" if self.linear_bits == 4 else ""
        return f"{self.quant_type} {self.backend}{bits}"

    def stage(self) -> StageConfig | None:
        if self.quant_type == "none":
            return None
        if self.quant_type == "dynamic":
            return DynamicQuantConfig(backend=self.backend, linear_weight_bits=self.linear_bits)  # type: ignore[arg-type]
        return StaticQuantConfig(backend=self.backend, linear_weight_bits=self.linear_bits)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Structure:
    """A network shape the space can reach: its name, the space settings that choose it, and its accuracy risk
    against the other choices of those settings (lower: closer to the baseline)."""

    name: str
    build: Callable[[], nn.Module]
    choices: tuple[tuple[str, Any], ...] = ()  # (space setting, value) that select it
    risk: tuple[int, ...] = ()  # compared only between structures of the same settings
    float_only: bool = False  # a float program settles it (zeroed weights: the question is whether they cost less)

    @property
    def student(self) -> tuple[float, str] | None:
        """The (width, architecture) of the student it is, as distilled (not cut further), or None."""
        return self.choices[0][1] if len(self.choices) == 1 and self.choices[0][0] == "student" else None


@dataclass(frozen=True)
class Dropped:
    setting: str  # a [space] setting, or "stages" for a whole family, or "student" for one (width, architecture)
    value: Any
    reason: str


@dataclass(frozen=True)
class ProbeReport:
    probes: tuple[Probe, ...]
    dropped: tuple[Dropped, ...]
    students: tuple[tuple[float, str], ...]  # the surviving (width, architecture), most promising first
    portfolio: tuple[dict[str, Any], ...]  # starting trials: the cheapest target-meeting structure of each family
    minutes: float
    cpu: str

    def as_dict(self) -> dict[str, Any]:
        return {"probes": [p.as_dict() for p in self.probes], "dropped": [asdict(d) for d in self.dropped],
                "students": [list(s) for s in self.students], "portfolio": list(self.portfolio),
                "minutes": self.minutes, "cpu": self.cpu}

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> ProbeReport:
        return cls(tuple(Probe.from_dict(p) for p in stored["probes"]),
                   tuple(Dropped(d["setting"], _tuple(d["value"]), d["reason"]) for d in stored["dropped"]),
                   tuple((float(w), str(a)) for w, a in stored["students"]), tuple(stored["portfolio"]),
                   float(stored["minutes"]), str(stored["cpu"]))

    def describe(self) -> str:
        lines = [f"probes: {len(self.probes)} programs lowered and timed in {self.minutes:.1f} min ({self.cpu}), "
                 "before any training"]
        lines += [f"  dropped {d.setting} {_shown(d.value)}: {d.reason}" for d in self.dropped]
        if self.students:
            lines.append("  students, most promising first: " + ", ".join(student_name(w, a) for w, a in self.students))
        return "\n".join(lines)


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value  # JSON stores a (width, architecture) as a list


def _shown(value: Any) -> str:
    return student_name(*value) if isinstance(value, tuple) else str(value)


def student_name(width: float, architecture: str) -> str:
    return f"width {width:g}" + (" lean" if architecture == "lean" else "")


def student_risk(width: float, architecture: str) -> tuple[int, ...]:
    """A student's accuracy risk against the others (``Structure.risk``): narrower, then lean, is further from the
    baseline."""
    return -int(width * 100), int(architecture == "lean")


def student_structure(width: float, architecture: str) -> str:
    """The name of a student's probed structure."""
    return f"student {student_name(width, architecture)}"


def _forms(space: SpaceConfig) -> list[Form]:
    types = set(space.quant_types.options)
    forms = [Form("none")] if "none" in types else []
    for backend in space.quant_backends.options:
        if "dynamic" in types:
            forms.append(Form("dynamic", backend))
        if types & {"static", "qat"}:
            forms += [Form("static", backend, bits) for bits in sorted(set(space.linear_weight_bits.options))
                      if bits == 8 or backend == "xnnpack"]
    return forms


def _structures(workspace: Workspace) -> list[Structure]:
    space, baseline = workspace.study.space, workspace.baseline.model
    classes, seed = len(workspace.data.classes), workspace.study.seed
    copied = partial(copy.deepcopy, baseline)
    structures = [Structure(BASELINE, copied)]
    if "distill" in space.stages:
        for width in (w for w in space.student_widths.options if w):
            for architecture in space.student_architectures.options:
                structures.append(Structure(
                    student_structure(width, architecture), partial(_student, baseline, width, classes, seed, architecture),
                    (("student", (width, architecture)),), student_risk(width, architecture)))
    if "architecture" in space.stages:
        for squeeze_excite in space.architecture_squeeze_excite.options:
            for activation in space.architecture_activation.options:
                if (squeeze_excite, activation) == ("keep", "hard") or squeeze_excite == "least-costly":
                    continue
                cut = ArchitectureConfig(squeeze_excite=squeeze_excite, activation=activation)
                structures.append(Structure(cut.describe(), _cut(copied, cut, workspace),
                                            (("architecture_squeeze_excite", squeeze_excite),
                                             ("architecture_activation", activation))))
    if "prune" in space.stages:
        sparse = UnstructuredPruningConfig(amount=space.prune_amount.high)
        structures.append(Structure(sparse.describe(), _cut(copied, sparse, workspace), float_only=True))
    if "channels" in space.stages:
        widest = StructuredPruningConfig(ratio=space.channel_ratio.high, head_ratio=space.channel_head_ratio.high)
        structures.append(Structure(widest.describe(), _cut(copied, widest, workspace)))
    return structures


def depth_cut(space: SpaceConfig) -> ArchitectureConfig | None:
    """The least aggressive cut of whole blocks the space can sample (nothing else changed), or None."""
    blocks = max(1, space.architecture_drop_blocks.low)
    if "architecture" not in space.stages or blocks > space.architecture_drop_blocks.high:
        return None
    return ArchitectureConfig(squeeze_excite="keep", activation="hard", drop_blocks=blocks)


def depth_cut_name(structure: str, cut: ArchitectureConfig) -> str:
    """The name of the probed structure ``structure`` with ``cut``'s blocks dropped."""
    return f"{structure} → {cut.describe()}"


def depth_cut_structure(structure: Structure, cut: ArchitectureConfig, workspace: Workspace) -> Structure:
    """``structure`` with ``cut``'s blocks dropped."""
    return Structure(depth_cut_name(structure.name, cut), _cut(structure.build, cut, workspace),
                     (*structure.choices, ("architecture_drop_blocks", cut.drop_blocks)))


def _student(baseline: nn.Module, width: float, classes: int, seed: int, architecture: StudentArchitecture) -> nn.Module:
    return build_student(baseline, width, classes, seed, architecture).eval()


def _cut(source: Callable[[], nn.Module], stage: StageConfig, workspace: Workspace) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        model, _ = Pipeline((stage,)).run(CompressedModel(source()), _context(workspace))
        return model.module
    return build


def _context(workspace: Workspace) -> StageContext:
    return StageContext(data=workspace.data, seed=workspace.study.seed)  # int8 calibrates on train images, as in a trial


@dataclass(frozen=True)
class Lowered:
    """One probe's program, lowered (in a child process; ``measure_probes``) and waiting for its timing."""

    artifact: bytes
    runtime: str
    backend: str | None
    program: ProgramStructure  # keyed as a trial keys its model before lowering
    seconds: float  # to build, quantize and lower it


def _lowered(workspace: Workspace, structure: Structure, form: Form) -> Lowered:
    started = time.perf_counter()
    stage = form.stage()
    model = CompressedModel(structure.build())
    if stage is not None:
        model, _ = Pipeline((stage,)).run(model, _context(workspace))
    runtime = runtime_for(form.backend, workspace.study.evaluation.float_runtime)  # type: ignore[arg-type]
    program = structure_of(model.module, runtime, str(model.backend))
    lowered = lower(model, runtime, example_input=workspace.example_input)
    assert lowered.artifact is not None
    return Lowered(lowered.artifact, runtime, lowered.backend, program, time.perf_counter() - started)


def _kept_by_opening(structure: Structure, form: Form, opening: Sequence[TrialRecord]) -> Lowered | None:
    """The program an opening trial kept of the baseline in ``form`` (an opening trial quantizes the trained model
    alone), to be timed as a probe instead of lowered again; None where none kept one (e.g. it failed parity)."""
    stage = form.stage()
    if structure.name != BASELINE or stage is None:
        return None
    for record in opening:
        path, program = record.artifact_path, record.structure
        if (record.is_measured and record.pipeline == stage.describe() and program is not None
                and path is not None and path.is_file()):
            return Lowered(path.read_bytes(), record.runtime, record.backend, program, seconds=0.0)  # lowered already
    return None


def _timed(yardstick: Yardstick, workspace: Workspace, structure: Structure, form: Form, lowered: Lowered) -> Probe:
    started = time.perf_counter()
    runner = load_runner(lowered.artifact, lowered.runtime, lowered.backend)  # type: ignore[arg-type]
    timed = yardstick.measure_latency(runner, lowered.runtime).reference  # type: ignore[arg-type]
    reference = workspace.study.evaluation.reference_runtime
    return Probe(structure.name, form.name, timed.ratio, timed.ratio_p10, timed.ratio_p90,
                 len(lowered.artifact) / yardstick.baseline_size(reference),
                 lowered.seconds + time.perf_counter() - started, lowered.program, lowered.runtime, lowered.backend)


@dataclass(frozen=True)
class Measured:
    """The probes as measured, before anything is decided from them."""

    structures: tuple[Structure, ...]
    forms: tuple[Form, ...]
    probes: tuple[Probe, ...]
    minutes: float
    cpu: str


def measure_probes(workspace: Workspace, *, progress: bool = True, processes: int = 1,
                   opening: Sequence[TrialRecord] = ()) -> Measured:
    """Lower and time one program per structural option of the space (see the module's docstring).

    Each of the three rounds lowers its programs on ``processes`` forked children (lowering takes most of a
    probe: 10-15 s for a Small program here), then times them here one at a time, with no lowering running:
    a timing shares the machine with nothing but the search's other processes, as a trial's does.
    """
    started = time.perf_counter()
    study = workspace.study
    max_latency, max_size = study.targets.max_latency_ratio, study.targets.max_size_ratio
    yardstick = Yardstick(workspace)
    structures, forms = _structures(workspace), _forms(study.space)
    others = structures[1:]
    with_float = "none" in study.space.quant_types.options
    planned = (2 * len(forms) + sum(int(s.float_only or with_float) + int(not s.float_only) for s in others)
               + int(depth_cut(study.space) is not None and any(s.student is not None for s in others)))
    # The yardstick itself: the float baseline is what every ratio is taken against.
    probes: list[Probe] = [Probe(BASELINE, FLOAT, 1.0, 1.0, 1.0, 1.0, 0.0)] if with_float else []
    bar = tqdm(total=planned, desc="probes", disable=not progress, leave=False, unit="program")

    def probe(wanted: list[tuple[Structure, Form]]) -> None:
        todo = list(dict.fromkeys((s, f) for s, f in wanted if not any(p.structure == s.name and p.form == f.name
                                                                         for p in probes)))
        bar.update(len(wanted) - len(todo))
        programs = {(s, f): kept for s, f in todo if (kept := _kept_by_opening(s, f, opening)) is not None}
        lowering = [(s, f) for s, f in todo if (s, f) not in programs]
        to_pte = any(runtime_for(f.backend, study.evaluation.float_runtime) == "executorch"  # type: ignore[arg-type]
                     for _, f in lowering)
        programs |= zip(lowering, map_forked([partial(_lowered, workspace, s, f) for s, f in lowering], processes,
                                             before_fork=warm_executorch_lowering if to_pte else None), strict=True)
        for structure, form in todo:
            probes.append(_timed(yardstick, workspace, structure, form, programs[(structure, form)]))
            bar.update(1)

    probe([(structures[0], form) for form in forms])
    # The other structures in the baseline's cheapest int8 form, judged at the slow end of its timing rounds: one
    # lucky reading must not send every structure to a slow form.
    baseline_int8 = [p for p in probes if p.structure == BASELINE and p.form != FLOAT]
    int8 = None if not baseline_int8 else next(
        f for f in forms if f.name == min(baseline_int8, key=lambda p: p.cost(max_latency, max_size, slow=True)).form)
    probe([(structure, form) for structure in others
           for form in ([Form("none")] if structure.float_only or with_float else [])
           + ([int8] if int8 is not None and not structure.float_only else [])])
    # Every form again on the cheapest structure: each form's cheapest case is measured, not extrapolated.
    def cost(structure: Structure) -> float:
        return min(p.cost(max_latency, max_size) for p in probes if p.structure == structure.name)

    cheapest = min((s for s in structures if not s.float_only), key=cost)
    # And the most promising student with its last block dropped: at phone-app input sizes each block costs its
    # operators, whatever its width, so a student meeting the targets may become a cheaper one (a starting trial).
    wanted = [(cheapest, form) for form in forms]
    cut = depth_cut(study.space)
    students = [s for s in structures if s.student is not None]
    if cut is not None and int8 is not None and students:
        deeper = depth_cut_structure(min(students, key=cost), cut, workspace)
        structures.append(deeper)
        wanted.append((deeper, int8))
    probe(wanted)
    bar.close()
    return Measured(tuple(structures), tuple(forms), tuple(probes), (time.perf_counter() - started) / 60, cpu_name())
