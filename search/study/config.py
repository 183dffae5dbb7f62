"""A study definition: one TOML file in ``studies/``, validated completely before any work starts."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from udacisense.common.errors import UserError
from udacisense.common.schema import bounded, parse_dataclass
from udacisense.datasources.config import DataConfig
from udacisense.models.config import BaselineConfig, ModelConfig
from udacisense.models.students import StudentsConfig
from udacisense.runtime.backends import LoweredRuntime, Runtime, runtime_for
from udacisense.spaces.space import SpaceConfig


@dataclass(frozen=True)
class EvaluationConfig:
    """How models are measured (the ``[evaluation]`` table)."""

    latency_runs: int = bounded(100, min=3, max=100000)
    latency_warmup: int = bounded(10, min=0, max=10000)
    threads: int = bounded(1, min=1, max=256)
    runtimes: tuple[Runtime, ...] = ("eager", "torchscript", "executorch")
    float_runtime: LoweredRuntime = "executorch"
    # The deployment runtime: the float baseline lowered to it is the denominator of every latency
    # and size ratio, whatever runtime a candidate ships in, so all trials share one yardstick.
    reference_runtime: LoweredRuntime = "executorch"
    # A float artifact must compute what its PyTorch model computes: same top-1 on every test image,
    # logits within this absolute tolerance. Int8 artifacts must agree on this share of test images.
    float_logit_tolerance: float = bounded(1e-3, min=0.0, max=100.0, doc="max |logit difference|, float artifacts")
    int8_min_agreement: float = bounded(0.95, min=0.0, max=1.0, doc="top-1 agreement required of int8 artifacts")

    def __post_init__(self) -> None:
        if self.reference_runtime not in self.runtimes:
            raise UserError(f"`evaluation.reference_runtime` is {self.reference_runtime!r}, which "
                            f"`evaluation.runtimes` ({list(self.runtimes)}) does not measure.",
                            f"add {self.reference_runtime!r} to `evaluation.runtimes`.")


@dataclass(frozen=True)
class TargetsConfig:
    """What the app team asked for, relative to the float baseline in `evaluation.reference_runtime` (``[targets]``)."""

    size_reduction: float = bounded(0.30, min=0.0, max=0.99)
    latency_reduction: float = bounded(0.40, min=0.0, max=0.99)
    max_accuracy_drop: float = bounded(0.05, min=0.0, max=1.0)

    @property
    def max_latency_ratio(self) -> float:
        """The latency allowed, as a ratio to the float baseline's."""
        return 1 - self.latency_reduction

    @property
    def max_size_ratio(self) -> float:
        """The artifact bytes allowed, as a ratio to the float baseline's."""
        return 1 - self.size_reduction


@dataclass(frozen=True)
class SearchConfig:
    """Budget, sampler and early stopping of the search (``[search]``)."""

    n_trials: int = bounded(40, min=1, max=100000)
    timeout_minutes: float = bounded(0.0, min=0.0, doc="minutes from the trained baseline, the opening trials and "
                                     "probes included, after which no trial starts; 0: no time limit")
    sampler: Literal["nsga2", "tpe", "random", "nsga3"] = "tpe"  # scripts/sampler_benchmark.py: see the README
    population_size: int = bounded(12, min=2, max=1000)
    early_stopping: bool = True
    # Stop a trial whose val accuracy is this far below what completed trials had at the same step.
    patience_margin: float = bounded(0.2, min=0.0, max=1.0)
    # Lowering and measuring a .pte costs 20-40 s of CPU (more than most fine-tunes): a trial whose
    # PyTorch model ends this far below the accuracy floor is infeasible whatever its artifact, so
    # it stops there unless `lower_below_floor` is set (then every trial is lowered and measured).
    lower_below_floor: bool = False
    # Successive halving over fine-tune epochs (search.halving): a stage is looked at after 1, η, η², ...
    # epochs, and only the top 1/η of the trials that reached that point train on. 0 or 1: off.
    halving_rate: int = bounded(3, min=0, max=100, doc="η of successive halving over fine-tune epochs; 0 or 1: off")
    below_floor_margin: float = bounded(0.02, min=0.0, max=1.0, doc="accuracy below the floor that stops a trial before lowering")
    default_pick: Literal["knee", "smallest", "fastest", "most-accurate"] = "knee"
    latency_runs: int = bounded(60, min=3, max=10000, doc="runs per trial latency measurement")
    # Before a pick, the front's candidates are timed again with this many times latency_runs.
    retime_factor: int = bounded(5, min=1, max=1000, doc="re-timing runs before a pick, as a multiple of latency_runs")
    # Those runs are split into independent blocks (each a fresh load of both programs, the blocks of the
    # front's candidates interleaved): the ratio's interval across blocks covers the run-to-run spread
    # (the float reference measured 0.27-0.47 ms across runs here) that rounds within one run miss.
    retime_blocks: int = bounded(5, min=1, max=100, doc="independent timing blocks before a pick and at export")
    # Screening (search.screening): a trained candidate whose optimistic point (its model's accuracy plus
    # the 90th percentile of the model-to-artifact gaps seen and this margin; its structure's measured
    # latency, or the cost model's less this margin or its held-out error) is dominated by a measured
    # trial is not lowered.
    screening: bool = True
    screen_latency_margin: float = bounded(0.10, min=0.0, max=0.9, doc="relative margin on cost-model estimates")
    screen_accuracy_margin: float = bounded(0.005, min=0.0, max=1.0, doc="accuracy margin on a screened model's top-1")
    # Known-good pipelines queued before the sampler's own trials: each a table of sampled parameters
    # (the rest are sampled), e.g. {use_distill = false, use_channels = false, quant_type = "static"}.
    portfolio: tuple[dict[str, str | int | float | bool], ...] = ()
    # Probes (search.workers.probes): before the first trial, lower and time one program per structural option
    # of the space, drop the options that cannot meet the targets or are dominated on cost, rank the students
    # and queue the cheapest target-meeting structure of each family.
    probes: bool = True
    # Stop once the measured front has not grown beyond its noise for this many minutes (and no student the
    # probes ranked is still undecided); 0: run to the time limit or the trial budget.
    plateau_minutes: float = bounded(8.0, min=0.0, doc="minutes without a front improvement beyond noise that end a search")
    # A worker that misses heartbeats for 4x this long is presumed dead; its trial is failed and retried.
    heartbeat_seconds: int = bounded(30, min=1, max=3600)


