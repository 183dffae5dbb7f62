"""Successive halving over fine-tune epochs: where a stage is looked at, how trials rank there, and a real
search in which an outranked trial stops at its rung and the others train on."""

from __future__ import annotations

import optuna

from tests.conftest import TORCHSCRIPT_ARTIFACTS
from udacisense.search.report.trial_facts import prune_category
from udacisense.search.study.config import load_study
from udacisense.search.study.records import Attr, StopReason, store
from udacisense.search.study.storage import open_study
from udacisense.search.study.trial_record import TrialRecord
from udacisense.search.trial.early_stopping import AccuracyMonitor, StopRule, competitors_at
from udacisense.search.trial.halving import Competitor, is_rung, layers, rank
from udacisense.search.workers.runner import TrialCounts, run_search

WIDE, NARROW = (1_000_000, 400_000), (250_000, 100_000)  # (FLOPs, weight bytes) of two footprints


def test_a_stage_is_looked_at_after_1_rate_and_rate_squared_epochs_while_epochs_remain() -> None:
    assert [e for e in range(1, 10) if is_rung(e, 10, 3)] == [1, 3, 9]
    assert [e for e in range(1, 5) if is_rung(e, 4, 3)] == [1, 3]
    assert [e for e in range(1, 4) if is_rung(e, 3, 3)] == [1]  # after 3 of 3 nothing is left to save
    assert not any(is_rung(e, 4, rate) for e in range(1, 5) for rate in (0, 1))  # off
    assert not is_rung(1, 1, 3)


def test_trials_rank_by_non_dominated_layers_of_accuracy_and_footprint() -> None:
    wide = [Competitor(n, acc, *WIDE) for n, acc in ((0, 0.55), (1, 0.54), (2, 0.50))]
    narrow = Competitor(3, 0.45, *NARROW)  # least accurate, but cheaper than every wide one
    assert layers([*wide, narrow]) == {0: 0, 3: 0, 1: 1, 2: 2}
    # Fewer competitors than the rate: no ranking yet, nothing is stopped.
    assert rank(1, wide[:2], 3) is None
    # Of 3 equally costly trials only the most accurate goes on.
    assert [rank(n, wide, 3).goes_on for n in (0, 1, 2)] == [True, False, False]
    # The cheap one goes on although it is the least accurate: it is on the first layer.
    assert rank(3, [*wide, narrow], 3).goes_on
    # The cut falls inside a layer: every trial of that layer goes on (two tied at the top of 3).
    tied = [Competitor(0, 0.55, *WIDE), Competitor(1, 0.55, *WIDE), Competitor(2, 0.40, *WIDE)]
    assert [rank(n, tied, 3).goes_on for n in (0, 1, 2)] == [True, True, False]
    assert rank(7, wide, 3) is None  # a trial not at the rung is not ranked


