"""The search's decision logic on small real inputs: sampling, order checks, early stopping, budget, front."""

from __future__ import annotations

import importlib.util
import time

import joblib
import optuna
import pandas as pd
import pytest
import torch

from tests.conftest import REPO
from tests.test_report import _synthetic_study
from udacisense.common.errors import IncompatiblePipelineError, UserError
from udacisense.compression.pipeline import Pipeline
from udacisense.compression.pruning import StructuredPruningConfig, UnstructuredPruningConfig
from udacisense.compression.quantization import StaticQuantConfig
from udacisense.compression.stage import StageContext
from udacisense.evaluators.intervals import pack_correct
from udacisense.models.config import ModelConfig
from udacisense.models.mobilenet import build_model
from udacisense.runtime import Delegation
from udacisense.search.report.trial_facts import epoch_seconds_by_kind, remaining_training
from udacisense.search.results.export import delegation_line
from udacisense.search.results.front import pareto_trials, pick, trials_table
from udacisense.search.results.hypervolume import hypervolume, hypervolume_of_first, target_region
from udacisense.search.study.budget import budget_left, is_surplus
from udacisense.search.study.config import TargetsConfig, load_study
from udacisense.search.study.records import Attr, StopReason, store
from udacisense.search.study.storage import open_study
from udacisense.search.study.trial_record import TrialRecord
from udacisense.search.trial.early_stopping import AccuracyMonitor, StopRule, point_of, stop_rule_for
from udacisense.search.trial.feasibility import footprint, infeasibility
from udacisense.search.trial.phases import PhaseClock
from udacisense.search.workers.runner import WorkerPlan, plan_workers, requeue
from udacisense.spaces.distributions import Choice, IntRange
from udacisense.spaces.sampling import orders, sample_pipeline
from udacisense.spaces.space import SpaceConfig

TrialState = optuna.trial.TrialState


def test_every_order_of_the_trainable_stages_is_sampled_and_quantization_comes_last() -> None:
    space = SpaceConfig(stages=("prune", "quantize", "channels"), required=("prune", "channels"), quant_types=Choice(("static",)))
    assert orders(space) == ["prune>channels", "channels>prune"]
    for order in orders(space):
        trial = optuna.trial.FixedTrial({"order": order, "quant_type": "static", "quant_backend": "x86",
                                         "float_prefix_blocks": 0, "finetune_epochs": 1, "finetune_lr": 0.01,
                                         "prune_method": "oneshot", "prune_amount": 0.5, "prune_scope": "global",
                                         "channel_ratio": 0.3, "channel_head_ratio": 0.5, "channel_importance": "l2"})
        pipeline = sample_pipeline(trial, space)
        assert [s.kind for s in pipeline.stages] == [*order.split(">"), "ptq"]
        pipeline.check()


def test_a_written_pipeline_in_an_impossible_order_is_still_rejected_without_compute() -> None:
    written = Pipeline((StaticQuantConfig(backend="x86"), StructuredPruningConfig(ratio=0.3)))
    with pytest.raises(IncompatiblePipelineError, match="cannot run on a quantized"):
        written.check()


def _spaces_to_sample() -> list[tuple[str, SpaceConfig]]:
    every_family = SpaceConfig(stages=("quantize", "fuse", "resolution", "channels", "prune", "distill"))
    spaces = [("default", SpaceConfig()), ("every family", every_family),
              ("every family, all required", SpaceConfig(stages=every_family.stages, required=every_family.stages))]
    return spaces + [(path.name, load_study(path).space) for path in sorted((REPO / "studies").glob("*.toml"))]


