"""The typed search space: study-file values parse into ranges and choices, are bounded by the stage
configs they feed, and every declared family samples a valid stage, the same way as before the types."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import distribution_to_json

from tests.conftest import REPO
from udacisense.common.errors import UserError
from udacisense.common.schema import check_bounds, limits, written_form
from udacisense.compression.distillation import DistillationConfig
from udacisense.compression.pipeline import Pipeline
from udacisense.search.study.config import load_study, parse_study
from udacisense.spaces.distributions import Choice, FloatRange, IntRange, StageField
from udacisense.spaces.families import FAMILIES, FAMILY_OF_KIND
from udacisense.spaces.sampling import orders, sample_pipeline
from udacisense.spaces.space import SpaceConfig

STUDY = {"name": "t", "data": {"source": "imagefolder", "root": "data/cifar10"}}


def _space(table: dict[str, Any]) -> SpaceConfig:
    return parse_study({**STUDY, "space": table}).space


@pytest.mark.parametrize(("table", "problem", "fix"), [
    ({"prune_amount": [0.9, 0.1]}, "`space.prune_amount` is [0.9, 0.1], not a [low, high] range", "[0.1, 0.9]"),
    ({"channel_ratio": [0.3]}, "`space.channel_ratio` is [0.3], not a [low, high] range", "e.g. [0.1, 0.6]"),
    ({"finetune_epochs": [1, 2, 3]}, "`space.finetune_epochs` is [1, 2, 3], not a [low, high] range", "e.g. [1, 4]"),
    ({"finetune_epochs": [1.5, 3]}, "`space.finetune_epochs[0]` is 1.5", "an integer"),
    ({"finetune_lr": [0.0, 0.05]}, "`space.finetune_lr` is [0.0, 0.05], but it is sampled on a log scale", "above 0"),
    ({"distill_alpha": "high"}, "`space.distill_alpha` is 'high'", "a list of a number"),
    ({"resolutions": []}, "`space.resolutions` is empty", "at least one choice"),
    ({"quant_types": ["static", "qta"]}, "`space.quant_types[1]` is 'qta'", "'qat'"),
])
def test_a_bad_range_or_choice_names_the_key_and_the_fix(table: dict[str, Any], problem: str, fix: str) -> None:
    with pytest.raises(UserError) as caught:
        _space(table)
    assert problem in caught.value.problem
    assert fix in caught.value.fix


def _sampled_fields() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(SpaceConfig) if f.metadata.get("feeds")]


def _beyond(default: Any, number: float) -> Any:
    """A value of ``default``'s kind that reaches ``number``."""
    if isinstance(default, Choice):
        return Choice((number,))
    low, high = sorted((number, default.low if number > default.high else default.high))
    return dataclasses.replace(default, low=type(default.low)(low), high=type(default.low)(high))


def _limits(target: StageField) -> tuple[Any, Any]:
    return limits({f.name: f for f in dataclasses.fields(target.config)}[target.name])


def _refuses(target: StageField, number: float) -> bool:
    low, high = _limits(target)
    return (low is not None and number < low) or (high is not None and number > high)


@pytest.mark.parametrize("declared", _sampled_fields(), ids=lambda f: f.name)
def test_a_space_value_beyond_the_limits_of_the_config_field_it_feeds_is_refused(declared: dataclasses.Field[Any]) -> None:
    feeds = declared.metadata["feeds"]
    for target in feeds:
        for limit, direction in zip(_limits(target), (-1, 1)):
            if limit is None:
                continue
            outside = limit + direction * (1 if isinstance(limit, int) else abs(limit) * 0.01 or 0.01)
            # The limit itself is accepted (unless another fed field is narrower); a step past it is
            # refused, naming the key, the first fed config field that refuses it, and the fix.
            if not any(_refuses(other, limit) for other in feeds):
                SpaceConfig(**{declared.name: _beyond(declared.default, limit)})
            with pytest.raises(UserError) as caught:
                SpaceConfig(**{declared.name: _beyond(declared.default, outside)})
            named = next(other for other in feeds if _refuses(other, outside))
            assert f"`space.{declared.name}`" in caught.value.problem and str(outside) in caught.value.problem
            assert f"`{named.config.__name__}.{named.name}`" in caught.value.problem
            assert f"`space.{declared.name}`" in caught.value.fix and str(_limits(named)[direction > 0]) in caught.value.fix


