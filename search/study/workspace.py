"""Everything a study's commands share: its data, its trained baseline and the baseline's measurements."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from udacisense.common.errors import UserError
from udacisense.common.files import write_bytes
from udacisense.datasources.loaders import DataBundle, load_data
from udacisense.evaluators.profile import profile_float_model
from udacisense.models.baseline import Baseline, ensure_baseline
from udacisense.models.students import StudentShelf
from udacisense.runtime import ARTIFACT_SUFFIX, LoweredRuntime, artifact_bytes, request_executorch_threads
from udacisense.search.study.baseline_profile import FILE_NAME, BaselineProfile
from udacisense.search.study.config import StudyConfig


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
        return first_test_image(self.data)

    def baseline_artifact(self, runtime: LoweredRuntime) -> bytes:
        """The float baseline lowered to ``runtime``: the yardstick every worker process times against.

        A .pte takes 20-40 s to lower here, so it is lowered once per baseline and kept beside its
        checkpoint (named by the baseline key: a retrained baseline never meets a stale artifact).
        """
        return baseline_artifact(self.baseline, runtime, self.example_input)


def first_test_image(data: DataBundle) -> torch.Tensor:
    """One normalised test image: the input shape every artifact is lowered and timed with."""
    return data.loader("test").normalise(data.test.images[:1]).contiguous()


def baseline_artifact(baseline: Baseline, runtime: LoweredRuntime, example_input: torch.Tensor) -> bytes:
    path = baseline.directory / f"float-{baseline.key}{ARTIFACT_SUFFIX[runtime]}"
    if path.is_file():
        return path.read_bytes()
    artifact = artifact_bytes(copy.deepcopy(baseline.model), runtime, example_input=example_input)
    write_bytes(path, artifact)
    return artifact


def _stored_profile(path: Path, key: str) -> BaselineProfile | None:
    """The stored measurements of the baseline with settings ``key``; None when they must be taken again."""
    try:
        profile = BaselineProfile.load(path)
    except UserError:
        return None
    # Measure again where earlier files fall short: they timed ExecuTorch on every core (no thread pools
    # recorded), or hold no per-image results to pair a candidate with the baseline.
    return profile if profile.baseline_key == key and profile.records_threads and profile.records_correctness else None


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
            "source": baseline.source,  # "loaded": the user's own trained model, never retrained
            "train": {"epochs": study.baseline.epochs, "samples": len(data.train), "val_samples": len(data.val),
                      "test_samples": len(data.test)},
            **profile_float_model(baseline.model, data, runtimes=evaluation.runtimes,
                                  artifact_for=lambda runtime: baseline_artifact(baseline, runtime, first_test_image(data)),
                                  latency_runs=evaluation.latency_runs, latency_warmup=evaluation.latency_warmup,
                                  threads=evaluation.threads, progress=progress),
        })
        profile.save(profile_path)
    students = StudentShelf(baseline.model, baseline.key, data, study.baseline, study.run_dir / "students",
                            study.students, seed=study.seed, progress=progress)
    return Workspace(study, data, baseline, profile, students)