@pytest.mark.parametrize(("name", "space"), _spaces_to_sample(), ids=[name for name, _ in _spaces_to_sample()])
@pytest.mark.parametrize("sampler", ["random", "tpe", "nsga2"])
def test_every_sampled_pipeline_passes_the_order_check(name: str, space: SpaceConfig, sampler: str) -> None:
    samplers = {"random": optuna.samplers.RandomSampler(seed=1),
                "tpe": optuna.samplers.TPESampler(seed=1, multivariate=True, group=True, n_startup_trials=5),
                "nsga2": optuna.samplers.NSGAIISampler(seed=1, population_size=6)}
    study = optuna.create_study(sampler=samplers[sampler], directions=["maximize", "minimize"])
    seen: set[tuple[str, ...]] = set()
    for _ in range(60):
        trial = study.ask()
        pipeline = sample_pipeline(trial, space)
        pipeline.check()  # raises on an impossible order
        kinds = tuple(s.kind for s in pipeline.stages)
        if "fuse" in kinds:
            assert set(kinds[kinds.index("fuse") + 1:]) <= {"dynamic", "ptq", "qat"}  # fused BatchNorm: only quantize
        seen.add(kinds)
        # Two varied objectives, so the model-based samplers leave their start-up phase and model.
        study.tell(trial, [len(kinds) + trial.number % 3, float(sum(map(len, kinds)) % 7)])
    if len(orders(space)) > 1:
        assert len(seen) > 1  # the order and the stage set are really searched


def test_dynamic_quantization_samples_every_backend_including_pt2e_xnnpack() -> None:
    space = SpaceConfig(stages=("quantize",), quant_types=Choice(("dynamic",)), quant_backends=Choice(("xnnpack", "qnnpack")))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    backends = {sample_pipeline(study.ask(), space).stages[0].backend for _ in range(20)}
    assert backends == {"xnnpack", "qnnpack"}


def test_int4_linear_weights_are_sampled_only_for_xnnpack() -> None:
    space = SpaceConfig(stages=("quantize",), quant_types=Choice(("dynamic", "static", "qat")),
                        quant_backends=Choice(("xnnpack", "x86")), linear_weight_bits=Choice((8, 4)))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        stage = sample_pipeline(trial, space).stages[0]
        seen.add((stage.backend, stage.linear_weight_bits))
        assert ("linear_weight_bits" in trial.params) == (stage.backend == "xnnpack")
    assert seen == {("xnnpack", 8), ("xnnpack", 4), ("x86", 8)}
    # A single choice is no parameter: trials stored before the choice existed keep matching.
    params = {"quant_type": "static", "quant_backend": "xnnpack", "float_prefix_blocks": 0}
    for bits in (8, 4):
        space = SpaceConfig(stages=("quantize",), linear_weight_bits=Choice((bits,)))
        assert sample_pipeline(optuna.trial.FixedTrial(params), space).stages[0].linear_weight_bits == bits


def test_a_students_architecture_is_a_parameter_only_for_a_narrower_student_and_a_real_choice() -> None:
    space = SpaceConfig(stages=("distill",), required=("distill",), student_widths=Choice((0.0, 0.5)),
                        student_architectures=Choice(("standard", "lean")))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        stage = sample_pipeline(trial, space).stages[0]
        seen.add((stage.student_width, stage.student_architecture))
        assert ("student_architecture" in trial.params) == (stage.student_width > 0)
    assert seen == {(0.0, "standard"), (0.5, "standard"), (0.5, "lean")}
    # One architecture is no parameter, so trials stored before architectures existed keep matching.
    params = {"distill_alpha": 0.5, "distill_temperature": 4.0, "student_width": 0.5, "finetune_epochs": 1,
              "finetune_lr": 0.01}
    lean_only = SpaceConfig(stages=("distill",), required=("distill",), student_architectures=Choice(("lean",)))
    assert sample_pipeline(optuna.trial.FixedTrial(params), lean_only).stages[0].student_architecture == "lean"


def test_sensitive_units_kept_float_are_a_parameter_only_when_the_space_searches_them() -> None:
    params = {"quant_type": "static", "quant_backend": "xnnpack", "float_prefix_blocks": 0, "linear_weight_bits": 8}
    fixed = SpaceConfig(stages=("quantize",))
    assert sample_pipeline(optuna.trial.FixedTrial(params), fixed).stages[0].float_sensitive_units == 0
    searched = SpaceConfig(stages=("quantize",), quant_types=Choice(("static",)), float_sensitive_units=IntRange(0, 3))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    counts = set()
    for _ in range(30):
        trial = study.ask()
        counts.add(sample_pipeline(trial, searched).stages[0].float_sensitive_units)
        assert "float_sensitive_units" in trial.params
    assert counts == {0, 1, 2, 3}


