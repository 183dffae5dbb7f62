"""The user's model as the baseline, and MobileNetV3-Large through every stage that reshapes a network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from tests.conftest import make_bundle
from udacisense.common.errors import UserError
from udacisense.compression.architecture import ArchitectureConfig
from udacisense.compression.distillation import DistillationConfig
from udacisense.compression.pruning import StructuredPruningConfig
from udacisense.compression.stage import CompressedModel, StageContext, apply_stage
from udacisense.models.baseline import ensure_baseline
from udacisense.models.config import BaselineConfig, ModelConfig
from udacisense.models.lean import shape_keeping_blocks, squeeze_excite_blocks
from udacisense.models.mobilenet import arch_of
from udacisense.models.students import build_student
from udacisense.training import TrainConfig

LARGE = ModelConfig(arch="mobilenet_v3_large", width_mult=0.35)


@pytest.fixture(scope="module")
def bundle_64px():
    return make_bundle(per_class=6, classes=3, size=64)


@pytest.fixture(scope="module")
def tiny_large() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.mobilenet_v3_large(num_classes=3, width_mult=0.35).eval()


def test_the_users_checkpoint_is_the_baseline_loaded_never_trained(tmp_path: Path, bundle_64px, tiny_large) -> None:
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny_large.state_dict().items()},
                "classes": list(bundle_64px.classes)}, tmp_path / "model.pth")
    config = BaselineConfig(epochs=50, checkpoint=str(tmp_path / "model.pth"))  # epochs would take minutes: not run
    first = ensure_baseline(LARGE, config, bundle_64px, tmp_path / "baseline", progress=False)
    assert first.source == "loaded" and not first.reused and first.train_seconds == 0.0
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(first.model(x), tiny_large(x))
    again = ensure_baseline(LARGE, config, bundle_64px, tmp_path / "baseline", progress=False)
    assert again.reused and again.key == first.key
    trained_key = ensure_baseline(LARGE, TrainConfig(epochs=0), bundle_64px, tmp_path / "other", progress=False).key
    assert trained_key != first.key


def test_a_checkpoint_other_than_the_study_says_is_refused_with_the_settings_to_write(tmp_path: Path, bundle_64px,
                                                                                     tiny_large) -> None:
    torch.save(tiny_large.state_dict(), tmp_path / "model.pth")
    with pytest.raises(UserError) as caught:
        ensure_baseline(ModelConfig(), BaselineConfig(checkpoint=str(tmp_path / "model.pth")), bundle_64px, tmp_path / "b",
                        progress=False)
    assert "MobileNetV3-Large (width 0.35)" in caught.value.problem
    assert 'model.arch = "mobilenet_v3_large"' in caught.value.fix and "model.width_mult = 0.35" in caught.value.fix


def test_large_through_lean_surgery_students_and_channel_pruning_at_64_pixels(bundle_64px, tiny_large) -> None:
    x = torch.randn(2, 3, 64, 64)
    assert arch_of(tiny_large) == "mobilenet_v3_large"
    assert len(squeeze_excite_blocks(tiny_large)) == 8 and len(shape_keeping_blocks(tiny_large)) == 10
    context = StageContext(data=bundle_64px, teacher=tiny_large, seed=0)
    lean = apply_stage(CompressedModel(tiny_large), ArchitectureConfig(squeeze_excite="remove", activation="relu",
                                                                       drop_blocks=2), context).module
    assert not squeeze_excite_blocks(lean) and not any(isinstance(m, nn.Hardswish) for m in lean.modules())
    assert lean(x).shape == (2, 3)
    for architecture in ("standard", "lean"):
        student = build_student(tiny_large, 0.5, 3, seed=0, architecture=architecture)
        assert arch_of(student) == "mobilenet_v3_large" and student(x).shape == (2, 3)
        assert student.classifier[0].out_features == torchvision.models.mobilenet_v3_large(width_mult=0.5).classifier[0].out_features
    # A distilled student after surgery still has the teacher's architecture (the surgery dropped blocks of the current model).
    one_step = TrainConfig(epochs=1, max_batches_per_epoch=1)
    distilled = apply_stage(CompressedModel(lean), DistillationConfig(student_width=0.5, finetune=one_step), context).module
    assert arch_of(distilled) == "mobilenet_v3_large"
    pruned = apply_stage(CompressedModel(tiny_large), StructuredPruningConfig(ratio=0.5, head_ratio=0.5), context).module
    assert pruned(x).shape == (2, 3)
    assert pruned.classifier[0].out_features < tiny_large.classifier[0].out_features
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in tiny_large.parameters())
