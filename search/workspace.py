"""Everything a study's commands share: its data, its trained baseline and the baseline's measurements."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from udacisense.common.errors import UserError
from udacisense.datasources.loaders import DataBundle, load_data
from udacisense.evaluators.profile import profile_float_model
from udacisense.models.baseline import Baseline, ensure_baseline
from udacisense.models.students import StudentShelf
from udacisense.runtime import request_executorch_threads
from udacisense.search.baseline_profile import FILE_NAME, BaselineProfile
from udacisense.search.study import StudyConfig


@dataclass(frozen=True)
class Workspace:
    study: StudyConfig
    data: DataBundle
    baseline: Baseline
    profile: BaselineProfile
    # Narrower students distilled from this baseline (`search`'s first worker distils the space's
    # widths while the others run trials that need none; a trial that needs a missing one trains it).
    students: StudentShelf

    @property
    def example_input(self) -> torch.Tensor:
        return self.data.loader("test").normalise(self.data.test.images[:1]).contiguous()


def _stored_profile(path: Path, key: str) -> BaselineProfile | None:
    """The stored measurements of the baseline with settings ``key``; None when they must be taken again."""
    try:
        profile = BaselineProfile.load(path)
    except UserError:
        return None
    # Metrics written before the thread pools were recorded timed ExecuTorch on every core: measure again.
    return profile if profile.baseline_key == key and profile.records_threads else None


def open_workspace(study: StudyConfig, *, progress: bool = True) -> Workspace:
    """Load data, train or reuse the baseline, and measure it (once per baseline) into metrics.json."""
    # Every command opens the workspace before it loads an ExecuTorch program: the pool is sized here.
    request_executorch_threads(study.evaluation.threads)
    cache_dir = Path(study.runs_dir) / "cache"
    data = load_data(study.data, study.seed, cache_dir)
    baseline = ensure_baseline(study.model, study.baseline, data, study.run_dir / "baseline", progress=progress)
    profile_path = baseline.directory / FILE_NAME
    profile = None if not baseline.reused else _stored_profile(profile_path, baseline.key)
    if profile is None:
        evaluation = study.evaluation
        profile = BaselineProfile({
            "study": study.name,
            "baseline_key": baseline.key,
            "train_seconds": baseline.train_seconds,
            "train": {"epochs": study.baseline.epochs, "samples": len(data.train), "val_samples": len(data.val),
                      "test_samples": len(data.test)},
            **profile_float_model(baseline.model, data, runtimes=evaluation.runtimes,
                                  latency_runs=evaluation.latency_runs, latency_warmup=evaluation.latency_warmup,
                                  threads=evaluation.threads, progress=progress),
        })
        profile.save(profile_path)
    students = StudentShelf(baseline.model, baseline.key, data, study.baseline, study.run_dir / "students",
                            study.students, seed=study.seed, progress=progress)
    return Workspace(study, data, baseline, profile, students)
