"""Architecture surgery (models.lean, the `architecture` stage and family) on the real narrow MobileNetV3-Small:
shapes kept, the right blocks removed, fewer delegated operators in a fully delegated `.pte`, sampled pipelines valid."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.mobilenetv3 import InvertedResidual
from torchvision.ops import SqueezeExcitation

from tests.conftest import snapshot, unchanged
from udacisense.common.errors import IncompatiblePipelineError, UserError
from udacisense.compression.architecture import ArchitectureConfig
from udacisense.compression.pipeline import Pipeline
from udacisense.compression.pruning import StructuredPruningConfig
from udacisense.compression.stage import CompressedModel, ModelForm, Signature, StageContext, apply_stage
from udacisense.datasources.loaders import Split
from udacisense.models.lean import describe_lean, lean_network, shape_keeping_blocks, squeeze_excite_blocks, squeeze_excite_costs
from udacisense.models.mobilenet import ResizeInput
from udacisense.runtime import LoweredProgram, executorch_program, load_runner
from udacisense.search.study.config import parse_study
from udacisense.spaces.distributions import Choice, IntRange
from udacisense.spaces.sampling import orders, sample_pipeline
from udacisense.spaces.space import SpaceConfig
from udacisense.training import TrainConfig

ONE_STEP = TrainConfig(epochs=1, lr=0.05, max_batches_per_epoch=1)
IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
# torchvision's MobileNetV3-Small at width 0.25: 9 squeeze-excite blocks (features 1 and 4-11), 7 blocks
# with a residual connection (features 3, 5-8, 10, 11; at width 1 feature 7 widens 40 -> 48 and has none).
SMALL_SQUEEZE_EXCITE, SMALL_SHAPE_KEEPING = 9, 7


def _count(module: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(layer, kind) for layer in module.modules())


def _close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-4) -> bool:
    # Relative to the logits' scale: an untrained network's logits are of the order of 1e-8.
    return bool((actual - expected).abs().max() <= tolerance * expected.abs().max())


def _blocks(module: nn.Module) -> list[nn.Module]:
    return [layer for layer in module.modules() if isinstance(layer, InvertedResidual)]


@pytest.fixture()
def context(tiny_bundle) -> StageContext:
    return StageContext(data=tiny_bundle, seed=0)


# --- the transformations ---------------------------------------------------------------------------

@pytest.mark.parametrize("changes", [
    {"squeeze_excite": False}, {"squeeze_excite": [0, 4, 8]}, {"activation": "relu"}, {"drop_blocks": 2},
    {"drop_blocks": SMALL_SHAPE_KEEPING}, {"squeeze_excite": False, "activation": "relu", "drop_blocks": 3},
], ids=lambda changes: describe_lean(**changes))
@pytest.mark.parametrize("resized", [False, True], ids=["bare", "resized"])
def test_every_surgery_keeps_the_output_shape_and_leaves_the_input_alone(tiny_model, changes, resized) -> None:
    net = nn.Sequential(ResizeInput(48), tiny_model).eval() if resized else tiny_model
    before = snapshot(net)
    lean = lean_network(net, **changes).eval()
    with torch.no_grad():
        assert lean(IMAGES).shape == net(IMAGES).shape == (2, 4)
    assert unchanged(net, before) and _count(net, SqueezeExcitation) == SMALL_SQUEEZE_EXCITE
    assert len(shape_keeping_blocks(net)) == SMALL_SHAPE_KEEPING
    assert isinstance(lean[0], ResizeInput) if resized else not isinstance(lean, nn.Sequential)


def test_removing_squeeze_excite_removes_exactly_the_listed_blocks(tiny_model) -> None:
    names = squeeze_excite_blocks(tiny_model)
    assert len(names) == SMALL_SQUEEZE_EXCITE
    assert squeeze_excite_blocks(lean_network(tiny_model, squeeze_excite=[0, 4, 8])) == [names[i] for i in (1, 2, 3, 5, 6, 7)]
    assert squeeze_excite_blocks(lean_network(tiny_model, squeeze_excite=False)) == []
    assert squeeze_excite_blocks(lean_network(tiny_model, squeeze_excite=True)) == names


def test_a_removed_squeeze_excite_block_computes_what_a_neutral_one_does(tiny_model) -> None:
    # hardsigmoid(3) = 1: a block whose excitation is the constant 3 scales by exactly 1, as no block does.
    neutral = lean_network(tiny_model)
    for name in (squeeze_excite_blocks(neutral)[i] for i in (2, 5)):
        excite = neutral.get_submodule(name)
        nn.init.zeros_(excite.fc2.weight)
        nn.init.constant_(excite.fc2.bias, 3.0)
    with torch.no_grad():
        assert _close(lean_network(tiny_model, squeeze_excite=[2, 5])(IMAGES), neutral(IMAGES))
        assert not _close(lean_network(tiny_model, squeeze_excite=[2, 6])(IMAGES), neutral(IMAGES), 1e-2)


def test_relu_replaces_every_hard_activation(tiny_model) -> None:
    hardswish, hardsigmoid, relu = (_count(tiny_model, kind) for kind in (nn.Hardswish, nn.Hardsigmoid, nn.ReLU))
    assert hardswish and hardsigmoid == SMALL_SQUEEZE_EXCITE
    lean = lean_network(tiny_model, activation="relu")
    assert _count(lean, nn.Hardswish) == _count(lean, nn.Hardsigmoid) == 0
    assert _count(lean, nn.ReLU) == relu + hardswish and _count(lean, nn.Sigmoid) == hardsigmoid
    # The traced graph, what lowering sees, has no hard activation left either.
    targets = {str(node.target) for node in torch.export.export(lean, (IMAGES[:1],)).graph.nodes}
    assert not any("hardswish" in target or "hardsigmoid" in target for target in targets)


def test_dropping_blocks_removes_the_last_residual_ones(tiny_model) -> None:
    blocks = _blocks(tiny_model)
    residual = [i for i, block in enumerate(blocks) if block.use_res_connect]
    lean = lean_network(tiny_model, drop_blocks=2)
    kept = [blocks[i] for i in range(len(blocks)) if i not in residual[-2:]]
    assert [b.block[0][0].weight.shape for b in _blocks(lean)] == [b.block[0][0].weight.shape for b in kept]
    # Block positions stay consecutive (mixed precision and the size estimate count blocks by position).
    assert [name for name, _ in lean.features.named_children()] == [str(i) for i in range(len(tiny_model.features) - 2)]
    # A residual block whose branch outputs zero is the identity: dropping it computes exactly that.
    zeroed = lean_network(tiny_model)
    for i in residual[-2:]:
        nn.init.zeros_(_blocks(zeroed)[i].block[-1][1].weight)
        nn.init.zeros_(_blocks(zeroed)[i].block[-1][1].bias)
    with torch.no_grad():
        assert _close(lean(IMAGES), zeroed(IMAGES))
        assert not _close(lean(IMAGES), tiny_model(IMAGES), 1e-2)


@pytest.mark.parametrize(("changes", "problem", "fix"), [
    ({"drop_blocks": SMALL_SHAPE_KEEPING + 1}, "`drop_blocks` is 8, but the network has 7 blocks", "between 0 and 7"),
    ({"drop_blocks": -1}, "`drop_blocks` is -1", "between 0 and 7"),
    ({"squeeze_excite": [9]}, "`squeeze_excite` lists blocks [9], but the network has 9 squeeze-excite blocks", "between 0 and 8"),
    ({"squeeze_excite": [1, 1]}, "`squeeze_excite` lists a block twice", "each block to remove once"),
    ({"activation": "gelu"}, "`activation` is 'gelu'", "'hard', 'relu'"),
])
def test_a_bad_argument_names_the_key_and_the_fix(tiny_model, changes, problem, fix) -> None:
    with pytest.raises(UserError) as caught:
        lean_network(tiny_model, **changes)
    assert problem in caught.value.problem and fix in caught.value.fix


def test_the_label_says_what_changes() -> None:
    assert describe_lean(squeeze_excite=False, activation="relu", drop_blocks=2) == "no SE, ReLU, -2 blocks"
    assert describe_lean(squeeze_excite=(3, 1), drop_blocks=1) == "no SE in blocks [1, 3], -1 block"
    assert describe_lean() == describe_lean(squeeze_excite=()) == ""


# --- the stage -------------------------------------------------------------------------------------

def test_the_stage_applies_the_surgery_fine_tunes_and_needs_a_float_model(tiny_model, context) -> None:
    before = snapshot(tiny_model)
    config = ArchitectureConfig(squeeze_excite="remove", activation="relu", drop_blocks=1, finetune=ONE_STEP)
    out = apply_stage(CompressedModel(tiny_model), config, context)
    assert unchanged(tiny_model, before)
    assert squeeze_excite_blocks(out.module) == [] and _count(out.module, nn.Hardswish) == 0
    assert len(_blocks(out.module)) == len(_blocks(tiny_model)) - 1
    assert out.module(IMAGES).shape == (2, 4) and out.form is ModelForm.FLOAT
    assert config.describe() == "architecture(no SE, ReLU, -1 block)"
    assert ArchitectureConfig(squeeze_excite="keep", activation="hard").describe() == "architecture(unchanged)"
    for form in (ModelForm.QUANTIZED, ModelForm.LOWERED):
        with pytest.raises(IncompatiblePipelineError, match="cannot run on a"):
            config.transition(Signature(form))


@pytest.mark.parametrize(("fields", "problem", "fix"), [
    ({"se_keep": 2}, "`se_keep` is 2, but it only counts with `squeeze_excite = \"least-costly\"`", "`se_keep = 0`"),
    ({"drop_blocks": 8}, "`architecture.drop_blocks` is 8, out of range", "between 0 and 7"),
    ({"squeeze_excite": "least-costly", "se_keep": 10}, "`architecture.se_keep` is 10, out of range", "between 0 and 9"),
])
def test_a_bad_config_names_the_key_and_the_fix(fields, problem, fix) -> None:
    with pytest.raises(UserError) as caught:
        ArchitectureConfig(**fields)
    assert problem in caught.value.problem and fix in caught.value.fix


def test_least_costly_keeps_the_blocks_whose_removal_costs_most(tiny_model, tiny_bundle) -> None:
    # Every squeeze-excite block neutral (scale 1) but one that shuts its block off (scale 0), and val
    # labels that are the network's own predictions: removing a neutral block costs exactly nothing.
    net = lean_network(tiny_model)
    names = squeeze_excite_blocks(net)
    costly = 4
    for i, name in enumerate(names):
        excite = net.get_submodule(name)
        nn.init.zeros_(excite.fc2.weight)
        nn.init.constant_(excite.fc2.bias, -3.0 if i == costly else 3.0)
    with torch.no_grad():
        predicted = torch.cat([net(images).argmax(1) for images, _ in tiny_bundle.loader("val")])
    bundle = dataclasses.replace(tiny_bundle, val=Split(tiny_bundle.val.images, predicted))
    costs = squeeze_excite_costs(net, bundle.loader("val"), num_classes=4)
    assert costs[costly] > 0 and costs[:costly] + costs[costly + 1:] == [0.0] * (len(names) - 1), costs
    out = apply_stage(CompressedModel(net), ArchitectureConfig(squeeze_excite="least-costly", se_keep=1),
                      StageContext(data=bundle, seed=0))
    assert squeeze_excite_blocks(out.module) == [names[costly]]
    # A model with fewer blocks than `se_keep` keeps them all.
    kept_all = apply_stage(out, ArchitectureConfig(squeeze_excite="least-costly", se_keep=3), StageContext(data=bundle, seed=0))
    assert squeeze_excite_blocks(kept_all.module) == [names[costly]]


@pytest.mark.parametrize("surgery_first", [True, False])
def test_surgery_and_channel_pruning_compose_in_either_order(tiny_model, context, surgery_first) -> None:
    surgery = ArchitectureConfig(squeeze_excite="remove", activation="relu", drop_blocks=2)
    channels = StructuredPruningConfig(ratio=0.3)
    stages = (surgery, channels) if surgery_first else (channels, surgery)
    out, records = Pipeline(stages).run(CompressedModel(tiny_model), context)
    assert [r.kind for r in records] == [s.kind for s in stages]
    assert out.module(IMAGES).shape == (2, 4) and squeeze_excite_blocks(out.module) == []
    assert sum(p.numel() for p in out.module.parameters()) < sum(p.numel() for p in tiny_model.parameters())


# --- lowered to a .pte ----------------------------------------------------------------------------

# Every squeeze-excite block is six delegated operators with ReLU activations: pool, conv, relu,
# conv, sigmoid, mul (issue 22 measured 190 -> 136 over the 9 blocks of the full-width network).
OPERATORS_PER_SQUEEZE_EXCITE = 6


@pytest.fixture(scope="module")
def lowered(tiny_bundle) -> dict[str, tuple[nn.Module, LoweredProgram]]:
    """The stage's output at width 0.25 with ReLU and 2 blocks dropped, with and without squeeze-excite, as `.pte` programs."""
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(num_classes=4, width_mult=0.25).eval()
    context = StageContext(data=tiny_bundle, seed=0)
    out = {}
    for name, squeeze_excite in (("lean", "remove"), ("with SE", "keep")):
        config = ArchitectureConfig(squeeze_excite=squeeze_excite, activation="relu", drop_blocks=2)
        module = apply_stage(CompressedModel(net), config, context).module.eval()
        out[name] = (module, executorch_program(module, torch.zeros(tiny_bundle.input_shape)))
    return out


