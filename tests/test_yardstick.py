"""One yardstick for every trial: latency and size ratios to the float .pte, threads under control,
parity as a constraint, targets never ignored. Real tiny models, real artifacts, real timings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from tests.conftest import train_briefly
from udacisense.common.errors import UserError
from udacisense.compression.graph import lower
from udacisense.compression.quantization import StaticQuantConfig
from udacisense.compression.stage import CompressedModel, StageContext, apply_stage
from udacisense.evaluators.latency import measure_latency
from udacisense.evaluators.profile import profile_float_model
from udacisense.models.baseline import Baseline
from udacisense.models.config import ModelConfig
from udacisense.models.mobilenet import build_model
from udacisense.models.students import StudentsConfig, StudentShelf
from udacisense.runtime import Backend, LoweredRuntime, executorch_bytes, executorch_threads, load_runner, request_executorch_threads
from udacisense.search.results.export import export_trial, read_card, retime_front
from udacisense.search.results.front import missed_targets, pareto_trials, pick, trials_table
from udacisense.search.study.baseline_profile import BaselineProfile
from udacisense.search.study.config import TargetsConfig, parse_study
from udacisense.search.study.workspace import Workspace, baseline_artifact, first_test_image
from udacisense.search.trial import measuring
from udacisense.search.trial.early_stopping import stop_if_below_floor
from udacisense.search.trial.objective import TrialRunner
from udacisense.search.workers.runner import sampler_while_students_train
from udacisense.search.workers.students import train_students, undecided_students
from udacisense.spaces.distributions import Choice, IntRange
from udacisense.spaces.sampling import sample_pipeline
from udacisense.spaces.space import SpaceConfig

LOOSE = {"size_reduction": 0.0, "latency_reduction": 0.0, "max_accuracy_drop": 1.0}
TARGETS = TargetsConfig(**LOOSE)


def test_executorch_pool_has_the_requested_size_while_timing() -> None:
    # Any program loads into the pool: a two-operator one lowers in a second, a MobileNetV3 in 20.
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten()).eval()
    run = load_runner(executorch_bytes(model, torch.zeros(1, 3, 8, 8)), "executorch")
    report = measure_latency(run, torch.zeros(1, 3, 8, 8), runtime="executorch", warmup=1, runs=5, threads=1)
    assert executorch_threads() == 1 and report.executorch_threads == 1 and report.torch_threads == 1
    assert report.as_dict()["executorch_threads"] == 1
    # Once programs are loaded the pool cannot be resized safely: asking for another size is refused.
    with pytest.raises(UserError, match="thread pool has 1"):
        measure_latency(run, torch.zeros(1, 3, 8, 8), runtime="executorch", warmup=0, runs=3, threads=2)
    with pytest.raises(UserError):
        request_executorch_threads(2)


class ScriptedDiffers(nn.Module):
    """A model whose scripted artifact computes something else than the module: a broken lowering."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        if torch.jit.is_scripting():
            return logits.flip(1)
        return logits


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_bundle) -> Workspace:
    root = tmp_path_factory.mktemp("yardstick")
    study = parse_study({
        "name": "yardstick", "runs_dir": str(root), "data": {"source": "imagefolder", "root": "unused"},
        # The tiny test split has small margins (see test_quantization): int8 agrees on 85% of it, not 95%.
        "evaluation": {"latency_runs": 20, "latency_warmup": 3, "runtimes": ["torchscript", "executorch"],
                       "int8_min_agreement": 0.8},
        "search": {"latency_runs": 30, "retime_factor": 2}, "targets": LOOSE,
    })
    torch.manual_seed(0)
    model = train_briefly(build_model(ModelConfig(width_mult=0.25), num_classes=4, image_size=32), tiny_bundle, epochs=8)
    baseline = Baseline(model, root / "baseline", "test", True, 0.0)
    metrics = profile_float_model(model, tiny_bundle, runtimes=study.evaluation.runtimes, latency_runs=20,
                                  artifact_for=lambda runtime: baseline_artifact(baseline, runtime, first_test_image(tiny_bundle)),
                                  latency_warmup=3, threads=1, progress=False)
    students = StudentShelf(model, "test", tiny_bundle, study.baseline, root / "students")
    return Workspace(study, tiny_bundle, baseline, BaselineProfile(metrics), students)


