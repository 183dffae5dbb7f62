"""Screening: the structure key, the memo, the cost model, and what a screened or promoted trial may reach."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
import torch
import torchvision

from tests.test_report import _synthetic_study
from udacisense.common.errors import UserError
from udacisense.compression.quantization import _ptq_pt2e
from udacisense.evaluators.structure import Structure, structure_of
from udacisense.search.results.front import front_tables, pareto_trials
from udacisense.search.results.hypervolume import hypervolume_of_first
from udacisense.search.study.config import load_study
from udacisense.search.study.records import Attr, Fidelity, Probe, queued_attrs
from udacisense.search.study.storage import open_study
from udacisense.search.study.trial_record import TrialRecord, records
from udacisense.search.trial.portfolio import check_portfolio, enqueue_portfolio, enqueue_promotions, needs_no_student
from udacisense.search.trial.screening import (
    CostModel,
    ScreeningRule,
    ScreeningSummary,
    could_matter,
    estimate,
    gap_bound,
    promotions,
)

RULE = ScreeningRule(latency_margin=0.1, accuracy_margin=0.0)


def _int8_graph(seed: int, width: float = 0.25) -> torch.fx.GraphModule:
    torch.manual_seed(seed)
    model = torchvision.models.mobilenet_v3_small(num_classes=4, width_mult=width).eval()
    return _ptq_pt2e(model, [torch.randn(4, 3, 32, 32) * (1 + seed)], [], 8)


def test_models_of_one_structure_share_a_key() -> None:
    """The memo's key: weights do not change it; the architecture and the runtime do."""
    first, second = _int8_graph(0), _int8_graph(1)
    keys = [structure_of(g, "executorch", "xnnpack") for g in (first, second)]
    assert keys[0] == keys[1]
    wider = structure_of(_int8_graph(0, width=0.5), "executorch", "xnnpack")
    assert wider.key != keys[0].key and wider.weight_elements > keys[0].weight_elements
    assert structure_of(first, "torchscript", "xnnpack").key != keys[0].key  # the runtime is part of the key
    float_model = torchvision.models.mobilenet_v3_small(num_classes=4, width_mult=0.25)
    assert structure_of(float_model).operators < keys[0].operators  # int8 adds quantize/dequantize operators


def test_int8_programs_of_one_structure_have_the_same_bytes() -> None:
    """What lets the memo give a screened trial its exact bytes: an int8 .pte stores its weights dense, in fixed-size
    tensors, whatever their values (a small network: lowering a MobileNetV3 takes 20 s, and the layout is the same)."""
    from udacisense.runtime import executorch_bytes

    def program(seed: int) -> bytes:
        torch.manual_seed(seed)
        network = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                                      torch.nn.Conv2d(16, 16, 3, groups=16), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                      torch.nn.Flatten(), torch.nn.Linear(16, 4)).eval()
        graph = _ptq_pt2e(network, [torch.randn(4, 3, 16, 16) * (1 + seed)], [], 8)
        return executorch_bytes(graph, torch.zeros(1, 3, 16, 16))

    first, second = program(0), program(1)
    assert first != second and len(first) == len(second)


def _measured(study: optuna.Study, structure: Structure, values: tuple[float, float, float], model_val: float,
              *, fidelity: Fidelity = Fidelity.MEASURED, estimate_doc: dict | None = None) -> int:
    attrs = {Attr.STRUCTURE: structure.as_dict(), Attr.FIDELITY: fidelity.value, Attr.RUNTIME: "executorch",
             Attr.BACKEND: "xnnpack", Attr.STAGES: [{"kind": "ptq", "metrics": {"val_top1": model_val}}],
             Attr.ARTIFACT_BYTES: int(values[2] * 1_000_000), Attr.ESTIMATE: estimate_doc, Attr.SEED: 5}
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, values=list(values), params={},
                                              distributions={}, user_attrs=queued_attrs(attrs)))
    return len(study.trials) - 1


def _structure(key: str, operators: int, weights: int) -> Structure:
    return Structure(key, operators, weights, weights * 1.0)


def _study() -> optuna.Study:
    return optuna.create_study(directions=["maximize", "minimize", "minimize"])