@dataclass(frozen=True)
class StudyConfig:
    name: str
    data: DataConfig
    seed: int = 0
    storage: str = ""
    runs_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    students: StudentsConfig = field(default_factory=StudentsConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise UserError(f"Study name {self.name!r} is not usable as a folder name.",
                            "use letters, digits, '-', '_' or '.' only.")
        # A trial's ratios in its own runtime divide by the baseline measured there: without it, every such trial fails.
        unmeasured = sorted(_shipped_runtimes(self.space, self.evaluation.float_runtime) - set(self.evaluation.runtimes))
        if unmeasured:
            raise UserError(f"The space's trials can ship in {' and '.join(unmeasured)}, which `evaluation.runtimes` "
                            f"({list(self.evaluation.runtimes)}) does not measure the baseline in: every such trial "
                            "would fail.", f"add {' and '.join(map(repr, unmeasured))} to `evaluation.runtimes`, or leave "
                            "out of `[space]` the backends (`quant_backends`) that ship there.")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{self.run_dir / 'study.db'}"


def _shipped_runtimes(space: SpaceConfig, float_runtime: LoweredRuntime) -> set[LoweredRuntime]:
    """The runtimes the space's trials can ship in: a quantized model in its backend's, a float one in ``float_runtime``
    (the quantize family runs in every trial of a space that has it: only its "none" type leaves a model float)."""
    types = set(space.quant_types.options) if "quantize" in space.stages else {"none"}
    shipped = {float_runtime} if "none" in types else set()
    if types - {"none"}:
        shipped |= {runtime_for(backend) for backend in space.quant_backends.options}
    return shipped


def parse_study(mapping: Mapping[str, Any]) -> StudyConfig:
    return parse_dataclass(StudyConfig, mapping)


def load_study(path: str | Path, overrides: Mapping[str, Any] | None = None) -> StudyConfig:
    """Read and validate a study file. ``overrides`` maps dotted keys (``data.root``) to values."""
    path = Path(path)
    if not path.is_file():
        known = sorted(p.name for p in Path("studies").glob("*.toml")) if Path("studies").is_dir() else []
        examples = f" (here: {', '.join('studies/' + k for k in known)})" if known else ""
        raise UserError(f"The study file {path} does not exist.",
                        f"pass the path of an existing study .toml file with `--study`{examples}.")
    try:
        mapping = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid TOML: {error}.", "fix the syntax at the position shown.") from None
    for dotted, value in (overrides or {}).items():
        table = mapping
        *parents, leaf = dotted.split(".")
        for key in parents:
            table = table.setdefault(key, {})
        table[leaf] = value
    try:
        return parse_study(mapping)
    except UserError as error:
        raise UserError(f"{path}: {error.problem}", error.fix) from None