def _runner(workspace: Workspace, runs_dir: Path | None = None, reference_runtime: str | None = None,
            **targets: float) -> TrialRunner:
    study = workspace.study
    if reference_runtime:
        study = dataclasses.replace(study, evaluation=dataclasses.replace(study.evaluation,
                                                                          reference_runtime=reference_runtime))
    if targets:
        study = dataclasses.replace(study, targets=TargetsConfig(**targets))
    if runs_dir is not None:  # trial numbers restart in every study: keep their artifact folders apart
        study = dataclasses.replace(study, runs_dir=str(runs_dir))
    workspace = dataclasses.replace(workspace, study=study)
    store = optuna.artifacts.FileSystemArtifactStore(str(workspace.study.run_dir / "artifacts"))
    (workspace.study.run_dir / "artifacts").mkdir(parents=True, exist_ok=True)
    return TrialRunner(workspace, store)


def _run_trial(study: optuna.Study, runner: TrialRunner, model: CompressedModel, runtime: str, backend: str | None) -> int:
    trial = study.ask()
    trial.set_user_attr("runtime", runtime)
    trial.set_user_attr("backend", backend)
    trial.set_user_attr("pipeline", f"{runtime} {backend}")
    values = runner._measure(trial, model, runtime)
    study.tell(trial, values)
    return trial.number


Mixed = list[tuple[CompressedModel, LoweredRuntime, Backend | None]]


def _mixed_models(workspace: Workspace) -> Mixed:
    """Float TorchScript, x86 int8 TorchScript and xnnpack int8 .pte: the same baseline three ways."""
    context = StageContext(data=workspace.data, seed=0)
    baseline = CompressedModel(workspace.baseline.model)
    return [(baseline, "torchscript", None),
            (apply_stage(baseline, StaticQuantConfig(backend="x86"), context), "torchscript", "x86"),
            (apply_stage(baseline, StaticQuantConfig(backend="xnnpack"), context), "executorch", "xnnpack")]


def _mixed(runner: TrialRunner, models: Mixed) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for model, runtime, backend in models:
        _run_trial(study, runner, model, runtime, backend)
    return study


@pytest.fixture(scope="module")
def mixed(workspace) -> tuple[optuna.Study, Mixed]:
    """The mixed trials measured against the float .pte, and the programs they lowered (to measure them again without
    lowering: a .pte takes 20-40 s)."""
    lowered: list[CompressedModel] = []

    def lower_and_keep(model: CompressedModel, runtime: LoweredRuntime | None = None, **kwargs) -> CompressedModel:
        lowered.append(lower(model, runtime, **kwargs))
        return lowered[-1]

    models = _mixed_models(workspace)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(measuring, "lower", lower_and_keep)
        study = _mixed(_runner(workspace), models)
    return study, [(program, runtime, backend) for program, (_, runtime, backend) in zip(lowered, models, strict=True)]


@pytest.fixture(scope="module")
def mixed_study(mixed) -> optuna.Study:
    return mixed[0]


