"""Runtime facts: which backends exist, which runtime ships each, lowering a module to an artifact, running it.

This is the lowest layer that touches models: evaluators, compression stages and the search all
lower and run artifacts through it, and it imports nothing of theirs.
"""

from udacisense.runtime.backends import (
    ARTIFACT_SUFFIX,
    FX_BACKENDS,
    Backend,
    FxBackend,
    LoweredRuntime,
    Runtime,
    deployment_label,
    quantized_engine,
    quiet_legacy_apis,
    runtime_for,
)
from udacisense.runtime.lowering import (
    Delegation,
    LoweredProgram,
    artifact_bytes,
    executorch_bytes,
    executorch_program,
    lower_program,
    torchscript_bytes,
    warm_executorch_lowering,
)
from udacisense.runtime.runners import LoweredModule, Runner, load_runner
from udacisense.runtime.threads import executorch_threads, request_executorch_threads

__all__ = [
    "ARTIFACT_SUFFIX", "FX_BACKENDS", "Backend", "FxBackend", "LoweredRuntime", "Runtime", "quantized_engine", "quiet_legacy_apis",
    "runtime_for", "Delegation", "LoweredProgram", "artifact_bytes", "executorch_bytes", "executorch_program",
    "lower_program",
    "torchscript_bytes", "warm_executorch_lowering", "LoweredModule", "Runner", "load_runner", "executorch_threads",
    "request_executorch_threads",
    "deployment_label",
]
