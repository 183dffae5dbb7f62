"""Study files: every mistake is caught at load time with the key and the fix named."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest

from udacisense.common.errors import UserError
from udacisense.search.study.config import load_study
from udacisense.search.study.records import StudyAttr, store_study
from udacisense.search.study.storage import check_settings, study_settings
from udacisense.spaces.distributions import Choice

STUDIES = Path(__file__).resolve().parents[1] / "studies"


@pytest.mark.parametrize("name", ["smoke", "cifar10-offline", "household", "udacisense", "udacisense-offline"])
def test_shipped_studies_load(name: str) -> None:
    study = load_study(STUDIES / f"{name}.toml")
    assert study.name == name
    assert study.storage_url == f"sqlite:///runs/{name}/study.db"


def test_the_offline_study_without_its_space_table_is_the_same_study(tmp_path: Path) -> None:
    """The offline study names families only, so deleting its `[space]` table changes nothing the search reads:
    every default spans all the product can do."""
    text = (STUDIES / "cifar10-offline.toml").read_text()
    without = tmp_path / "cifar10-offline.toml"
    without.write_text(text[:text.index("[space]")])
    assert "[space]" in text and "[space]" not in without.read_text()
    assert load_study(without) == load_study(STUDIES / "cifar10-offline.toml")


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text('name = "t"\n[data]\nsource = "imagefolder"\nroot = "x"\n' + body)
    return path


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[baseline]\nepohcs = 3\n", "did you mean `baseline.epochs`"),
        ("[baseline]\nepochs = \"three\"\n", "`baseline.epochs`"),
        ("[baseline]\nepochs = -1\n", "out of range"),
        ("[targets]\nsize_reduction = 1.5\n", "`targets.size_reduction`"),
        ("[targets]\nsize_reduction = nan\n", "not a finite number"),
        ("[search]\nsampler = \"randon\"\n", "did you mean 'random'"),
        ("[space]\nprune_amount = [0.9, 0.1]\n", "`space.prune_amount`"),
        ("[space]\nstages = [\"quantise\"]\n", "`space.stages[0]`"),
        ("[data]\nbatch = 3\n", "is not valid TOML"),
        ("[colour]\nred = 1\n", "Unknown key `colour`"),
    ],
)
def test_mistakes_name_the_key_and_the_fix(tmp_path: Path, body: str, expected: str) -> None:
    with pytest.raises(UserError) as caught:
        load_study(_write(tmp_path, body))
    assert expected in str(caught.value)
    assert caught.value.fix


def test_a_space_shipping_in_a_runtime_the_baseline_is_not_measured_in_is_refused(tmp_path: Path) -> None:
    # The x86 backend ships TorchScript: its trials' ratios need the baseline measured in TorchScript too.
    measured = '[evaluation]\nruntimes = ["eager", "executorch"]\n'
    with pytest.raises(UserError, match="can ship in torchscript") as caught:
        load_study(_write(tmp_path, measured + '[space]\nstages = ["quantize"]\nquant_backends = ["x86", "xnnpack"]\n'))
    assert "'torchscript'" in caught.value.fix
    assert load_study(_write(tmp_path, measured + '[space]\nstages = ["quantize"]\nquant_backends = ["xnnpack"]\n'))
    # Float trials ship in `evaluation.float_runtime`; a space whose every trial quantizes has none.
    float_in_torchscript = '[evaluation]\nruntimes = ["eager", "executorch"]\nfloat_runtime = "torchscript"\n'
    with pytest.raises(UserError, match="can ship in torchscript"):
        load_study(_write(tmp_path, float_in_torchscript + '[space]\nstages = ["channels"]\n'))
    assert load_study(_write(tmp_path, float_in_torchscript + '[space]\nstages = ["channels", "quantize"]\n'
                                                             'quant_types = ["static"]\nquant_backends = ["xnnpack"]\n'))


def test_missing_required_key(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('name = "t"\n')
    with pytest.raises(UserError, match="Missing required key `data`"):
        load_study(path)


def test_missing_file_lists_known_studies(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_study(tmp_path / "nope.toml")


def test_overrides_apply_dotted_keys(tmp_path: Path) -> None:
    study = load_study(_write(tmp_path, ""), overrides={"data.root": "elsewhere", "baseline.epochs": 2})
    assert study.data.root == "elsewhere"
    assert study.baseline.epochs == 2


def test_a_setting_added_since_the_trials_were_stored_is_no_change_at_its_default() -> None:
    smoke = load_study(Path(__file__).resolve().parents[1] / "studies" / "smoke.toml")
    # Searching 8-bit Linear weights only, as every study did before the setting existed (its default is now [8, 4]).
    study = dataclasses.replace(smoke, space=dataclasses.replace(smoke.space, linear_weight_bits=Choice((8,))))
    optuna_study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    # Stored by a version of the tool that had no `space.linear_weight_bits` (it ran 8-bit Linear weights).
    stored = {key: value for key, value in study_settings(study).items() if key != "space.linear_weight_bits"}
    store_study(optuna_study, {StudyAttr.SETTINGS: stored})
    check_settings(study, optuna_study, record=False)
    searching_int4 = dataclasses.replace(study, space=dataclasses.replace(study.space, linear_weight_bits=Choice((8, 4))))
    with pytest.raises(UserError, match=r"space\.linear_weight_bits: '\(unset\)' -> \[8, 4\]"):
        check_settings(searching_int4, optuna_study, record=False)
    # A stored setting that the study file now drops or changes is still refused.
    changed = dataclasses.replace(study, seed=study.seed + 1)
    with pytest.raises(UserError, match="seed"):
        check_settings(changed, optuna_study, record=False)