def test_stop_rule_needs_history_at_the_same_stage_kind_and_epoch() -> None:
    rule = StopRule(floor=0.6, margin=0.2, chance=0.1)
    # Without history nothing is stopped, however low: a lack of evidence is no evidence.
    assert not rule.should_stop(("channels", 0, 2, 0), 0.12, first_of_stage=True)
    assert not rule.should_stop(("distill", 0, 3, 2), 0.05)
    recovered = StopRule(floor=0.6, margin=0.2, chance=0.1, recovered=(
        ((("channels", 0, 2, 0), 0.3), (("channels", 0, 2, 1), 0.31), (("channels", 0, 2, None), 0.32),
         (("distill", 0, 2, 0), 0.65)),))
    assert not recovered.should_stop(("channels", 0, 2, 1), 0.31)  # a completed trial was this low here and still made the floor
    assert recovered.should_stop(("channels", 0, 2, 1), 0.2)
    assert not recovered.should_stop(("channels", 0, 2, 1), 0.45)  # within the margin of the floor
    assert not recovered.should_stop(("channels", 0, 2, 0), 0.2, first_of_stage=True)  # right after a cut: only a collapse counts
    assert recovered.should_stop(("channels", 0, 2, 0), 0.12, first_of_stage=True)
    # Epoch 1 of distillation is not epoch 1 of channel pruning, nor is a second channel pruning the first,
    # nor epoch 1 of a channel pruning planned for 4 epochs (its learning rate is still high there).
    assert not recovered.should_stop(("distill", 0, 2, 1), 0.05)
    assert not recovered.should_stop(("channels", 1, 2, 1), 0.05)
    assert not recovered.should_stop(("channels", 0, 4, 1), 0.05)
    assert point_of(("channels", "distill", "channels"), (2, 3, 4), 2, None) == ("channels", 1, 4, None)


def _completed(study: optuna.Study, kinds: tuple[str, ...], curve: list[tuple[int | None, float]], val: float) -> None:
    """A trial of ``kinds`` (2 epochs each) whose monitor saw ``curve`` ((epoch or None at a stage's end), accuracy),
    then completed."""
    trial = study.ask()
    store(trial, {Attr.STAGE_EPOCHS: [[kind, 2] for kind in kinds]})
    monitor = AccuracyMonitor(trial, StopRule(floor=0.6, margin=0.1), kinds, (2,) * len(kinds))
    for epoch, accuracy in curve:
        if epoch is None:
            monitor.observe(accuracy, "stage done")
        else:
            monitor.on_epoch_end(epoch, accuracy)
    study.tell(trial, [val, 0.5, 0.5])


def test_trials_whose_stages_come_in_another_order_are_compared_stage_kind_by_kind() -> None:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    # Reached the floor (0.6): distillation first, then channel pruning that cut accuracy to 0.3 and recovered.
    _completed(study, ("distill", "channels"), [(0, 0.7), (1, 0.72), (None, 0.72), (0, 0.3), (1, 0.5), (None, 0.65)], 0.65)
    # An older trial stored [stage, epoch, top-1]: no kind, no evidence (it would stop everything below 0.9).
    study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, values=[0.9, 0.5, 0.5],
                                              user_attrs={"curve": [[0, 1, 0.9], [1, 1, 0.9]]}))
    rule = stop_rule_for(study, floor=0.6, margin=0.1, num_classes=10)
    assert rule.lowest_recovered_at(("channels", 0, 2, 1)) == 0.5 and rule.lowest_recovered_at(("distill", 0, 2, 1)) == 0.72

    def after_one_channels_epoch(accuracy: float) -> bool:
        """Whether a channels-then-distill trial at ``accuracy`` after its second channels epoch is stopped."""
        trial = study.ask()
        monitor = AccuracyMonitor(trial, rule, ("channels", "distill"), (2, 2))
        monitor.on_epoch_end(0, 0.3)  # right after the cut: no collapse, kept
        try:
            monitor.on_epoch_end(1, accuracy)
        except optuna.TrialPruned:
            return True
        finally:
            study.tell(trial, state=TrialState.PRUNED)
        return False

    # Stage index 0 epoch 1 was distillation at 0.72 in the completed trial: an index-based rule would
    # stop 0.49; channel pruning there was at 0.5, and 0.49 is within 0.02 of it.
    assert not after_one_channels_epoch(0.49)
    assert after_one_channels_epoch(0.35)


