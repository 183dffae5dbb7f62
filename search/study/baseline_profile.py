"""The float baseline's measurements as stored in ``runs/<study>/baseline/metrics.json``, read typed.

The workspace writes the document once per baseline, and search workers store the same document
with the study (``StudyAttr.BASELINE_PROFILE``), so that read-only commands read it from the
storage on any machine. Every command reads it back through ``BaselineProfile``. The file keeps
its format: the profile reads the stored document and writes it back unchanged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch

from udacisense.common.errors import UserError
from udacisense.common.files import write_json
from udacisense.evaluators.intervals import unpack_correct
from udacisense.search.study.records import StudyAttr, StudyRecord, optional_int, store_study

FILE_NAME = "metrics.json"


@dataclass(frozen=True)
class BaselineSize:
    """The baseline saved in one format (the state dict, or an artifact of one runtime)."""

    bytes: int
    gzip_bytes: int
    parameters: int | None  # counted on the eager module: None for an artifact
    nonzero_parameters: int | None


@dataclass(frozen=True)
class BaselineLatency:
    """The baseline timed at batch 1 in one runtime."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    runs: int | None
    torch_threads: int | None
    executorch_threads: int | None  # None when no ExecuTorch program ran


@dataclass(frozen=True)
class BaselineTraining:
    epochs: int | None
    samples: int | None
    val_samples: int | None
    test_samples: int | None