def test_the_memo_returns_a_measured_structure_s_bytes_exactly_and_its_best_latency() -> None:
    study = _study()
    known = _structure("aaaa", 400, 500_000)
    _measured(study, known, (0.60, 0.3213, 0.23711), model_val=0.59)
    _measured(study, known, (0.58, 0.3101, 0.23711), model_val=0.58)
    found = estimate(known, 0.55, "executorch", True, records(study.trials), RULE)
    assert found is not None and found.source == "memo"
    assert found.size_ratio == found.size_ratio_low == 0.23711  # exact: bytes are the structure's
    assert found.latency_ratio_low == 0.3101 and found.latency_ratio == pytest.approx((0.3213 + 0.3101) / 2)
    # accuracy: the model's top-1 plus the mean gap seen (0.005), or at the optimistic end the largest of the two
    # artifact-minus-model gaps (0.01 and 0) widened for the seven missing to a 90% bound, plus the margin (0 here)
    assert found.val_top1 == pytest.approx(0.555) and found.val_top1_high == pytest.approx(0.56 + 0.05 * 7 / 9)
    history = records(study.trials)
    # A less accurate model of a measured structure is dominated by that structure's measured trial: screened.
    assert not could_matter(found, known, history)
    # Less accurate than the structure's best measured trial but faster than it on the memo's best timing: that
    # latency is the structure's, drawn again; only the accuracy could lift it onto the front, and it cannot.
    close = estimate(known, 0.545, "executorch", True, history, RULE)
    assert close is not None and close.latency_ratio_low < 0.3213 and not could_matter(close, known, history)
    better = estimate(known, 0.62, "executorch", True, history, RULE)
    assert better is not None and could_matter(better, known, history)
    # Another runtime or form is another memo and model: no estimate from these trials.
    assert estimate(known, 0.55, "torchscript", True, records(study.trials), RULE) is None


def test_one_model_to_artifact_gap_is_no_90_percent_bound_of_the_next() -> None:
    """The 90th percentile of one gap is that gap, which the next exceeds half the time: a candidate two points
    below its structure's measured trial was screened on that one observation. Few gaps widen the bound."""
    study = _study()
    known = _structure("aaaa", 400, 500_000)
    _measured(study, known, (0.60, 0.32, 0.24), model_val=0.60)  # its artifact measured what its model did: gap 0
    history = records(study.trials)
    close = estimate(known, 0.58, "executorch", True, history, RULE)
    assert close is not None and close.val_top1_high > 0.60
    assert could_matter(close, known, history)  # lowered and measured, not screened
    far = estimate(known, 0.50, "executorch", True, history, RULE)
    assert far is not None and not could_matter(far, known, history)  # 10 points below: no gap seen or allowed reaches it
    # The widening shrinks as gaps accumulate; from nine, the bound is the order statistic a new gap exceeds
    # with probability 10%: the largest of nine, the 18th smallest of nineteen.
    assert gap_bound([]) > gap_bound([0.01]) - 0.01 > gap_bound([0.01] * 8) - 0.01 > 0
    assert gap_bound([i / 1000 for i in range(9)]) == 0.008 and gap_bound([i / 1000 for i in range(19)]) == 0.017