# Lowering a MobileNet to ExecuTorch takes 20-40 s of graph passes whatever its width.
@pytest.mark.slow
def test_the_lean_network_runs_fully_delegated_and_as_in_eager(lowered) -> None:
    for module, program in lowered.values():
        assert program.delegation is not None and program.delegation.fully_delegated, program.delegation
        run = load_runner(program.artifact, "executorch")
        with torch.no_grad():
            assert _close(run(IMAGES), module(IMAGES), 1e-3)


@pytest.mark.slow
def test_removing_squeeze_excite_removes_its_operators_from_the_program(lowered) -> None:
    (lean, lean_program), (with_se, with_se_program) = lowered["lean"], lowered["with SE"]
    # Two of the nine blocks went with the dropped blocks (features 10 and 11 both have one).
    assert len(squeeze_excite_blocks(with_se)) == SMALL_SQUEEZE_EXCITE - 2 and squeeze_excite_blocks(lean) == []
    assert with_se_program.delegation is not None and lean_program.delegation is not None
    removed = with_se_program.delegation.delegated_nodes - lean_program.delegation.delegated_nodes
    assert removed == OPERATORS_PER_SQUEEZE_EXCITE * len(squeeze_excite_blocks(with_se)), (with_se_program.delegation,
                                                                                          lean_program.delegation)


