"""Probes are one decision per study: a prober killed midway leaves nothing decided, and the next one probes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from udacisense.search.study.config import load_study
from udacisense.search.study.records import StudyRecord
from udacisense.search.study.storage import open_study
from udacisense.search.study.workspace import open_workspace
from udacisense.search.workers.probe_decisions import ensure_probes
from udacisense.search.workers.probes import ProbeReport

KILLED_WHILE_PROBING = """
import os, signal, sys
from udacisense.search.workers import probe_decisions, probes
from udacisense.search.study.config import load_study
from udacisense.search.study.storage import open_study
from udacisense.search.study.workspace import open_workspace
real, calls = probes._probe, []
def probe_then_die(*args):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args)
probes._probe = probe_then_die
config = load_study(sys.argv[1])
probe_decisions.ensure_probes(open_study(config), open_workspace(config, progress=False), progress=False)
"""


@pytest.mark.slow
def test_a_prober_killed_midway_leaves_nothing_decided_and_the_next_one_probes(seeded_smoke) -> None:
    path = seeded_smoke(edits={'stages = ["channels", "quantize"]': 'stages = ["prune", "quantize"]\nlinear_weight_bits = [8]',
                               'quant_backends = ["xnnpack", "x86"]': 'quant_backends = ["xnnpack"]',
                               "probes = false": "probes = true"})
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_PROBING, str(path)], capture_output=True, timeout=600)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    config = load_study(str(path))
    workspace, study = open_workspace(config, progress=False), open_study(config)
    assert StudyRecord.of(study).probes is None and not StudyRecord.of(study).student_decisions
    report = ensure_probes(study, workspace, progress=False)
    assert report is not None and ProbeReport.from_dict(StudyRecord.of(study).probes) == report