def test_monitor_records_stage_kind_epoch_and_seconds_and_marks_rule_stops() -> None:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    history = StopRule(floor=0.6, margin=0.2, chance=0.1, recovered=(((("prune", 0, 2, 1), 0.5),),))
    trial = study.ask()
    monitor = AccuracyMonitor(trial, history, ("distill", "prune"), (1, 2))
    monitor.start()
    monitor.on_epoch_end(0, 0.3)  # stage 0, epoch 0 (no history there: kept)
    time.sleep(0.05)
    monitor.observe(0.3, "stage 0 done")
    monitor.on_epoch_end(0, 0.4)  # stage 1, epoch 0: right after its cut, and no history there
    with pytest.raises(optuna.TrialPruned):
        monitor.on_epoch_end(1, 0.2)  # prune epoch 1: every recovered trial was at 0.5 here
    frozen = study.trials[trial.number]
    curve = frozen.user_attrs["curve"]
    assert [p[:4] for p in curve] == [[0, "distill", 0, 0.3], [0, "distill", None, 0.3], [1, "prune", 0, 0.4],
                                      [1, "prune", 1, 0.2]]
    seconds = [p[4] for p in curve]
    assert seconds[1] >= seconds[0] + 0.05  # seconds run within a stage ...
    assert seconds[2] < seconds[1] and seconds[2] <= seconds[3]  # ... and start again with the next one
    record = TrialRecord.of(frozen)
    assert record.stop_reason is StopReason.DURING_TRAINING and "stage 2 prune" in record.stop_message


def test_only_measured_trials_that_reached_the_floor_are_evidence_of_recovery() -> None:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    plan = [["channels", 1]]
    for values, first_epoch, attrs in (
            ([0.9, 0.5, 0.5], 0.1, {"fidelity": "estimated", "stage_epochs": plan}),  # screened: an estimate
            ([0.7, 0.5, 0.5], 0.2, {"stage_epochs": plan}),
            ([0.8, 0.5, 0.5], 0.3, {})):  # stored before plans: readable, at a point of no known schedule
        study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, values=values, user_attrs={
            **attrs, "curve": [[0, "channels", 0, first_epoch, 9.0]]}))
    rule = stop_rule_for(study, floor=0.6, margin=0.1, num_classes=10)
    assert rule.recovered == (((("channels", 0, 1, 0), 0.2),), ((("channels", 0, None, 0), 0.3),))


def test_savings_cost_an_epoch_by_the_time_between_epoch_ends_not_by_the_stages_set_up() -> None:
    def record(state: TrialState, plan: list, curve: list) -> TrialRecord:
        return TrialRecord.of(optuna.trial.create_trial(
            state=state, values=[0.7, 0.5, 0.5] if state is TrialState.COMPLETE else None,
            user_attrs={"stage": None if state is TrialState.COMPLETE else "during-training", "stage_epochs": plan,
                        "curve": curve}))

    # A completed distillation: 37 s of set-up, then epochs of 3 s.
    rates = epoch_seconds_by_kind([record(TrialState.COMPLETE, [["distill", 3]], [
        [0, "distill", 0, 0.6, 40.0], [0, "distill", 1, 0.65, 43.0], [0, "distill", 2, 0.7, 46.0],
        [0, "distill", None, 0.7, 47.0]])])
    assert rates == {"distill": pytest.approx(3.0)}
    # The channel-pruning cut took 28 s and its epochs 2 s: stopped after 2 of 5, then 2 distillation epochs.
    plan = [["channels", 5], ["distill", 2]]
    cost = remaining_training(record(TrialState.PRUNED, plan, [[0, "channels", 0, 0.3, 30.0], [0, "channels", 1, 0.31, 32.0]]),
                              rates)
    assert (cost.epochs_left, cost.seconds, cost.uncosted_epochs) == (5, pytest.approx(3 * 2.0 + 2 * 3.0), 0)
    # One epoch end measures no epoch, and no completed trial measured channel pruning's: uncosted.
    cost = remaining_training(record(TrialState.PRUNED, plan, [[0, "channels", 0, 0.3, 30.0]]), rates)
    assert (cost.epochs_left, cost.seconds, cost.uncosted_epochs) == (6, pytest.approx(2 * 3.0), 4)


