"""Study files: every mistake is caught at load time with the key and the fix named."""

from __future__ import annotations

from pathlib import Path

import pytest

from udacisense.common.errors import UserError
from udacisense.search.study import load_study

STUDIES = Path(__file__).resolve().parents[1] / "studies"


@pytest.mark.parametrize("name", ["smoke", "cifar10-offline", "household", "udacisense", "udacisense-offline"])
def test_shipped_studies_load(name: str) -> None:
    study = load_study(STUDIES / f"{name}.toml")
    assert study.name == name
    assert study.storage_url == f"sqlite:///runs/{name}/study.db"


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