@pytest.mark.slow
def test_knee_and_fastest_return_the_absolutely_fastest_artifact(workspace, mixed, tmp_path) -> None:
    mixed_study, programs = mixed
    trials = mixed_study.trials
    assert all(t.state is optuna.trial.TrialState.COMPLETE for t in trials)
    for t in trials:  # one denominator for every runtime: the float .pte timed in the same rounds
        assert t.user_attrs["reference_runtime"] == "executorch"
        assert t.user_attrs["latency_ratio_p10"] <= t.user_attrs["latency_ratio_p90"]
        assert t.user_attrs["executorch_threads"] == 1 and t.user_attrs["torch_threads"] == 1
        assert t.constraints.keys() == {"accuracy", "size", "latency", "parity"}
    # Every TorchScript artifact, whatever its ratio to float TorchScript, is slower than the .pte here ...
    pte = next(t for t in trials if t.user_attrs["runtime"] == "executorch")
    assert all(pte.user_attrs["latency_ms"] < t.user_attrs["latency_ms"] for t in trials if t is not pte)
    # ... and on one yardstick its ratio is the smallest, so the knee takes it.
    assert min(trials, key=lambda t: t.values[1]) is pte
    baseline_val = workspace.profile.val_top1
    table = trials_table(pareto_trials(trials), TargetsConfig(**LOOSE), baseline_val)
    assert pick(table, "knee", TARGETS) == pte.number
    retimed = retime_front(table, mixed_study, _runner(workspace).yardstick)
    assert retimed["retimed"].all() and pick(retimed, "knee", TARGETS) == pte.number
    # `fastest` needs a point meeting the targets: an int8 .pte of this tiny model is about as fast as the
    # float .pte (ratio ~1, within noise), so the same artifacts are measured on a TorchScript yardstick too.
    runner = _runner(workspace, runs_dir=tmp_path, reference_runtime="torchscript")
    on_torchscript = _mixed(runner, programs)
    assert {t.user_attrs["reference_runtime"] for t in on_torchscript.trials} == {"torchscript"}
    pte = next(t for t in on_torchscript.trials if t.user_attrs["runtime"] == "executorch")
    assert pte.values[1] < 0.6 and pte.user_attrs["latency_ratio_same_runtime"] > pte.values[1]
    table = trials_table(pareto_trials(on_torchscript.trials), TargetsConfig(**LOOSE), baseline_val)
    assert pick(table, "knee", TARGETS) == pick(table, "fastest", TARGETS) == pte.number


def test_a_parity_failure_keeps_no_artifact_and_is_infeasible(workspace, tmp_path) -> None:
    runner = _runner(workspace, runs_dir=tmp_path / "runs")
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    number = _run_trial(study, runner, CompressedModel(ScriptedDiffers(workspace.baseline.model).eval()),
                        "torchscript", None)
    trial = study.trials[number]
    assert trial.state is optuna.trial.TrialState.COMPLETE
    assert trial.user_attrs["parity_ok"] is False and trial.constraints["parity"] > 0
    assert "artifact_path" not in trial.user_attrs
    assert not (runner.workspace.study.run_dir / "trials").exists()
    table = trials_table(study.trials, TargetsConfig(**LOOSE), 0.0)
    assert not table["meets_all"].any()
    with pytest.raises(UserError, match="parity"):
        pick(table, "knee", TARGETS)
    with pytest.raises(UserError, match="parity"):
        export_trial(runner.workspace, study, number, tmp_path / "export", runner.yardstick)
    assert not (tmp_path / "export").exists()


def test_an_export_failing_parity_leaves_no_folder(workspace, mixed_study, tmp_path) -> None:
    runner = _runner(workspace)
    trial = mixed_study.trials[0]
    reference = Path(trial.user_attrs["artifact_path"]).parent / "reference_logits.pt"
    original = reference.read_bytes()
    try:
        torch.save(torch.randn(len(workspace.data.test), 4), reference)  # logits the artifact cannot match
        with pytest.raises(UserError, match="disagrees"):
            export_trial(workspace, mixed_study, trial.number, tmp_path / "export", runner.yardstick)
    finally:
        reference.write_bytes(original)
    assert not any(tmp_path.iterdir())  # neither the folder nor its temporary twin


def test_an_export_without_a_feasible_point_says_so_and_records_it(workspace, mixed_study, tmp_path) -> None:
    tight = {"size_reduction": 0.99, "latency_reduction": 0.99, "max_accuracy_drop": 0.0}
    runner = _runner(workspace, **tight)
    table = trials_table(pareto_trials(mixed_study.trials), TargetsConfig(**tight),
                         workspace.profile.val_top1)
    assert not table["meets_all"].any()
    with pytest.raises(UserError, match="nothing to choose"):
        pick(table, "fastest", TargetsConfig(**tight))
    chosen = pick(table, "knee", TargetsConfig(**tight))
    paragraph = missed_targets(table, chosen, TargetsConfig(**tight), workspace.profile.val_top1)
    assert paragraph is not None and paragraph.startswith("No point on the Pareto front meets all targets.")
    assert "meets_targets = false" in paragraph
    result = export_trial(runner.workspace, mixed_study, chosen, tmp_path / "export", runner.yardstick)
    assert not result.meets_targets and result.constraints["latency"] > 0
    card, parity = read_card(result.artifact), result.parity  # `verify` itself: tests/test_read_only.py
    assert card["targets"]["meets_targets"] is False and card["targets"]["constraints"]["size"] > 0
    assert card["metrics"]["executorch_threads"] == 1 and card["metrics"]["reference_runtime"] == "executorch"
    assert card["parity"]["reference_sha256"] and parity.top1_agreement >= card["parity"]["rule"]["min_agreement"]