def _trial(study: optuna.Study, state: TrialState, values=None, **attrs) -> None:
    study.add_trial(optuna.trial.create_trial(
        state=state, values=values, params={"x": float(len(study.trials))},
        distributions={"x": optuna.distributions.FloatDistribution(0, 100)}, user_attrs=attrs))


def test_budget_counts_every_worker_but_not_rejected_orders_or_retried_failures() -> None:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    _trial(study, TrialState.COMPLETE, [0.5, 0.5, 0.5])
    _trial(study, TrialState.PRUNED, stage="rejected")
    _trial(study, TrialState.PRUNED)
    _trial(study, TrialState.FAIL)
    assert budget_left(study, 5) == 2
    requeue(study, 3)  # the failed trial is queued again, traceably
    retry = study.trials[-1]
    assert retry.state is TrialState.WAITING and retry.system_attrs["failed_trial"] == 3
    assert budget_left(study, 5) == 2  # the failure and its retry count once


def test_trials_started_after_the_budget_was_taken_are_surplus_for_every_worker() -> None:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    _trial(study, TrialState.COMPLETE, [0.5, 0.5, 0.5])  # 0
    _trial(study, TrialState.PRUNED, stage="rejected")  # 1: spends nothing
    _trial(study, TrialState.RUNNING)  # 2: worker A's last trial of a budget of 2
    _trial(study, TrialState.RUNNING)  # 3: worker B asked at the same moment
    assert not is_surplus(study, 2, 2)
    assert is_surplus(study, 3, 2)
    _trial(study, TrialState.PRUNED, stage="over-budget")  # a surplus trial spends nothing either
    assert budget_left(study, 3) == 0 and not is_surplus(study, 3, 3)


def test_workers_default_to_one_per_core_at_the_study_threads_and_train_on_their_share() -> None:
    cores = joblib.cpu_count(only_physical_cores=True)
    smoke = REPO / "studies" / "smoke.toml"
    study = load_study(smoke, {"evaluation.threads": 1, "search.n_trials": 100})
    assert plan_workers(study) == WorkerPlan(cores, 1)
    assert plan_workers(study, 1) == WorkerPlan(1, cores)  # one worker trains on every core
    assert plan_workers(load_study(smoke, {"evaluation.threads": cores + 1})) == WorkerPlan(1, cores)
    assert plan_workers(load_study(smoke, {"search.n_trials": 1})).workers == 1
    with pytest.raises(UserError, match="n-jobs"):
        plan_workers(study, 0)


def test_phase_clock_adds_up_repeated_phases_and_keeps_the_rest_as_other() -> None:
    clock = PhaseClock()
    for _ in range(2):
        with clock.phase("validation"):
            time.sleep(0.02)
    time.sleep(0.05)  # a stage that took 0.01 s of this, as its record reports, and 0.04 s of nothing named
    clock.add("stage 1 channels", 0.01)
    summary = clock.summary()
    assert summary["validation"] >= 0.04 and summary["stage 1 channels"] == 0.01
    assert summary["other"] >= 0.035 and set(summary) == {"validation", "stage 1 channels", "other"}


TARGETS = TargetsConfig()