def test_the_cost_model_needs_three_structures_and_fits_operators_and_weights() -> None:
    study = _study()
    truth = CostModel((0.08, 0.05, 0.01), (0.4, 0.002, 0.02), 0)  # latency and size as functions of the counts

    def add(key: str, operators: int, weights: int, accuracy: float) -> Structure:
        structure = _structure(key, operators, weights)
        _measured(study, structure, (accuracy, truth.latency_ratio(structure), truth.size_ratio(structure)), accuracy)
        return structure

    add("a", 440, 1_200_000, 0.55)
    add("b", 200, 400_000, 0.54)
    add("c", 240, 900_000, 0.53)
    unseen = _structure("z", 300, 600_000)
    # Three structures fit a model, but none is left to measure its error on a structure it has not seen: no estimate.
    assert estimate(unseen, 0.5, "executorch", True, records(study.trials), RULE) is None
    add("d", 436, 300_000, 0.50)
    found = estimate(unseen, 0.5, "executorch", True, records(study.trials), RULE)
    assert found is not None and found.source == "model"
    assert found.latency_ratio == pytest.approx(truth.latency_ratio(unseen), rel=1e-4)
    assert found.size_ratio == pytest.approx(truth.size_ratio(unseen), rel=1e-4)
    # The model is exact here, so its held-out error is ~0 and the rule's 10% margin applies.
    assert found.latency_ratio_low == pytest.approx(found.latency_ratio * 0.9)
    add("e", 300, 500_000, 0.50)
    # A structure 50% slower than the counts say: the model's held-out error grows, and so does the margin.
    skewed = _structure("f", 350, 700_000)
    _measured(study, skewed, (0.5, truth.latency_ratio(skewed) * 1.5, truth.size_ratio(skewed)), 0.5)
    wider = estimate(unseen, 0.5, "executorch", True, records(study.trials), RULE)
    assert wider is not None and wider.latency_ratio_low < wider.latency_ratio * 0.8


def test_the_probes_programs_seed_the_memo_and_the_cost_model_before_any_trial() -> None:
    truth = CostModel((0.08, 0.05, 0.01), (0.4, 0.002, 0.02), 0)

    def probe(key: str, operators: int, weights: int, *, runtime: str = "executorch",
              backend: str | None = "xnnpack") -> Probe:
        program = _structure(key, operators, weights)
        latency = truth.latency_ratio(program)
        return Probe(key, "static xnnpack", latency, latency * 0.95, latency * 1.1, truth.size_ratio(program), 1.0,
                     program, runtime, backend)

    probes = [probe("a", 440, 1_200_000), probe("b", 200, 400_000), probe("c", 240, 900_000), probe("d", 436, 300_000)]
    # Programs of another runtime or form, and a probe stored before probes kept their programs: none of this memo.
    others = [probe("x", 300, 600_000, runtime="torchscript"), probe("y", 300, 600_000, backend=None),
              dataclasses.replace(probe("w", 300, 600_000), program=None)]
    known = probes[1].program
    assert known is not None and estimate(known, 0.5, "executorch", True, [], RULE) is None  # no trial: nothing known
    found = estimate(known, 0.5, "executorch", True, [], RULE, [*probes, *others])
    assert found is not None and found.source == "memo"
    assert found.size_ratio == probes[1].size_ratio and found.latency_ratio_low == probes[1].latency_ratio
    # The unseen structure is estimated by a model fit on the four probed programs alone.
    unseen = _structure("z", 300, 600_000)
    fitted = estimate(unseen, 0.5, "executorch", True, [], RULE, [*probes, *others])
    assert fitted is not None and fitted.source == "model"
    assert fitted.latency_ratio == pytest.approx(truth.latency_ratio(unseen), rel=1e-4)
    assert estimate(unseen, 0.5, "executorch", True, [], RULE, [*probes[:3], *others]) is None  # three: no held-out error
    # A measured trial of a probed structure joins its probe's timings.
    study = _study()
    _measured(study, known, (0.52, 0.9 * probes[1].latency_ratio, probes[1].size_ratio), model_val=0.52)
    both = estimate(known, 0.5, "executorch", True, records(study.trials), RULE, probes)
    assert both is not None and both.latency_ratio_low == pytest.approx(0.9 * probes[1].latency_ratio)
    assert both.latency_ratio == pytest.approx(0.95 * probes[1].latency_ratio)  # the median of the two timings


def test_the_summary_counts_fidelity_memo_hits_and_the_cost_model_s_error() -> None:
    study = _study()
    structure = _structure("a", 400, 1_000)
    _measured(study, structure, (0.5, 0.30, 0.2), 0.5, estimate_doc={"source": "model", "latency_ratio": 0.31})  # 3% off
    _measured(study, structure, (0.5, 0.30, 0.2), 0.5, estimate_doc={"source": "model", "latency_ratio": 0.40})  # 25% off
    _measured(study, structure, (0.4, 0.30, 0.2), 0.4, fidelity=Fidelity.ESTIMATED,
              estimate_doc={"source": "memo", "latency_ratio": 0.30})
    summary = ScreeningSummary.of(records(study.trials))
    assert (summary.measured, summary.screened, summary.with_structure, summary.memo_hits) == (2, 1, 3, 1)
    assert (summary.model_checked, summary.model_within) == (2, 1)
    assert "memo hits 1/3" in summary.describe() and "50% of 2 cost-model estimates" in summary.describe()


