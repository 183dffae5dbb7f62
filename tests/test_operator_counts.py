"""Operator counts: every lowered ``.pte`` records the operators it runs by type, stored trials without them still
read, and the report fits latency against them."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from torch import nn

from udacisense.runtime import Delegation, LoweredProgram, executorch_program
from udacisense.search.report.figures import plot_operators
from udacisense.search.report.search_sections import _operator_lines
from udacisense.search.report.trial_facts import operator_latency_fit
from udacisense.search.results.export import delegation_line
from udacisense.search.study.records import Attr
from udacisense.search.study.trial_record import TrialRecord

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def lowered() -> LoweredProgram:
    """One small float network lowered to a .pte (the only lowering here: each costs seconds)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8), nn.ReLU(),
                        nn.Conv2d(8, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    return executorch_program(net, torch.rand(1, 3, 16, 16))


def _trial(delegation: dict | None, ratio: float = 0.5, backend: str | None = None,
           reference_ms: float = 0.2) -> TrialRecord:
    attrs = {Attr.DELEGATION.value: delegation, Attr.BACKEND.value: backend,
             Attr.REFERENCE_LATENCY.value: {"median_ms": reference_ms}}
    return TrialRecord.of(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, values=[0.8, ratio, 0.3],
                                                    user_attrs=attrs, distributions={}, params={}))


def _counted(operators: int) -> dict:
    return Delegation(delegated_subgraphs=1, delegated_nodes=operators, portable_nodes=0, portable_ops={},
                      delegated_ops={"aten_convolution_default": operators}).as_dict()


def test_a_pte_records_the_operators_it_runs_by_type(lowered: LoweredProgram) -> None:
    delegation = lowered.delegation
    assert delegation is not None and delegation.fully_delegated, delegation
    # Three convolutions and two ReLUs, each counted by its type where it runs, and the types add up to the totals.
    assert delegation.delegated_ops.get("aten_convolution_default") == 3, delegation.delegated_ops
    assert delegation.delegated_ops.get("aten_relu_default") == 2, delegation.delegated_ops
    assert sum(delegation.delegated_ops.values()) == delegation.delegated_nodes
    # The batch norm's tuple output is unpacked by a `getitem`, which runs no kernel: not an operator.
    assert "getitem" not in delegation.delegated_ops
    assert delegation.operator_count == delegation.delegated_nodes + delegation.portable_nodes > 3
    # Stored as a trial stores it (JSON), read back through the record.
    stored = json.loads(json.dumps(delegation.as_dict()))
    assert stored["delegated_ops"] == delegation.delegated_ops
    assert _trial(stored).operator_count == delegation.operator_count


def test_trials_stored_before_operator_counts_still_read() -> None:
    old = {"delegated_subgraphs": 1, "delegated_nodes": 217, "portable_nodes": 0, "portable_ops": {},
           "fully_delegated": True}
    record = _trial(old)
    assert record.delegation == old and record.operator_count is None
    assert delegation_line(old) == "all 217 operators delegated to XNNPACK"  # the export's reader too
    assert _trial(None).operator_count is None  # TorchScript: no delegate


def test_the_report_fits_latency_against_operator_count(tmp_path: Path) -> None:
    # Ratios on a line of 0.002 per operator from 0.1, int8 and float alike; trials without counts are left out.
    trials = [_trial(_counted(n), 0.1 + 0.002 * n, backend, reference_ms=ms)
              for n, backend, ms in ((100, None, 0.2), (200, "xnnpack", 0.3), (400, None, 0.25), (300, "xnnpack", 0.25))]
    trials.append(_trial(None, 0.9))
    fit = operator_latency_fit(trials)
    assert fit is not None and fit.trials == 4
    assert fit.per_operator == pytest.approx(0.002) and fit.intercept == pytest.approx(0.1) and fit.r2 == pytest.approx(1.0)
    assert fit.reference_ms == pytest.approx(0.25)
    inputs = SimpleNamespace(complete=trials, study=SimpleNamespace(evaluation=SimpleNamespace(reference_runtime="executorch")))
    text = " ".join(_operator_lines(inputs))  # type: ignore[arg-type]
    # 0.002 of the baseline's 0.25 ms per operator = 0.0005 ms
    assert "costs about **0.0005 ms**" in text and "over the 4 measured `.pte` trials" in text and "R² 1.00" in text
    assert plot_operators(inputs, tmp_path / "ops.png").read_bytes()[:8] == PNG_MAGIC  # type: ignore[arg-type]
    # A noisy scatter is fitted too, with the R² that says so.
    noisy = trials[:4] + [_trial(_counted(250), 0.1)]
    noisy_fit = operator_latency_fit(noisy)
    assert noisy_fit is not None and noisy_fit.trials == 5 and 0 < noisy_fit.r2 < 0.9
    # Too few trials, or one count only: no fit, and the report says why.
    assert operator_latency_fit(trials[:2]) is None
    assert operator_latency_fit([_trial(_counted(100), r) for r in (0.2, 0.3, 0.4)]) is None
    text = " ".join(_operator_lines(SimpleNamespace(complete=trials[:2])))  # type: ignore[arg-type]
    assert "2 completed trial(s) recorded the operators" in text