@dataclass(frozen=True)
class BaselineProfile:
    """Accuracy, size and latency per format and runtime, compute and training facts of the float baseline."""

    document: Mapping[str, Any]  # as stored; written back as it is
    source: str = field(default="", compare=False)  # where it was read, for the report to cite

    def __post_init__(self) -> None:
        # Read once what every reader needs, so a damaged document fails on load, not halfway through a report.
        _ = (self.val_top1, self.test_top1, self.val_per_class, self.test_per_class, self.flops, self.macs,
             self.peak_memory_bytes, self.parameters, self.nonzero_parameters, self.latencies)

    @classmethod
    def load(cls, path: Path) -> BaselineProfile:
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise UserError(f"The baseline measurements {path} are missing or unreadable.",
                            "run `udacisense baseline --study ...` (or `search`) for the study first.") from None
        try:
            return cls(document, source=str(path))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise UserError(f"The baseline measurements {path} are damaged: {type(error).__name__} {error}.",
                            "delete the file and run `udacisense baseline --study ...` to measure the baseline again.") from None

    @classmethod
    def of_study(cls, study: optuna.Study, local: Path) -> BaselineProfile:
        """The measurements stored with ``study``; for a study stored before they were, the ``local`` metrics.json."""
        document = StudyRecord.of(study).baseline_profile
        if document is not None:
            try:
                return cls(document, source=f"the study storage (study attribute `{StudyAttr.BASELINE_PROFILE.value}`)")
            except (KeyError, TypeError, ValueError, AttributeError) as error:
                raise UserError(f"The baseline measurements stored with study {study.study_name!r} are damaged: "
                                f"{type(error).__name__} {error}.",
                                "run `udacisense search --study ...` (or `worker`) once: it stores them again.") from None
        if local.is_file():
            return cls.load(local)
        raise UserError(f"The study {study.study_name!r} stores no baseline measurements (it was searched by an earlier "
                        f"version), and there is no {local} here.",
                        "run `udacisense search --study ...` or `udacisense worker --study ...` once with this version: "
                        "it stores them with the study.")

    def record(self, study: optuna.Study) -> None:
        """Store the document with ``study`` (in the JSON form metrics.json has) when it is missing or differs."""
        text = json.dumps(dict(self.document), default=str, sort_keys=True)
        # Compared as text: a NaN (a class missing from a split) is never equal to itself.
        if json.dumps(StudyRecord.of(study).baseline_profile, sort_keys=True) != text:
            store_study(study, {StudyAttr.BASELINE_PROFILE: json.loads(text)})

    def save(self, path: Path) -> Path:
        return write_json(path, dict(self.document))

    @property
    def baseline_key(self) -> str | None:
        """The settings key of the baseline checkpoint these measurements belong to."""
        return self.document.get("baseline_key")

    @property
    def records_correctness(self) -> bool:
        """Whether it says which images the baseline gets right (earlier files held only the accuracies)."""
        return "correct" in self.document

    def correct(self, split: str) -> torch.Tensor:
        """Which images of ``split`` the baseline gets right, in the split's order."""
        if not self.records_correctness:
            raise UserError("The baseline measurements predate per-image results, so no paired comparison can be made.",
                            "run `udacisense baseline --study ...` (or `search`) once with this version: it measures "
                            "the baseline again and stores them.")
        return unpack_correct(self.document["correct"][split])

    @property
    def test_labels(self) -> torch.Tensor:
        return torch.tensor([int(label) for label in self.document.get("test_labels", [])], dtype=torch.long)

    @property
    def records_threads(self) -> bool:
        """Whether the thread pools were recorded (earlier files timed ExecuTorch on every core)."""
        return "threads" in self.document

    def _accuracy(self, split: str) -> Mapping[str, Any]:
        return self.document["accuracy"][split]

    @property
    def val_top1(self) -> float:
        return float(self._accuracy("val")["top1"])

    @property
    def test_top1(self) -> float:
        return float(self._accuracy("test")["top1"])

    @property
    def val_top5(self) -> float:
        return float(self._accuracy("val")["top5"])

    @property
    def test_top5(self) -> float:
        return float(self._accuracy("test")["top5"])

    @property
    def val_per_class(self) -> list[float]:
        return [float(v) for v in self._accuracy("val")["per_class"]]

    @property
    def test_per_class(self) -> list[float]:
        return [float(v) for v in self._accuracy("test")["per_class"]]

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.document.get("classes", [])]

    @property
    def input_shape(self) -> list[int]:
        return [int(d) for d in self.document.get("input_shape", [])]

    @property
    def sizes(self) -> dict[str, BaselineSize]:
        """Per format as measured: ``state_dict`` first, then each lowered runtime's artifact."""
        return {name: BaselineSize(int(r["bytes"]), int(r["gzip_bytes"]), optional_int(r.get("parameters")),
                                   optional_int(r.get("nonzero_parameters")))
                for name, r in self.document["size"].items()}

    @property
    def parameters(self) -> int:
        """Trainable parameters of the float model (counted on its state dict)."""
        return int(self.document["size"]["state_dict"]["parameters"])

    @property
    def nonzero_parameters(self) -> int:
        return int(self.document["size"]["state_dict"]["nonzero_parameters"])

    def size(self, runtime: str) -> BaselineSize | None:
        """The baseline's size in ``runtime`` (or ``state_dict``); None when it was not lowered there."""
        return self.sizes.get(runtime)

    def bytes(self, runtime: str) -> int:
        """The baseline artifact's bytes in ``runtime``: the denominator of every size ratio."""
        size = self.size(runtime)
        if size is None:
            raise UserError(f"The baseline was not measured in the {runtime} runtime (measured: {', '.join(self.sizes)}).",
                            "add the runtime to `evaluation.runtimes` and run `udacisense baseline` again.")
        return size.bytes

    @property
    def latencies(self) -> dict[str, BaselineLatency]:
        return {name: BaselineLatency(float(r["median_ms"]), float(r["p10_ms"]), float(r["p90_ms"]),
                                      float(r.get("mean_ms", math.nan)), optional_int(r.get("runs")),
                                      optional_int(r.get("torch_threads")), optional_int(r.get("executorch_threads")))
                for name, r in self.document["latency"].items()}

    def latency(self, runtime: str) -> BaselineLatency | None:
        return self.latencies.get(runtime)

    @property
    def flops(self) -> int:
        return int(self.document["flops"]["flops"])

    @property
    def macs(self) -> int:
        return int(self.document["flops"]["macs"])

    @property
    def peak_memory_bytes(self) -> int:
        return int(self.document["peak_memory"]["bytes"])

    @property
    def train_seconds(self) -> float:
        return float(self.document.get("train_seconds", 0.0))

    @property
    def loaded(self) -> bool:
        """The baseline is the user's own trained model (``[baseline] checkpoint``), loaded, not trained here."""
        return self.document.get("source") == "loaded"

    @property
    def training(self) -> BaselineTraining:
        train = self.document.get("train", {})
        return BaselineTraining(*(optional_int(train.get(key)) for key in ("epochs", "samples", "val_samples", "test_samples")))

    @property
    def environment(self) -> dict[str, Any]:
        """Library versions and the machine the baseline was measured on."""
        return dict(self.document.get("environment", {}))