def test_the_limits_are_the_stage_configs_own_so_a_study_file_meets_the_same_check() -> None:
    # The space's bound is the one the stage config declares (UnstructuredPruningConfig.amount <= 0.95):
    # a study file is refused before any trial rather than failing trial by trial.
    assert _space({"prune_amount": [0.2, 0.95]}).prune_amount == FloatRange(0.2, 0.95)
    with pytest.raises(UserError, match=r"`space.prune_amount` is \[0.2, 0.96\], but 0.96 is out of range for `UnstructuredPruningConfig.amount`"):
        _space({"prune_amount": [0.2, 0.96]})
    with pytest.raises(UserError, match="`space.resolutions` is \\[64, 2048\\], but 2048 is out of range for `ResolutionConfig.size`"):
        _space({"resolutions": [64, 2048]})
    # Built in code, the same path refuses it.
    with pytest.raises(UserError, match="`space.distill_alpha`"):
        SpaceConfig(distill_alpha=FloatRange(0.5, 1.5))


def test_a_stage_field_that_does_not_exist_fails_at_declaration() -> None:
    with pytest.raises(TypeError, match="has no field 'amout'"):
        StageField(SpaceConfig, "amout")


def test_a_study_range_keeps_the_sampling_scale_of_its_default() -> None:
    space = _space({"finetune_lr": [0.001, 0.1], "finetune_epochs": [2, 6], "student_widths": [0, 0.5]})
    assert space.finetune_lr == FloatRange(0.001, 0.1, log=True)
    assert space.finetune_epochs == IntRange(2, 6)
    assert space.student_widths == Choice((0.0, 0.5)) and all(isinstance(w, float) for w in space.student_widths.options)


@pytest.mark.parametrize("path", sorted((REPO / "studies").glob("*.toml")), ids=lambda p: p.name)
def test_a_study_files_space_is_written_back_as_it_was_read(path: Path) -> None:
    # The stored settings of existing studies compare the written form, so it must not change.
    table = tomllib.loads(path.read_text()).get("space", {})
    written = written_form(load_study(path).space)
    assert {key: written[key] for key in table} == {key: list(value) for key, value in table.items()}
    assert written["finetune_lr"] == [0.002, 0.05] and written["prune_amount"] == [0.2, 0.9]


def _space_with_only(name: str) -> SpaceConfig:
    return SpaceConfig(stages=(name,), required=(name,))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_samples_a_config_that_passes_its_stages_checks(name: str) -> None:
    family = FAMILIES[name]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen: set[type] = set()
    for _ in range(40):
        trial = study.ask()
        pipeline = sample_pipeline(trial, _space_with_only(name))
        for stage in pipeline.stages:
            assert isinstance(stage, family.configs)
            assert FAMILY_OF_KIND[stage.kind] == name
            check_bounds(stage, stage.kind)
            Pipeline((stage,)).check()
            seen.add(type(stage))
        study.tell(trial, 0.0)
    assert seen == set(family.configs)  # every config the family declares is really sampled


def test_permuted_families_are_the_order_and_the_last_ones_follow_in_registry_order() -> None:
    space = SpaceConfig(stages=("quantize", "fuse", "resolution", "channels"), required=("quantize", "fuse", "resolution", "channels"))
    assert orders(space) == ["resolution>channels", "channels>resolution"]
    kinds = [s.kind for s in sample_pipeline(optuna.trial.FixedTrial({
        "order": "channels>resolution", "quant_type": "static", "quant_backend": "x86", "float_prefix_blocks": 0,
        "finetune_epochs": 1, "finetune_lr": 0.01, "channel_ratio": 0.3, "channel_head_ratio": 0.5,
        "channel_importance": "l2", "resolution": 64}), space).stages]
    assert kinds == ["channels", "resolution", "fuse", "ptq"]


SAMPLED_BEFORE = json.loads((REPO / "tests" / "fixtures" / "sampled_seed0.json").read_text(encoding="utf-8"))