def test_front_dominance_and_pick_policies() -> None:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for values in ([0.90, 0.50, 0.30], [0.80, 0.30, 0.20], [0.70, 0.70, 0.70], [0.95, 0.90, 0.90], [0.85, 0.55, 0.25]):
        _trial(study, TrialState.COMPLETE, values, pipeline="p")
    _trial(study, TrialState.COMPLETE, [0.99, 0.1, 0.1], pipeline="p", parity_ok=False)  # 5: a broken artifact
    front = pareto_trials(study.trials)
    assert sorted(t.number for t in front) == [0, 1, 3, 4]  # trial 2 is dominated by trial 1; 5 counts for nothing
    table = trials_table(front, TargetsConfig(), baseline_val=0.9)
    assert list(table["meets_all"]) == [False, True, True, False]  # sorted by accuracy: 3, 0, 4, 1
    assert pick(table, "most-accurate", TARGETS) == 0 and pick(table, "fastest", TARGETS) == 0 and pick(table, "smallest", TARGETS) == 4
    # The knee among the two points meeting the targets (0 and 4), in allowances: trial 0 is at
    # (0, 0.50/0.6, 0.30/0.7), 0.88 squared away; trial 4 at (0.05/0.05, 0.55/0.6, 0.25/0.7), 1.97.
    assert pick(table, "knee", TARGETS) == 0
    with pytest.raises(UserError, match="nothing to choose"):
        pick(table.assign(meets_all=False), "smallest", TARGETS)
    with pytest.raises(UserError):
        pick(pd.DataFrame(columns=table.columns), "knee", TARGETS)


def test_knee_is_the_balanced_point_not_the_best_of_any_one_objective() -> None:
    # Every point meets the targets (floor 0.85) and each policy has its own answer.
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for values in ([0.90, 0.55, 0.60], [0.86, 0.20, 0.65], [0.86, 0.58, 0.10], [0.88, 0.35, 0.35]):
        _trial(study, TrialState.COMPLETE, values, pipeline="p")
    table = trials_table(pareto_trials(study.trials), TARGETS, baseline_val=0.9)
    assert table["meets_all"].all() and len(table) == 4
    assert (pick(table, "most-accurate", TARGETS), pick(table, "fastest", TARGETS), pick(table, "smallest", TARGETS)) == (0, 1, 2)
    # Squared distances in allowances: 1.58, 1.61, 1.60 for the extremes; 0.75 for trial 3.
    assert pick(table, "knee", TARGETS) == 3


def test_knee_weighs_objectives_by_their_targets_not_by_the_spread_of_the_front() -> None:
    # Neither meets the 5-point floor of baseline 0.7; a slow TorchScript model half a point more
    # accurate must not beat a .pte four times faster (min-max scaling made 0.005 the whole range).
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    _trial(study, TrialState.COMPLETE, [0.560, 4.46, 0.16], pipeline="torchscript x86")
    _trial(study, TrialState.COMPLETE, [0.555, 0.75, 0.17], pipeline="pte")
    table = trials_table(pareto_trials(study.trials), TARGETS, baseline_val=0.7)
    assert not table["meets_all"].any()
    assert pick(table, "knee", TARGETS) == 1
    # A real accuracy gap still counts: 4 points for a little latency is worth it.
    _trial(study, TrialState.COMPLETE, [0.595, 0.85, 0.17], pipeline="pte, more accurate")
    table = trials_table(pareto_trials(study.trials), TARGETS, baseline_val=0.7)
    assert pick(table, "knee", TARGETS) == 2


def _correct(right: int, total: int = 500, shift: int = 0) -> str:
    """A packed correctness vector: ``right`` of ``total`` validation images right, starting at image ``shift``."""
    correct = torch.zeros(total, dtype=torch.bool)
    correct[(torch.arange(right) + shift) % total] = True
    return pack_correct(correct)


