"""The starter kit's model shape end to end: a baseline that upsamples inside ``forward``, a search that
lowers the resize target, and an ExecuTorch export that passes parity on real test images."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from tests.conftest import SHARED_ARCHIVE
from udacisense.search.cli import main
from udacisense.search.study.config import load_study
from udacisense.search.study.storage import open_study

pytestmark = pytest.mark.skipif(not SHARED_ARCHIVE.is_file(), reason="needs ../shared/data/cifar10-jpeg.tar.gz")

UPSAMPLED_STUDY = """
name = "upsampled"
runs_dir = "{runs}"
seed = 0

[data]
source = "imagefolder"
root = "{root}"
archive = "{archive}"
train_per_class = 20
test_per_class = 8
val_fraction = 0.2
batch_size = 32
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]

[model]
width_mult = 0.5
input_resolution = 64

[baseline]
epochs = 3
lr = 0.05

[evaluation]
latency_runs = 10
latency_warmup = 2
runtimes = ["eager", "executorch"]  # no TorchScript trace of the baseline: the search compares .pte programs

[targets]
max_accuracy_drop = 0.5

[search]
n_trials = 2
sampler = "random"
early_stopping = false
probes = false  # tests/test_probes.py tests them; here they would lower int8 programs at 48 pixels

[space]
# Float only: the resize inside a .pte is what is tested here (int8 .pte lowering has tests of its own
# and costs twice a float one).
stages = ["resolution"]
required = ["resolution"]
resolutions = [48, 32]
finetune_epochs = [1, 1]
"""


@pytest.mark.slow
def test_resolution_search_lowers_flops_and_exports_a_resizing_pte_with_parity(tmp_path: Path) -> None:
    from tests.conftest import REPO

    study_path = tmp_path / "upsampled.toml"
    study_path.write_text(UPSAMPLED_STUDY.format(runs=tmp_path / "runs", root=REPO / "data" / "cifar10",
                                                 archive=SHARED_ARCHIVE))
    config = load_study(study_path)
    for resolution in (48, 32):  # both resize targets, whatever the sampler would draw
        open_study(config).enqueue_trial({"resolution": resolution})
    # One worker, in this process: the resize is what is tested, not parallel workers (the smoke search's), and two
    # fresh worker processes would each pay a first lowering (~15 s more than a later one).
    assert main(["search", "--study", str(study_path), "--quiet", "--n-jobs", "1"]) == 0

    baseline = json.loads((config.run_dir / "baseline" / "metrics.json").read_text())
    baseline_flops = baseline["flops"]["flops"]
    trials = optuna.load_study(study_name=config.name, storage=config.storage_url).get_trials()
    complete = [t for t in trials if t.state is optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2, [t.user_attrs.get("error") or t.user_attrs.get("pruned_reason") for t in trials]
    flops_at = {}
    for trial in complete:
        resized = trial.user_attrs["stages"][0]
        assert resized["kind"] == "resolution"
        flops_at[trial.params["resolution"]] = resized["metrics"]["flops"]
        assert trial.user_attrs["runtime"] == "executorch"
        assert trial.user_attrs["parity"]["top1_agreement"] >= 0.9
    # Compute falls with the square of the resize target (the classifier head does not shrink): 64 -> 48
    # measured 0.72x the baseline's FLOPs, 64 -> 32 about 0.3x.
    assert set(flops_at) == {48, 32}
    assert all(flops < 0.8 * baseline_flops for flops in flops_at.values()), (flops_at, baseline_flops)
    assert flops_at[32] < flops_at[48]

    card = json.loads((config.run_dir / "export" / "model_card.json").read_text())
    assert card["artifact"].endswith(".pte")
    assert card["input"]["shape"] == [1, 3, 32, 32]  # the app still feeds 32x32 images; the model resizes them
    assert card["parity"]["top1_agreement"] >= 0.95
    assert main(["verify", str(config.run_dir / "export" / card["artifact"]), "--data", config.data.root]) == 0
