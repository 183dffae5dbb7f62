"""Every stage config enforces the ranges it declares, whether it comes from a study file or from code."""

from __future__ import annotations

import dataclasses

import pytest

from udacisense.common.errors import UserError
from udacisense.common.schema import check_bounds
from udacisense.compression.distillation import DistillationConfig
from udacisense.compression.pruning import GradualPruningConfig, StructuredPruningConfig, UnstructuredPruningConfig
from udacisense.compression.resolution import ResolutionConfig
from udacisense.training import TrainConfig


@pytest.mark.parametrize(("build", "key"), [
    (lambda: UnstructuredPruningConfig(amount=0.99), "prune.amount"),
    (lambda: StructuredPruningConfig(ratio=0.5, round_to=0), "channels.round_to"),
    (lambda: GradualPruningConfig(final_sparsity=1.0), "gradual.final_sparsity"),
    (lambda: DistillationConfig(alpha=1.5), "distill.alpha"),
    (lambda: DistillationConfig(temperature=0.0), "distill.temperature"),
    (lambda: ResolutionConfig(size=4), "resolution.size"),
    (lambda: TrainConfig(epochs=-1), "finetune.epochs"),
    (lambda: UnstructuredPruningConfig(amount=0.5, finetune=TrainConfig(lr=0.0)), "finetune.lr"),
])
def test_code_built_configs_enforce_their_declared_ranges(build, key):
    with pytest.raises(UserError) as error:
        build()
    assert f"`{key}`" in error.value.problem and "out of range" in error.value.problem
    assert key in error.value.fix


def test_nested_configs_are_checked_with_their_dotted_path():
    @dataclasses.dataclass
    class Outer:
        finetune: TrainConfig

    outer = Outer(TrainConfig())
    object.__setattr__(outer.finetune, "momentum", 2.0)  # bypass the frozen config's own check
    with pytest.raises(UserError, match=r"`outer\.finetune\.momentum` is 2\.0"):
        check_bounds(outer, "outer")


def test_in_range_configs_pass():
    for config in (UnstructuredPruningConfig(amount=0.95), StructuredPruningConfig(ratio=0.0), DistillationConfig(),
                   ResolutionConfig(size=8), GradualPruningConfig()):
        check_bounds(config, config.kind)