def test_a_trial_clearly_below_the_floor_stops_before_lowering(workspace) -> None:
    runner = _runner(workspace, size_reduction=0.0, latency_reduction=0.0, max_accuracy_drop=0.1)
    margin = runner.workspace.study.search.below_floor_margin
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned, match="not lowered"):
        stop_if_below_floor(trial, runner.floor - margin - 0.01, runner.floor, margin)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    stopped = study.trials[0]
    assert stopped.user_attrs["stage"] == "below-floor" and stopped.constraints["accuracy"] > margin
    # Within the margin the artifact may still reach the floor (int8 moves accuracy a little): it is measured.
    stop_if_below_floor(study.ask(), runner.floor - margin / 2, runner.floor, margin)


def test_a_trial_that_picks_a_narrower_student_starts_from_the_shelf(workspace, tmp_path) -> None:
    runner = _runner(workspace, tmp_path, size_reduction=0.0, latency_reduction=0.0, max_accuracy_drop=1.0)
    space = SpaceConfig(stages=("distill",), required=("distill",), student_widths=Choice((0.1,)),
                        student_architectures=Choice(("standard",)), quant_types=Choice(("none",)), finetune_epochs=IntRange(1, 1))
    # A float TorchScript artifact: the student's start is tested here, not lowering (a float .pte takes 20 s).
    evaluation = dataclasses.replace(runner.workspace.study.evaluation, float_runtime="torchscript")
    study_config = dataclasses.replace(runner.workspace.study, space=space, evaluation=evaluation)
    shelf = dataclasses.replace(workspace.students, directory=tmp_path / "students", recipe=StudentsConfig(epochs=2),
                                _loaded={})
    runner.workspace = dataclasses.replace(runner.workspace, study=study_config, students=shelf)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.optimize(runner, n_trials=1)

    trial = study.trials[0]
    assert trial.state is optuna.trial.TrialState.COMPLETE, (trial.user_attrs.get("stage"), trial.user_attrs.get("pruned_reason"))
    assert "width=0.1" in trial.user_attrs["pipeline"]
    # The student was distilled once, as a phase of its own, and kept.
    assert trial.user_attrs["phase_seconds"]["student training"] > 0
    assert shelf.path(0.1).is_file() and shelf.trained(0.1)


def test_while_the_first_worker_distils_a_student_the_others_sample_trials_that_need_none(workspace, tmp_path) -> None:
    space = SpaceConfig(stages=("distill",), required=("distill",), student_widths=Choice((0.0, 0.1)),
                        student_architectures=Choice(("standard",)), quant_types=Choice(("none",)), finetune_epochs=IntRange(1, 1))
    shelf = dataclasses.replace(workspace.students, directory=tmp_path / "students", recipe=StudentsConfig(epochs=1),
                                _loaded={})
    other_worker = dataclasses.replace(workspace, study=dataclasses.replace(workspace.study, space=space), students=shelf)
    base = optuna.samplers.RandomSampler(seed=0)

    def widths(sampler: optuna.samplers.BaseSampler) -> set[float]:
        study = optuna.create_study(sampler=sampler, directions=["maximize", "minimize", "minimize"])
        trials = [study.ask() for _ in range(12)]
        for trial in trials:
            sample_pipeline(trial, space)
        return {trial.params["student_width"] for trial in trials}

    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    assert undecided_students(study, other_worker, None) == [(0.1, "standard")]
    assert widths(sampler_while_students_train(base, study, other_worker, None)) == {0.0}
    # The first worker's shelf (same folder) distils it; the others see it on disk and sample it again.
    first_worker = dataclasses.replace(other_worker, students=dataclasses.replace(shelf, _loaded={}))
    train_students(first_worker)
    assert shelf.trained(0.1) and undecided_students(study, other_worker, None) == []
    assert sampler_while_students_train(base, study, other_worker, None) is base
    assert widths(base) == {0.0, 0.1}