def test_a_screened_trial_reaches_neither_the_front_nor_the_export_nor_the_report(tmp_path: Path, capsys) -> None:
    from udacisense.search.cli import main
    from udacisense.search.results.export import export_trial

    path = _synthetic_study(tmp_path)
    config = load_study(path)
    study = open_study(config, create=False)
    # Estimates that would dominate every measured trial, were they measurements.
    screened = _measured(study, _structure("s", 100, 1_000), (0.99, 0.05, 0.05), 0.99, fidelity=Fidelity.ESTIMATED,
                         estimate_doc={"source": "model", "latency_ratio": 0.05})
    trials = study.get_trials()
    assert TrialRecord.of(trials[screened]).has_values and not TrialRecord.of(trials[screened]).is_measured
    assert screened not in {t.number for t in pareto_trials(trials)}
    front, everything = front_tables(study.get_trials(), config.targets, 0.8)
    assert screened not in set(front["trial"]) | set(everything["trial"]) and set(front["fidelity"]) == {"measured"}
    assert hypervolume_of_first(trials, len(trials)) == hypervolume_of_first(trials[:screened], len(trials))
    with pytest.raises(UserError, match="screened"):
        # Refused before anything is copied or timed: no workspace or runner is needed to say no.
        export_trial(None, study, screened, tmp_path / "export", None)  # type: ignore[arg-type]
    out = tmp_path / "report"
    assert main(["report", "--study", str(path), "--out", str(out)]) == 0
    markdown = (out / "report.md").read_text()
    assert f"| {screened} |" not in markdown and "(3 measured, 1 screened)" in markdown
    assert "| screened | completed | 1 |" in markdown  # the screening section's table of fidelities
    assert main(["report", "--study", str(path), "--out", str(out), "--trial", str(screened)]) == 2
    assert "screened on estimates, not measured" in capsys.readouterr().err


def test_promotions_are_the_screened_trials_the_front_no_longer_rules_out() -> None:
    study = _study()
    known = _structure("a", 400, 1_000)
    _measured(study, known, (0.60, 0.30, 0.20), 0.60)
    screened = _measured(study, known, (0.50, 0.30, 0.20), 0.50, fidelity=Fidelity.ESTIMATED)
    assert promotions(records(study.trials), RULE) == []  # still dominated by the measured trial
    generous = ScreeningRule(latency_margin=0.1, accuracy_margin=0.2)  # 0.5 + 0.2 beats 0.6: no longer ruled out
    assert [r.number for r in promotions(records(study.trials), generous)] == [screened]
    assert enqueue_promotions(study, generous) == [screened]
    queued = TrialRecord.of(study.trials[-1])
    assert queued.state is optuna.trial.TrialState.WAITING and queued.promoted_from == screened and queued.seed == 5
    assert enqueue_promotions(study, generous) == []  # queued once


def test_the_portfolio_is_checked_and_queued_once_students_last(tmp_path: Path) -> None:
    space = load_study("studies/screening-benchmark.toml").space
    entries = load_study("studies/screening-benchmark.toml").search.portfolio
    check_portfolio(space, entries)
    with pytest.raises(UserError, match="samples no parameter 'student_width'"):
        check_portfolio(space, ({"use_distill": False, "student_width": 0.5},))
    with pytest.raises(UserError, match="portfolio"):
        check_portfolio(space, ({"quant_type": "float"},))
    study = _study()
    assert enqueue_portfolio(study, entries, ready=needs_no_student) == [0]
    assert enqueue_portfolio(study, entries, ready=lambda _: True) == [1, 2]
    assert enqueue_portfolio(study, entries, ready=lambda _: True) == []
    assert [TrialRecord.of(t).portfolio_entry for t in study.trials] == [0, 1, 2]