def test_knee_never_trades_a_measured_latency_gain_for_an_accuracy_gap_within_the_noise() -> None:
    # A is 0.4 points more accurate on 500 validation images (2 images) and 30% slower than B: the paired
    # interval of that difference holds zero, so B's measured speed wins.
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    _trial(study, TrialState.COMPLETE, [0.604, 0.52, 0.10], pipeline="A", val_correct=_correct(302))
    _trial(study, TrialState.COMPLETE, [0.600, 0.40, 0.10], pipeline="B", val_correct=_correct(300))
    table = trials_table(pareto_trials(study.trials), TARGETS, baseline_val=0.6)
    assert set(table["trial"]) == {0, 1} and pick(table, "knee", TARGETS) == 1
    # 4 points on 500 images that the two get right on different images (380 disagreements): the paired
    # interval still holds zero, so B; weighed on the point estimates alone, A would win.
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    _trial(study, TrialState.COMPLETE, [0.640, 0.52, 0.10], pipeline="A", val_correct=_correct(320))
    _trial(study, TrialState.COMPLETE, [0.600, 0.40, 0.10], pipeline="B", val_correct=_correct(300, shift=200))
    table = trials_table(pareto_trials(study.trials), TARGETS, baseline_val=0.6)
    assert pick(table, "knee", TARGETS) == 1
    # The same 4 points that the images resolve (A right on 20 more, never worse): A is worth it.
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    _trial(study, TrialState.COMPLETE, [0.640, 0.52, 0.10], pipeline="A", val_correct=_correct(320))
    _trial(study, TrialState.COMPLETE, [0.600, 0.40, 0.10], pipeline="B", val_correct=_correct(300))
    table = trials_table(pareto_trials(study.trials), TARGETS, baseline_val=0.6)
    assert pick(table, "knee", TARGETS) == 0


def test_front_verdicts_tell_confident_from_point_estimate_from_missed() -> None:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    evidence = {"test": {"images": 1000, "top1": 0.55, "top1_ci95": [0.52, 0.58], "drop": 0.01, "drop_ci95": [-0.01, 0.03],
                         "agreement": 0.9, "p_value": 0.3}}
    _trial(study, TrialState.COMPLETE, [0.55, 0.50, 0.20], pipeline="confident accuracy", evidence=evidence)
    wide = {"test": {**evidence["test"], "drop_ci95": [-0.02, 0.07]}}
    _trial(study, TrialState.COMPLETE, [0.56, 0.55, 0.20], pipeline="wide drop interval", evidence=wide)
    missed = {"test": {**evidence["test"], "drop": 0.06, "drop_ci95": [0.04, 0.08]}}
    _trial(study, TrialState.COMPLETE, [0.57, 0.45, 0.80], pipeline="missed", evidence=missed)
    table = trials_table(study.trials, TARGETS, baseline_val=0.6).set_index("pipeline")
    assert list(table.loc[["confident accuracy", "wide drop interval", "missed"], "verdict_accuracy"]) == [
        "met", "point estimate only", "missed"]
    # One timing run has no interval across runs: the latency target is met on its point estimate at best.
    assert table.loc["confident accuracy", "verdict_latency"] == "point estimate only"
    assert table.loc["missed", "verdict_size"] == "missed" and table.loc["missed", "test_drop_ci95"] == [0.04, 0.08]
    assert table.loc["confident accuracy", "test_images"] == 1000


def test_feasibility_rules_out_float_unstructured_but_not_quantized(tiny_bundle) -> None:
    baseline = build_model(ModelConfig(width_mult=0.5), 4, 32).eval()
    context = StageContext(data=tiny_bundle)
    example = torch.zeros(1, 3, 32, 32)
    reference = footprint(Pipeline(()), baseline, context, example)
    dense = footprint(Pipeline((UnstructuredPruningConfig(amount=0.9),)), baseline, context, example)
    assert "size ratio 1.00" in infeasibility(dense, reference, 0.7, 0.6)
    quantized = footprint(Pipeline((StructuredPruningConfig(ratio=0.5), StaticQuantConfig())), baseline, context, example)
    assert quantized.flops < 0.5 * reference.flops and quantized.weight_bytes < 0.15 * reference.weight_bytes
    assert infeasibility(quantized, reference, 0.7, 0.6) is None
    narrow_float = footprint(Pipeline((StructuredPruningConfig(ratio=0.6),)), baseline, context, example)
    assert infeasibility(narrow_float, reference, 0.7, 0.6) is None
    # int4 Linear weights take half a byte: both Linear layers, (288, 512) and (512, 4), split into groups of 32.
    int8, int4 = (footprint(Pipeline((StaticQuantConfig(backend="xnnpack", linear_weight_bits=bits),)), baseline, context,
                            example) for bits in (8, 4))
    assert int8.weight_bytes - int4.weight_bytes == (288 * 512 + 512 * 4) // 2 and int8.flops == int4.flops


