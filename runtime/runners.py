"""Running artifacts: a function from an image batch to logits, whatever the runtime."""

from __future__ import annotations

import io
from collections.abc import Callable

import torch
from torch import nn

from udacisense.common.errors import UserError
from udacisense.common.logs import native_stderr_without
from udacisense.runtime.backends import Backend, LoweredRuntime, Runtime, quantized_engine, quiet_legacy_apis
from udacisense.runtime.threads import EXECUTORCH_MACHINE_LOG, before_program_load

Runner = Callable[[torch.Tensor], torch.Tensor]

def load_runner(artifact: bytes | nn.Module, runtime: Runtime, backend: Backend | None = None) -> Runner:
    """A function from an image batch to logits, running ``artifact`` on ``runtime``.

    ``runtime="eager"`` takes a module; "torchscript" and "executorch" take the artifact's bytes.
    FX-quantized TorchScript is loaded and run under ``backend``'s quantized engine. ExecuTorch
    programs have a fixed batch (1 here): larger batches run sample by sample.
    """
    if runtime == "eager":
        if not isinstance(artifact, nn.Module):
            raise TypeError("an eager runner needs an nn.Module")
        return _eager_runner(artifact, backend)
    if not isinstance(artifact, (bytes, bytearray)):
        raise TypeError(f"a {runtime} runner needs the artifact's bytes, got {type(artifact).__name__}")
    if runtime == "torchscript":
        return _torchscript_runner(bytes(artifact), backend)
    if runtime == "executorch":
        return _executorch_runner(bytes(artifact))
    raise UserError(f"Unknown runtime {runtime!r}.", "use 'eager', 'torchscript' or 'executorch'.")


def _eager_runner(module: nn.Module, backend: Backend | None) -> Runner:
    module.eval()

    def run(images: torch.Tensor) -> torch.Tensor:
        with quantized_engine(backend), torch.no_grad():
            return module(images)

    return run


def _torchscript_runner(artifact: bytes, backend: Backend | None) -> Runner:
    with quantized_engine(backend), quiet_legacy_apis():
        script = torch.jit.load(io.BytesIO(artifact))

    def run(images: torch.Tensor) -> torch.Tensor:
        with quantized_engine(backend), torch.no_grad():
            return script(images)

    return run


def _executorch_runner(artifact: bytes) -> Runner:
    from executorch.runtime import Runtime as ExecuTorchRuntime

    with native_stderr_without(EXECUTORCH_MACHINE_LOG):
        before_program_load()
        return _ExecuTorchRunner(ExecuTorchRuntime.get().load_program(artifact))


class _ExecuTorchRunner:
    """Runs a program's ``forward`` on any batch size, in chunks of the batch it was exported with."""

    def __init__(self, program: object) -> None:
        self.program = program  # owns the method's memory: keep it alive as long as the method
        self.method = program.load_method("forward")  # type: ignore[attr-defined]  # an untyped pybind object
        self.batch = int(self.method.metadata.input_tensor_meta(0).sizes()[0])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.contiguous()
        if images.shape[0] == self.batch:
            return self.method.execute([images])[0]
        outputs = []
        for chunk in images.split(self.batch):
            short = self.batch - chunk.shape[0]
            if short:  # only for programs exported with batch > 1: pad, then drop the padding's outputs
                chunk = torch.cat([chunk, chunk.new_zeros((short, *chunk.shape[1:]))])
            outputs.append(self.method.execute([chunk.contiguous()])[0][: self.batch - short])
        return torch.cat(outputs)


class LoweredModule(nn.Module):
    """Runs a lowered artifact like a module, so evaluators treat every form of a model alike."""

    def __init__(self, artifact: bytes, runtime: LoweredRuntime, backend: Backend | None = None) -> None:
        super().__init__()
        self.artifact = artifact
        self.runtime: LoweredRuntime = runtime
        self.backend = backend
        self._run = load_runner(artifact, runtime, backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)

    def __deepcopy__(self, memo: dict[int, object]) -> LoweredModule:
        # Loaded programs cannot be deep-copied; a copy reloads the same bytes.
        return LoweredModule(self.artifact, self.runtime, self.backend)

    def extra_repr(self) -> str:
        return f"runtime={self.runtime}, backend={self.backend}, bytes={len(self.artifact)}"
