"""Quantization backends and runtimes, and the one rule of which backend ships in which runtime.

FX-quantized models (x86, fbgemm, qnnpack) hold engine kernels that only PyTorch (TorchScript) can
run; PT2E models (xnnpack) only become int8 inside ExecuTorch's XNNPACK delegate. Float models go
either way.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, get_args

import torch

from udacisense.common.errors import UserError

Runtime = Literal["eager", "torchscript", "executorch"]
LoweredRuntime = Literal["torchscript", "executorch"]
Backend = Literal["x86", "fbgemm", "qnnpack", "xnnpack"]
FxBackend = Literal["x86", "fbgemm", "qnnpack"]
FX_BACKENDS: tuple[str, ...] = get_args(FxBackend)
# The file name ending of each runtime's artifact (a phone app loads a .pte by its name).
ARTIFACT_SUFFIX: dict[str, str] = {"torchscript": ".pt", "executorch": ".pte"}


def runtime_for(backend: Backend | None, float_runtime: LoweredRuntime = "executorch") -> LoweredRuntime:
    """The runtime a model quantized for ``backend`` ships in (``float_runtime`` when not quantized)."""
    if backend is None:
        return float_runtime
    return "executorch" if backend == "xnnpack" else "torchscript"


@contextmanager
def quantized_engine(backend: str | None) -> Iterator[None]:
    """Select ``backend``'s quantized engine for the duration (weights are packed and run per engine).

    FX-quantized modules must be converted, loaded and run under the engine they target;
    ``None`` and ``xnnpack`` (whose int8 kernels live in ExecuTorch) leave the engine alone.
    """
    if backend not in FX_BACKENDS:
        yield
        return
    if backend not in torch.backends.quantized.supported_engines:
        raise UserError(
            f"This PyTorch build has no `{backend}` quantized engine "
            f"(it has {', '.join(torch.backends.quantized.supported_engines)}).",
            "choose a backend this machine supports: x86 or fbgemm on Intel/AMD, qnnpack on ARM.",
        )
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = backend
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


@contextmanager
def quiet_legacy_apis() -> Iterator[None]:
    """Silence the deprecation notices of torch.ao.quantization (FX) and TorchScript.

    Both APIs are deprecated in favour of PT2E/ExecuTorch, which this project knows and documents;
    the FX observers also warn once per instance about `reduce_range` (thousands of lines per model).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.ao.quantization.*")
        warnings.filterwarnings("ignore", message=".*reduce_range will be deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        warnings.filterwarnings("ignore", message=".*please migrate to use torchao.*")
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*`torch.jit.*` is deprecated.*")
        warnings.filterwarnings("ignore", message=".*TorchScript type system.*")
        yield


def deployment_label(runtime: str, backend: str | None, *, short: bool = False) -> str:
    """Where an artifact of ``runtime`` quantized for ``backend`` actually runs well, in a few words.

    x86/fbgemm int8 kernels exist only on x86 CPUs: such a TorchScript file is a server artifact,
    whatever the project's phone target. TorchScript itself is deprecated upstream (legacy path).
    """
    if runtime == "executorch":
        return ".pte phone" if short else "phone: ExecuTorch .pte (XNNPACK)"
    if backend in ("x86", "fbgemm"):
        return "TS x86 server" if short else f"x86 server: TorchScript, {backend} int8 (legacy, not a phone artifact)"
    if backend == "qnnpack":
        return "TS ARM legacy" if short else "ARM: TorchScript, qnnpack int8 (legacy PyTorch Mobile)"
    return "TS legacy" if short else "TorchScript float (legacy)"
