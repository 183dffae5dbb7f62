"""Size of what is actually saved: serialized bytes, gzip bytes (where sparsity shows), parameter counts."""

from __future__ import annotations

import gzip
import io
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SizeReport:
    bytes: int
    gzip_bytes: int
    parameters: int | None
    nonzero_parameters: int | None
    format: str

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "unit": "bytes"}


def state_dict_bytes(module: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getvalue()


def parameter_counts(module: nn.Module) -> tuple[int, int]:
    """(all, nonzero) trainable-parameter counts of an eager float module."""
    total = nonzero = 0
    for parameter in module.parameters():
        total += parameter.numel()
        nonzero += int(torch.count_nonzero(parameter.detach()))
    return total, nonzero


def size_report(artifact: bytes, fmt: str, module: nn.Module | None = None) -> SizeReport:
    """Measure ``artifact`` (the bytes written to disk); counts come from ``module`` if it is a float model.

    Parameter counts of quantized or lowered models are meaningless (packed weights are not
    parameters), so pass ``module=None`` for those and rely on the byte sizes.
    """
    total, nonzero = parameter_counts(module) if module is not None else (None, None)
    return SizeReport(len(artifact), len(gzip.compress(artifact, compresslevel=6)), total, nonzero, fmt)
