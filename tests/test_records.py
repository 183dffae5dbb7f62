"""The trial record and the baseline profile: what is stored reads back typed, old studies included."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from udacisense.common.errors import UserError
from udacisense.common.files import write_json
from udacisense.evaluators.accuracy import AccuracyReport
from udacisense.evaluators.latency import LatencyReport
from udacisense.evaluators.parity import ParityReport
from udacisense.evaluators.profile import profile_float_model
from udacisense.evaluators.size import parameter_counts, state_dict_bytes
from udacisense.search.study.baseline_profile import BaselineProfile
from udacisense.search.study.records import DIRECTIONS, Attr, StopReason, record_stop, store
from udacisense.search.study.trial_record import TrialRecord


def _latency(median_ms: float, runtime: str) -> dict[str, object]:
    return LatencyReport(median_ms, 0.9 * median_ms, 1.2 * median_ms, median_ms, 20, 1, 1, runtime).as_dict()


def test_what_a_trial_stores_reads_back_typed_from_real_storage(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name="s", directions=list(DIRECTIONS))
    trial = study.ask()
    test = AccuracyReport(0.75, 0.98, (0.8, 0.7), 40).as_dict()
    store(trial, {
        Attr.PIPELINE: "channels(0.5) → ptq(xnnpack)", Attr.RUNTIME: "executorch", Attr.BACKEND: "xnnpack",
        Attr.STAGES: [{"kind": "channels", "description": "channels(0.5)", "seconds": 1.0, "metrics": {}},
                      {"kind": "ptq", "description": "ptq(xnnpack)", "seconds": 2.0, "metrics": {}}],
        Attr.TEST: test, Attr.LATENCY: _latency(1.5, "executorch"), Attr.REFERENCE_LATENCY: _latency(3.0, "executorch"),
        Attr.LATENCY_MS: 1.5, Attr.REFERENCE_LATENCY_MS: 3.0, Attr.REFERENCE_RUNTIME: "executorch",
        Attr.LATENCY_RATIO_P10: 0.45, Attr.LATENCY_RATIO_P90: 0.55, Attr.LATENCY_RATIO_SAME_RUNTIME: 0.5,
        Attr.PARITY: ParityReport(0.99, 0.3, 40).as_dict(), Attr.PARITY_OK: True,
        Attr.ARTIFACT_BYTES: 300_000, Attr.ARTIFACT_GZIP_BYTES: 250_000, Attr.ARTIFACT_PATH: str(tmp_path / "model.pte"),
        Attr.ARTIFACT_SHA256: "ab" * 32, Attr.CONSTRAINTS: {"accuracy": -0.02, "size": -0.4}, Attr.MEETS_TARGETS: True,
        Attr.PHASE_SECONDS: {"lowering": 2.5, "other": 0.5}, Attr.SECONDS: 12.0, Attr.WORKER: "host:4242",
        Attr.SAMPLER_SEED: 7, Attr.RETRY_OF: 3, Attr.CURVE: [[0, None, 0.7], [1, 0, 0.8]],
    })
    study.tell(trial, [0.8, 0.5, 0.3])

    stored = optuna.load_study(study_name="s", storage=storage).trials[0]
    # Plain JSON under the historical names, for studies already stored and for the dashboard.
    assert stored.user_attrs["pipeline"] == "channels(0.5) → ptq(xnnpack)" and stored.user_attrs["artifact_bytes"] == 300_000
    record = TrialRecord.of(stored)
    assert record.has_values and record.state is TrialState.COMPLETE and record.number == 0
    assert record.values == (0.8, 0.5, 0.3)
    assert (record.val_accuracy, record.latency_ratio, record.size_ratio) == (0.8, 0.5, 0.3)
    assert record.value("size_ratio") == 0.3
    assert record.runtime == "executorch" and record.backend == "xnnpack"
    assert record.deployment(short=True) == ".pte phone" and "XNNPACK" in record.deployment()
    assert record.stage_kinds == {"channels", "ptq"} and record.stages[1]["description"] == "ptq(xnnpack)"
    assert record.test_top1 == 0.75 and record.test_per_class == [0.8, 0.7]
    assert record.latency_ms == 1.5 and record.reference_latency_ms == 3.0 and record.reference_runtime == "executorch"
    assert record.latency_p10_ms == pytest.approx(1.35) and record.latency_p90_ms == pytest.approx(1.8)
    assert (record.latency_ratio_p10, record.latency_ratio_p90, record.latency_ratio_same_runtime) == (0.45, 0.55, 0.5)
    assert record.artifact_path == tmp_path / "model.pte" and record.artifact_sha256 == "ab" * 32
    assert (record.artifact_bytes, record.artifact_gzip_bytes) == (300_000, 250_000)
    assert record.parity == {"top1_agreement": 0.99, "max_abs_diff": 0.3, "samples": 40} and record.parity_ok
    assert record.meets_targets is True and record.constraints == {"accuracy": -0.02, "size": -0.4}
    assert record.phase_seconds == {"lowering": 2.5, "other": 0.5} and record.seconds == 12.0
    assert (record.worker, record.sampler_seed, record.retry_of) == ("host:4242", 7, 3)
    assert record.curve == [[0, None, 0.7], [1, 0, 0.8]]
    assert record.stop_reason is None and record.stop_message == "" and record.error is None


def test_an_old_style_trial_missing_newer_attributes_reads_with_defaults() -> None:
    started = dt.datetime(2025, 1, 1, 12, 0, 0)
    # A study from before parity, the reference yardstick, phases and seeds were recorded.
    old = optuna.trial.create_trial(state=TrialState.COMPLETE, values=[0.7, 0.9, 0.6], params={}, distributions={},
                                    user_attrs={"pipeline": "prune(0.3)", "runtime": "torchscript",
                                                "curve": [[0, 0.7]]},
                                    )
    old.datetime_start, old.datetime_complete = started, started + dt.timedelta(seconds=42)
    record = TrialRecord.of(old)
    assert record.val_accuracy == 0.7 and record.pipeline == "prune(0.3)" and record.backend is None
    assert record.parity_ok  # checked only at export back then: not held against it
    assert record.parity == {} and record.meets_targets is None and record.constraints == {}
    assert record.test_top1 is None and record.test_per_class == []
    assert record.latency_ms is None and record.reference_latency_ms is None and record.reference_runtime is None
    assert record.latency_ratio_p10 is None and record.latency_ratio_same_runtime is None
    assert record.artifact_path is None and record.artifact_bytes is None and record.artifact_sha256 is None
    assert record.stages == [] and record.stage_kinds == frozenset() and record.phase_seconds == {}
    assert record.seconds == 42.0  # no stored seconds: from the timestamps
    assert record.worker is None and record.sampler_seed is None and record.retry_of is None
    assert record.curve == [[0, 0.7]]
    bare = TrialRecord.of(optuna.trial.create_trial(state=TrialState.COMPLETE, values=[0.5, 1.0, 1.0],
                                                    params={}, distributions={}))
    assert bare.pipeline == "" and bare.runtime == "" and bare.seconds == 0.0


def test_a_stopped_trial_has_its_reason_and_no_values() -> None:
    study = optuna.create_study(directions=list(DIRECTIONS))
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned):
        raise record_stop(trial, StopReason.DURING_TRAINING, "val top-1 0.1 is hopeless")
    study.tell(trial, state=TrialState.PRUNED)
    record = TrialRecord.of(study.trials[0])
    assert record.stop_reason is StopReason.DURING_TRAINING and record.stop_message == "val top-1 0.1 is hopeless"
    assert study.trials[0].user_attrs["stage"] == "during-training"  # the historical key
    assert not record.has_values
    with pytest.raises(ValueError, match="pruned"):
        _ = record.val_accuracy
    unknown = optuna.trial.create_trial(state=TrialState.PRUNED, params={}, distributions={},
                                        user_attrs={"stage": "some-older-reason"})
    assert TrialRecord.of(unknown).stop_reason is None


def test_store_writes_only_declared_attributes() -> None:
    trial = optuna.create_study(directions=list(DIRECTIONS)).ask()
    with pytest.raises(ValueError, match="bogus"):
        store(trial, {"bogus": 1})  # type: ignore[dict-item]  # the undeclared key is the test
    assert trial.user_attrs == {}


@pytest.fixture(scope="module")
def profile_document(tiny_bundle) -> dict:
    import torchvision

    model = torchvision.models.mobilenet_v3_small(num_classes=len(tiny_bundle.classes), width_mult=0.25).eval()
    measured = profile_float_model(model, tiny_bundle, runtimes=("eager",), artifact_for=lambda runtime: b"",
                                   latency_runs=3, latency_warmup=1, threads=1, progress=False)
    document = {"study": "tiny", "baseline_key": "k1", "train_seconds": 3.5,
                "train": {"epochs": 2, "samples": len(tiny_bundle.train), "val_samples": len(tiny_bundle.val),
                          "test_samples": len(tiny_bundle.test)}, **measured}
    return {"document": document, "state_dict_bytes": len(state_dict_bytes(model)), "parameters": parameter_counts(model)}


def test_baseline_profile_round_trip_keeps_the_file_format(tmp_path: Path, profile_document: dict, tiny_bundle) -> None:
    document = profile_document["document"]
    path = BaselineProfile(document).save(tmp_path / "metrics.json")
    write_json(tmp_path / "plain.json", document)  # what the workspace wrote before the profile existed
    assert path.read_text() == (tmp_path / "plain.json").read_text()
    profile = BaselineProfile.load(path)
    assert profile == BaselineProfile(json.loads((tmp_path / "plain.json").read_text()))
    assert profile.val_top1 == document["accuracy"]["val"]["top1"] and 0 <= profile.test_top1 <= 1
    assert len(profile.test_per_class) == len(tiny_bundle.classes) == len(profile.classes)
    assert profile.classes == list(tiny_bundle.classes) and profile.input_shape == [1, 3, 32, 32]
    assert profile.sizes["state_dict"].bytes == profile_document["state_dict_bytes"]
    assert (profile.parameters, profile.nonzero_parameters) == profile_document["parameters"]
    assert profile.flops > profile.macs > 0 and profile.peak_memory_bytes > 0
    eager = profile.latency("eager")
    assert eager is not None and eager.p10_ms <= eager.median_ms <= eager.p90_ms and eager.runs == 3
    assert eager.torch_threads == 1 and eager.executorch_threads is None  # no ExecuTorch program ran
    assert profile.train_seconds == 3.5 and profile.training.epochs == 2 and profile.baseline_key == "k1"
    assert profile.records_threads
    assert profile.size("executorch") is None and profile.latency("executorch") is None
    with pytest.raises(UserError, match="not measured in the executorch runtime"):
        profile.bytes("executorch")


def test_baseline_profile_refuses_missing_or_damaged_files(tmp_path: Path, profile_document: dict) -> None:
    path = tmp_path / "metrics.json"
    with pytest.raises(UserError, match="missing or unreadable"):
        BaselineProfile.load(path)
    path.write_text('{"accuracy": ')
    with pytest.raises(UserError, match="missing or unreadable"):
        BaselineProfile.load(path)
    path.write_text("{}")
    with pytest.raises(UserError, match="damaged") as error:
        BaselineProfile.load(path)
    assert "udacisense baseline" in error.value.fix
    truncated = {k: v for k, v in profile_document["document"].items() if k != "latency"}
    path.write_text(json.dumps(truncated))
    with pytest.raises(UserError, match="damaged.*latency"):
        BaselineProfile.load(path)