def _spaces_recorded() -> dict[str, SpaceConfig]:
    # The offline study's space when the fixture was recorded (the study file has moved on since).
    offline = SpaceConfig(stages=("distill", "channels", "quantize"), quant_types=Choice(("dynamic", "static", "qat")),
                          quant_backends=Choice(("xnnpack",)), channel_ratio=FloatRange(0.0, 0.5),
                          channel_head_ratio=FloatRange(0.0, 0.8), student_widths=Choice((0.0,)),
                          finetune_epochs=IntRange(2, 6))
    # The default space when the fixture was recorded: no blocks dropped.
    return {"default": SpaceConfig(architecture_drop_blocks=IntRange(0, 0)), "cifar10-offline, as recorded": offline,
            "every family": SpaceConfig(stages=("quantize", "fuse", "resolution", "channels", "prune", "distill"))}


@pytest.mark.parametrize("name", list(SAMPLED_BEFORE))
def test_a_fixed_seed_samples_the_same_parameters_and_distributions_as_before_the_typed_space(name: str) -> None:
    # Recorded from the sampler before the space was typed: stored studies keep their parameters'
    # names and distributions, and a seeded search its trials (same suggest calls, same order). The
    # parameters and pipelines were recorded again when stages before a narrower student stopped
    # being sampled (`use_distill` and `student_width` are asked first since); the distributions did not change.
    expected = SAMPLED_BEFORE[name]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), directions=["maximize", "minimize"])
    params, pipelines, distributions = [], [], {}
    for _ in range(len(expected["params"])):
        trial = study.ask()
        pipelines.append(sample_pipeline(trial, _spaces_recorded()[name]).describe())
        params.append(trial.params)
        distributions.update({k: json.loads(distribution_to_json(d)) for k, d in trial.distributions.items()})
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert params == expected["params"]
    assert distributions == expected["distributions"]
    assert pipelines == expected["pipelines"]


def _own_params(name: str) -> set[str]:
    """The parameters only family ``name`` suggests (the fine-tune budget is the trial's, shared)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: set[str] = {f"use_{name}"}
    for _ in range(40):
        trial = study.ask()
        sample_pipeline(trial, _space_with_only(name))
        seen |= set(trial.params)
    return seen - {"finetune_epochs", "finetune_lr"}


def test_no_stage_is_sampled_before_a_distillation_into_a_narrower_student() -> None:
    space = SpaceConfig(stages=("distill", "prune", "channels", "architecture", "quantize"), student_widths=Choice((0.0, 0.5)))
    own = {name: _own_params(name) for name in ("prune", "channels", "architecture")}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
    swaps = kept_before_width_0 = 0
    for _ in range(200):
        trial = study.ask()
        pipeline = sample_pipeline(trial, space)
        pipeline.check()
        families = [FAMILY_OF_KIND[stage.kind] for stage in pipeline.stages]
        if "distill" not in families:
            continue
        distill = pipeline.stages[families.index("distill")]
        assert isinstance(distill, DistillationConfig)
        if distill.student_width == 0:
            kept_before_width_0 += families.index("distill") > 0
            continue
        swaps += 1
        assert families[0] == "distill", pipeline.describe()
        order = str(trial.params["order"]).split(">")
        for name in order[:order.index("distill")]:
            assert not own[name] & set(trial.params), (name, trial.params)
        for name in order[order.index("distill") + 1:]:
            assert f"use_{name}" in trial.params  # the ones after it are still searched
    assert swaps > 20 and kept_before_width_0 > 5


def test_a_required_family_stays_before_a_distillation_into_a_narrower_student() -> None:
    space = SpaceConfig(stages=("prune", "channels", "distill"), required=("prune",))
    kinds = [s.kind for s in sample_pipeline(optuna.trial.FixedTrial({
        "order": "prune>channels>distill", "use_distill": True, "student_width": 0.5, "finetune_epochs": 1,
        "finetune_lr": 0.01, "prune_method": "oneshot", "prune_amount": 0.5, "prune_scope": "global",
        "distill_alpha": 0.5, "distill_temperature": 4.0, "student_architecture": "standard"}), space).stages]
    assert kinds == ["prune", "distill"]