def test_a_search_halves_the_outranked_trial_at_its_rung_and_the_others_train_on(seeded_smoke) -> None:
    """Real trials of one pipeline (distillation into the current model over 2 epochs, dynamic int8): two
    fine-tune gently, the third at a learning rate that wrecks the network. At the rung after epoch 1 the
    third meets two trials of its footprint, both more accurate: it stops there; the first two trained both
    epochs."""
    pipeline = "use_distill = true, student_width = 0.0, finetune_epochs = 2"
    path = seeded_smoke(n_trials=3, edits={
        'stages = ["channels", "quantize"]': 'stages = ["distill", "quantize"]\nstudent_widths = [0.0]\n'
                                             "finetune_lr = [0.0001, 10.0]",
        'quant_types = ["static"]': 'quant_types = ["dynamic"]',
        # Tiny int8 models disagree with their PyTorch model often; parity is not what this tests, nor lowering.
        **TORCHSCRIPT_ARTIFACTS, "latency_runs = 20": "latency_runs = 20\nint8_min_agreement = 0.5",
        "finetune_epochs = [1, 1]": "finetune_epochs = [1, 2]",
        "heartbeat_seconds = 2": "heartbeat_seconds = 2\nscreening = false\nhalving_rate = 3\nportfolio = ["
                                 f"{{ {pipeline}, finetune_lr = 0.0001 }}, {{ {pipeline}, finetune_lr = 0.0002 }}, "
                                 f"{{ {pipeline}, finetune_lr = 10.0 }}]"})
    run_search(str(path), n_jobs=1, progress=False)
    config = load_study(path)
    study = open_study(config, create=False)
    gentle, gentler, wrecked = (TrialRecord.of(t) for t in study.get_trials()[:3])
    assert gentle.footprint == gentler.footprint == wrecked.footprint is not None
    for kept in (gentle, gentler):
        assert kept.trial.state is optuna.trial.TrialState.COMPLETE
        assert [p[2] for p in kept.curve if p[1] == "distill"] == [0, 1, None]  # both epochs, then the stage's end
    assert wrecked.trial.state is optuna.trial.TrialState.PRUNED and wrecked.stop_reason is StopReason.HALVED
    assert [p[2] for p in wrecked.curve] == [0]  # stopped at the rung, its second epoch never trained
    assert wrecked.curve[0][3] < min(gentle.curve[0][3], gentler.curve[0][3])
    assert "halved after fine-tune epoch 1 of 2" in wrecked.trial.user_attrs["pruned_reason"]
    # Its epoch of training is its distillation stage's time, not time no phase covers.
    assert wrecked.phase_seconds["stage 1 distill"] >= wrecked.curve[0][4] > wrecked.phase_seconds["other"]
    counts = TrialCounts.of(study.get_trials())
    assert counts.judged == 3 and counts.stopped_by == (("halved", 1),)
    # The report counts it under its own heading (tests/test_report.py checks the table those headings fill).
    assert prune_category(wrecked) == "halved (outranked at a rung of successive halving; its other epochs not trained)"


def _at_first_epoch(study: optuna.Study, planned: int, accuracy: float, footprint: tuple[int, int]) -> None:
    """A finished trial of one distillation stage planned for ``planned`` epochs, at ``accuracy`` after its first."""
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, user_attrs={
            "stage_epochs": [["distill", planned]], "curve": [[0, "distill", 0, accuracy, 3.0]],
            "estimated_flops": footprint[0], "estimated_weight_bytes": footprint[1]}))


def test_a_rung_ranks_only_trials_of_the_same_planned_epochs() -> None:
    """With ``finetune_epochs = [1, 4]`` a 1-epoch stage is annealed after its epoch, a 4-epoch one still hot:
    the 4-epoch trial at its epoch 1 meets only the other 4-epoch trial there, and goes on ahead of it."""
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for accuracy in (0.62, 0.61):
        _at_first_epoch(study, 1, accuracy, WIDE)  # annealed: far ahead of any hot model after one epoch
    _at_first_epoch(study, 4, 0.38, WIDE)
    trial = study.ask()
    store(trial, {Attr.STAGE_EPOCHS: [["distill", 4]], Attr.ESTIMATED_FLOPS: WIDE[0],
                  Attr.ESTIMATED_WEIGHT_BYTES: WIDE[1]})
    monitor = AccuracyMonitor(trial, StopRule(floor=0.3, margin=0.1), ("distill",), epochs=(4,), halving_rate=2)
    monitor.on_epoch_end(0, 0.40)  # a rung; ranked against all four it would be in the bottom half and halved
    assert TrialRecord.of(study.get_trials()[trial.number]).stop_reason is None
    # The 1-epoch trials meet each other; the stored curves read their points' schedules from `stage_epochs`.
    history = [TrialRecord.of(t) for t in study.get_trials()]
    assert sorted(c.number for c in competitors_at(("distill", 0, 1, 0), history)) == [0, 1]
    assert sorted(c.number for c in competitors_at(("distill", 0, 4, 0), history)) == [2, trial.number]
