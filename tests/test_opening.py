"""Opening trials: which ones a space allows, and how they enter a study whose space the probes narrowed afterwards
(their real run is in ``test_probes``)."""

from __future__ import annotations

import dataclasses
import datetime

import optuna
import pytest

from udacisense.search.study.records import DIRECTIONS, Attr, queued_attrs
from udacisense.search.trial.portfolio import sampled_as
from udacisense.search.workers.opening import opening_entries, record_opening
from udacisense.spaces.distributions import Choice, IntRange
from udacisense.spaces.sampling import sample_pipeline
from udacisense.spaces.space import SpaceConfig

SPACE = SpaceConfig(stages=("distill", "prune", "channels", "quantize"), quant_types=Choice(("none", "dynamic", "static", "qat")),
                    quant_backends=Choice(("x86", "xnnpack")), linear_weight_bits=Choice((8, 4)))


def _pipelines(space: SpaceConfig) -> list[str]:
    return [sampled_as(space, entry).pipeline.describe() for entry in opening_entries(space)]  # type: ignore[union-attr]


def test_the_opening_quantizes_the_trained_model_after_training_only_on_the_shipping_backend() -> None:
    assert _pipelines(SPACE) == ["dynamic(int8, xnnpack)", "ptq(xnnpack)"]
    assert _pipelines(dataclasses.replace(SPACE, quant_types=Choice(("static", "qat")))) == ["ptq(xnnpack)"]
    assert _pipelines(dataclasses.replace(SPACE, quant_backends=Choice(("x86",)))) == ["dynamic(int8, x86)", "ptq(x86)"]
    # Nothing that trains: no opening where the space insists on a training stage or offers only QAT.
    assert _pipelines(dataclasses.replace(SPACE, required=("prune",))) == []
    assert _pipelines(dataclasses.replace(SPACE, quant_types=Choice(("none", "qat")))) == []


def test_the_opening_cuts_every_operator_the_architecture_family_removes_and_no_block_before_the_rest() -> None:
    cutting = dataclasses.replace(SPACE, stages=("distill", "architecture", "quantize"), architecture_drop_blocks=IntRange(1, 6))
    assert _pipelines(cutting) == ["architecture(no SE, ReLU, -1 block) → ptq(xnnpack)", "dynamic(int8, xnnpack)", "ptq(xnnpack)"]
    cut = sampled_as(cutting, opening_entries(cutting)[0])
    assert cut is not None and cut.params["finetune_epochs"] == cutting.finetune_epochs.high  # fine-tuned the longest
    # Only the operators the space lets it remove; none where it removes none, or has no architecture family.
    assert _pipelines(dataclasses.replace(cutting, architecture_activation=Choice(("hard",))))[0] == \
        "architecture(no SE, -1 block) → ptq(xnnpack)"
    assert _pipelines(dataclasses.replace(cutting, architecture_activation=Choice(("hard",)),
                                          architecture_squeeze_excite=Choice(("keep",)))) == _pipelines(SPACE)
    # Never in a space that insists on another training stage, nor without static int8.
    assert _pipelines(dataclasses.replace(cutting, required=("distill",))) == []
    assert _pipelines(dataclasses.replace(cutting, quant_types=Choice(("dynamic",)))) == ["dynamic(int8, xnnpack)"]


def _ran(space: SpaceConfig) -> list[optuna.trial.FrozenTrial]:
    """The opening trials as an opening study stores them, with made-up measurements."""
    trials = []
    for index, entry in enumerate(opening_entries(space)):
        sampled = sampled_as(space, entry)
        assert sampled is not None
        trial = optuna.trial.create_trial(
            values=[0.5 - index / 10, 0.5, 0.4], params=sampled.params, distributions=sampled.distributions,
            user_attrs=queued_attrs({Attr.OPENING: True, Attr.PIPELINE_KEY: sampled.pipeline.key(),
                                     Attr.PIPELINE: sampled.pipeline.describe()}))
        trial.datetime_start = datetime.datetime(2026, 1, 1, 0, 0, index)
        trial.datetime_complete = datetime.datetime(2026, 1, 1, 0, 0, 30 + index)
        trials.append(trial)
    return trials


def test_opening_trials_enter_the_narrowed_space_as_it_samples_them_with_their_results_and_times(tmp_path) -> None:
    ran = _ran(SPACE)
    # The probes dropped pruning (the permutations of the families change), the x86 backend and float programs.
    narrowed = dataclasses.replace(SPACE, stages=("distill", "channels", "quantize"), quant_backends=Choice(("xnnpack",)),
                                   quant_types=Choice(("dynamic", "static", "qat")))
    # A database checks what Optuna refuses (the in-memory storage does not).
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name="narrowed", directions=list(DIRECTIONS),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    assert record_opening(study, ran, narrowed) == [0, 1]
    recorded = study.get_trials()
    assert [t.values for t in recorded] == [t.values for t in ran]
    assert [(t.datetime_start, t.datetime_complete) for t in recorded] == [(t.datetime_start, t.datetime_complete) for t in ran]
    assert [t.user_attrs for t in recorded] == [t.user_attrs for t in ran]
    assert all(t.distributions["quant_type"].choices == ("dynamic", "static", "qat") for t in recorded)
    # Stored under the unnarrowed space's choices, the next sample would raise: Optuna refuses changed choices.
    for _ in range(20):
        trial = study.ask()
        sample_pipeline(trial, narrowed)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    unnarrowed = optuna.create_study(storage=storage, study_name="as-run", directions=list(DIRECTIONS))
    for trial in ran:
        unnarrowed.add_trial(trial)
    with pytest.raises(ValueError, match="dynamic value space"):
        for _ in range(20):
            sample_pipeline(unnarrowed.ask(), narrowed)


def test_an_opening_trial_the_probes_ruled_out_stays_out_of_the_study() -> None:
    static_only = dataclasses.replace(SPACE, quant_types=Choice(("static", "qat")))
    study = optuna.create_study(directions=list(DIRECTIONS))
    assert record_opening(study, _ran(SPACE), static_only) == [0]
    assert study.get_trials()[0].user_attrs[Attr.PIPELINE] == "ptq(xnnpack)"