def test_sampler_scores_count_only_the_first_trials_that_reach_the_floor() -> None:
    def complete(values):
        return optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, values=list(values))

    rejected = optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs={"stage": "rejected"})
    trials = [complete((0.8, 0.5, 0.3)), rejected, complete((0.4, 0.1, 0.1)), complete((0.9, 0.2, 0.2))]
    for number, trial in enumerate(trials):
        trial.number = number
    # The rejected order spent no budget; the 0.4 model is below the floor and cannot ship.
    assert hypervolume_of_first(trials, 2, floor=0.7) == pytest.approx(hypervolume([(0.8, 0.5, 0.3)]))
    assert hypervolume_of_first(trials, 3, floor=0.7) == pytest.approx(hypervolume([(0.8, 0.5, 0.3), (0.9, 0.2, 0.2)]))
    assert hypervolume_of_first(trials, 2) > hypervolume_of_first(trials, 2, floor=0.7)


def test_the_targets_region_counts_only_shippable_trials_from_the_floor_to_the_allowances() -> None:
    def measured(values, meets):
        return optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, values=list(values),
                                         user_attrs={"fidelity": "measured", "meets_targets": meets})

    trials = [measured((0.45, 0.10, 0.06), True), measured((0.50, 0.05, 0.05), False),  # fails parity: not shipped
              measured((0.44, 0.15, 0.12), True), measured((0.60, 0.65, 0.50), True)]  # over the latency allowance
    for number, trial in enumerate(trials):
        trial.number = number
    region = target_region(0.35, TargetsConfig(size_reduction=0.3, latency_reduction=0.4))
    # The parity failure and the slow one are out; the third lies inside the first's box, from the floor and the
    # allowances.
    assert hypervolume_of_first(trials, 4, 0.35, region, shippable=True) == pytest.approx((0.45 - 0.35) * 0.5 * 0.64)
    assert hypervolume_of_first(trials, 4, 0.35, region) > hypervolume_of_first(trials, 4, 0.35, region, shippable=True)
    # Against the study's reference, fronts that all meet the targets barely differ; in the region they do.
    assert hypervolume_of_first(trials[:1], 1, 0.35) / hypervolume_of_first(trials[2:3], 1, 0.35) < 1.1
    assert hypervolume_of_first(trials[:1], 1, 0.35, region) / hypervolume_of_first(trials[2:3], 1, 0.35, region) > 1.2


def test_the_search_benchmark_counts_measured_trials_only(tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("search_benchmark", REPO / "scripts" / "search_benchmark.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    path = _synthetic_study(tmp_path)
    study = open_study(load_study(path), create=False)
    measured = [TrialRecord.of(t).values for t in study.get_trials() if TrialRecord.of(t).is_measured]
    # Screened: estimated better than every measured trial, and to meet every target; neither is a measurement.
    study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, values=[0.95, 0.1, 0.1],
                                              user_attrs={"fidelity": "estimated", "meets_targets": True}))
    summary = benchmark.summarise(str(path), {})
    assert summary["hypervolume"] == pytest.approx(hypervolume(measured))
    assert summary["meets_all_targets"] == 0


def test_delegation_line_names_what_runs_on_portable_kernels() -> None:
    full = Delegation(delegated_subgraphs=1, delegated_nodes=217, portable_nodes=0, portable_ops={},
                      delegated_ops={"aten_convolution_default": 217})
    assert delegation_line(full.as_dict()) == "all 217 operators delegated to XNNPACK"
    partial = Delegation(delegated_subgraphs=2, delegated_nodes=200, portable_nodes=19,
                         portable_ops={"aten_upsample_bilinear2d_vec": 1, "dim_order_ops__to_dim_order_copy_default": 18},
                         delegated_ops={"aten_convolution_default": 200})
    line = delegation_line(partial.as_dict())
    assert line.startswith("200 operators delegated to XNNPACK, 19 left to portable kernels: ")
    assert "aten_upsample_bilinear2d_vec x1" in line and "dim_order_ops__to_dim_order_copy_default x18" in line
