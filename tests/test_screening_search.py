"""Screening in a real search: a repeated structure is screened on the memo, then promoted and measured (a file of
its own, so that the test runner can run it beside the other screening tests)."""

from __future__ import annotations

import pytest

from tests.conftest import TORCHSCRIPT_ARTIFACTS
from udacisense.search.results.front import front_tables, pareto_trials
from udacisense.search.study.config import load_study
from udacisense.search.study.records import Fidelity
from udacisense.search.study.storage import open_study
from udacisense.search.study.trial_record import TrialRecord
from udacisense.search.workers.runner import run_search


@pytest.mark.slow(minutes=2)
def test_a_search_screens_a_repeated_structure_and_measures_it_once_promoted(seeded_smoke) -> None:
    """Real trials: two pipelines of one structure (channel pruning 0.5, int8); the first recovers for 6
    epochs, the second hardly at all. The second is screened on the memo; with a larger accuracy margin it is
    promoted, run again with its seed, lowered and measured."""
    pipeline = ('use_channels = true, channel_ratio = 0.5, channel_head_ratio = 0.0, channel_importance = "l1", '
                'quant_backend = "x86", float_prefix_blocks = 0')
    path = seeded_smoke(n_trials=2, edits={
        **TORCHSCRIPT_ARTIFACTS,  # the screen keys and prices programs of any runtime alike; a .pte takes 20-40 s
        "finetune_epochs = [1, 1]": "finetune_epochs = [1, 6]",
        # Tiny int8 models at ~20% accuracy disagree with their PyTorch model often; parity is not what this tests.
        "latency_warmup = 3": TORCHSCRIPT_ARTIFACTS["latency_warmup = 3"] + "\nint8_min_agreement = 0.5",
        "heartbeat_seconds = 2": "heartbeat_seconds = 2\nearly_stopping = false\nscreen_accuracy_margin = 0.0\nportfolio = ["
                                 f"{{ {pipeline}, finetune_epochs = 6, finetune_lr = 0.05 }}, "
                                 f"{{ {pipeline}, finetune_epochs = 1, finetune_lr = 0.002 }}]"})
    run_search(str(path), n_jobs=1, progress=False)
    config = load_study(path)
    trials = open_study(config, create=False).get_trials()
    first, second = (TrialRecord.of(t) for t in trials[:2])
    assert first.is_measured and first.structure == second.structure
    assert second.has_values and second.fidelity is Fidelity.ESTIMATED and second.estimate["source"] == "memo"
    assert second.size_ratio == first.size_ratio and second.artifact_path is None  # the memo's bytes, nothing lowered
    assert second.number not in {t.number for t in pareto_trials(trials)}
    run_search(str(path), n_jobs=1, progress=False,
               overrides={"search.n_trials": 3, "search.screen_accuracy_margin": 0.5})
    trials = open_study(config, create=False).get_trials()
    promoted = TrialRecord.of(trials[-1])
    assert promoted.promoted_from == second.number and promoted.seed == second.seed
    assert promoted.is_measured and promoted.artifact_path is not None and promoted.artifact_path.is_file()
    # The memo's bytes: a TorchScript archive differs from its twin by a few bytes of pickled names (a .pte by none:
    # tests/test_screening.py).
    assert promoted.size_ratio == pytest.approx(second.size_ratio, rel=1e-3)
    assert promoted.number in {t.number for t in pareto_trials([trials[-1]])}
    assert promoted.number in set(front_tables(open_study(config, create=False).get_trials(), config.targets, 0.0)[1]["trial"])