# --- the search space -----------------------------------------------------------------------------

def test_the_family_is_searched_only_where_the_study_lists_it() -> None:
    assert not any("architecture" in order for order in orders(SpaceConfig(stages=("distill", "prune", "channels", "quantize"))))
    space = parse_study({"name": "t", "data": {"source": "imagefolder", "root": "data/cifar10"},
                         "space": {"stages": ["architecture", "quantize"], "architecture_drop_blocks": [0, 2]}}).space
    assert space.architecture_drop_blocks == IntRange(0, 2)
    with pytest.raises(UserError) as caught:
        SpaceConfig(architecture_drop_blocks=IntRange(0, 8))
    assert "`space.architecture_drop_blocks`" in caught.value.problem and "ArchitectureConfig.drop_blocks" in caught.value.problem
    with pytest.raises(UserError, match="architecture_activation"):
        parse_study({"name": "t", "data": {"source": "imagefolder", "root": "data/cifar10"},
                     "space": {"architecture_activation": ["hard", "gelu"]}})


def test_sampled_pipelines_with_the_architecture_family_pass_the_order_check() -> None:
    space = SpaceConfig(stages=("distill", "channels", "architecture", "quantize"), required=("architecture",),
                        architecture_squeeze_excite=Choice(("keep", "remove", "least-costly")),
                        architecture_drop_blocks=IntRange(0, 3))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), directions=["maximize", "minimize"])
    seen_orders, seen_modes = set(), set()
    for _ in range(60):
        trial = study.ask()
        pipeline = sample_pipeline(trial, space)
        pipeline.check()
        kinds = [stage.kind for stage in pipeline.stages]
        surgery = next(stage for stage in pipeline.stages if isinstance(stage, ArchitectureConfig))
        assert surgery.finetune.epochs >= 1 and 0 <= surgery.drop_blocks <= 3
        assert (1 <= surgery.se_keep <= 4) if surgery.squeeze_excite == "least-costly" else surgery.se_keep == 0
        seen_orders.add(tuple(k for k in kinds if k in ("channels", "architecture")))
        seen_modes.add(surgery.squeeze_excite)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert {("channels", "architecture"), ("architecture", "channels")} <= seen_orders
    assert seen_modes == {"keep", "remove", "least-costly"}
