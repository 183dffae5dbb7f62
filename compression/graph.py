"""Graph stages: Conv-BN fusion, and lowering to a runtime artifact (TorchScript or ExecuTorch).

Lowering is always the last stage: a lowered model is the artifact's bytes plus a module that runs
them, and nothing accepts it as input. Which runtime a model can be lowered to follows from how it
was quantized: FX-quantized models (x86, fbgemm, qnnpack) hold engine kernels only TorchScript can
run; PT2E models (xnnpack) only become int8 inside ExecuTorch's XNNPACK delegate. Float models go
either way.

ExecuTorch programs are exported with a batch of one (that is what an app runs, and what latency
is measured at); their runner splits larger batches into single samples and concatenates the
outputs. TorchScript modules are scripted, so they take any batch.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable, Literal

import torch
from torch import nn
from torch.fx import GraphModule

from common.errors import IncompatiblePipelineError, UserError
from compression.quantization import (
    FX_BACKENDS,
    check_runs_on,
    quantized_engine,
    quiet_legacy_apis,
    runtime_for,
)
from compression.stage import (
    Backend,
    CompressedModel,
    ModelForm,
    Runtime,
    Signature,
    StageContext,
    register_stage,
    require_form,
)
from evaluators.accuracy import predict_logits
from evaluators.parity import ParityReport, compare_logits

Runner = Callable[[torch.Tensor], torch.Tensor]
LoweredRuntime = Literal["torchscript", "executorch"]


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class FuseConfig:
    """Fold every BatchNorm that directly follows a Conv2d into the convolution (float, eval statistics).

    Outputs are unchanged (to float rounding); inference skips the BatchNorm ops, and a later FX
    quantization sees Conv→ReLU directly and fuses it into one int8 kernel.
    """

    kind: ClassVar[str] = "fuse"

    def transition(self, signature: Signature) -> Signature:
        require_form(self, signature, ModelForm.FLOAT)
        return signature

    def describe(self) -> str:
        return "fuse(conv-bn)"


@dataclass(frozen=True)
class TorchScriptConfig:
    """Script (or trace) and freeze the model, and serialize it: the artifact for the x86/ARM engines."""

    kind: ClassVar[str] = "torchscript"

    def transition(self, signature: Signature) -> Signature:
        require_form(self, signature, ModelForm.FLOAT, ModelForm.QUANTIZED)
        if signature.backend == "xnnpack":
            raise IncompatiblePipelineError(
                "`torchscript` cannot lower an xnnpack-quantized (PT2E) model: its int8 ops exist only in "
                "ExecuTorch's XNNPACK delegate.",
                "lower it with `executorch`, or quantize with backend x86, fbgemm or qnnpack for TorchScript.",
            )
        return Signature(ModelForm.LOWERED, signature.backend)

    def describe(self) -> str:
        return "torchscript"


@dataclass(frozen=True)
class ExecuTorchConfig:
    """Export and lower to an ExecuTorch program delegated to XNNPACK (a ``.pte``, batch 1)."""

    kind: ClassVar[str] = "executorch"

    def transition(self, signature: Signature) -> Signature:
        require_form(self, signature, ModelForm.FLOAT, ModelForm.QUANTIZED)
        if signature.backend in FX_BACKENDS:
            raise IncompatiblePipelineError(
                f"`executorch` cannot lower a model quantized for `{signature.backend}`: FX-quantized kernels "
                "only run in PyTorch (TorchScript).",
                "lower it with `torchscript`, or quantize with backend xnnpack for ExecuTorch.",
            )
        return Signature(ModelForm.LOWERED, signature.backend)

    def describe(self) -> str:
        return "executorch(xnnpack)"


# --------------------------------------------------------------------------- fusion


def fuse_conv_bn(module: nn.Module) -> int:
    """Fold Conv2d→BatchNorm2d pairs that sit next to each other in a Sequential, in place; returns how many.

    The BatchNorm is removed from its Sequential (later entries are renumbered), so the module stays
    an ordinary eager model that can still be pruned, trained or quantized.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    module.eval()
    fused = 0
    for container in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        index = 0
        while index < len(container) - 1:
            conv, bn = container[index], container[index + 1]
            if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                container[index] = fuse_conv_bn_eval(conv, bn)
                del container[index + 1]
                fused += 1
            index += 1
    return fused


@register_stage(FuseConfig)
def fuse(model: CompressedModel, config: FuseConfig, context: StageContext) -> CompressedModel:
    check_runs_on(config, model)
    module = copy.deepcopy(model.module)
    fuse_conv_bn(module)
    return model.evolve(module=module)


# --------------------------------------------------------------------------- lowering


def torchscript_bytes(module: nn.Module, backend: Backend | None, example_input: torch.Tensor | None = None) -> bytes:
    """Scripted (traced if scripting fails and an example is given), frozen, serialized ``module``."""
    module.eval()
    # Quantized weights are packed for the current engine when scripted, frozen and saved.
    with quantized_engine(backend), quiet_legacy_apis(), torch.no_grad():
        try:
            compiled = torch.jit.script(module)
        except Exception as error:
            if example_input is None:
                raise UserError(f"TorchScript cannot script this model: {error}",
                                "pass an example input so it can be traced instead.") from None
            compiled = torch.jit.trace(module, example_input, check_trace=False)
        frozen = torch.jit.freeze(compiled.eval())
        buffer = io.BytesIO()
        torch.jit.save(frozen, buffer)
    return buffer.getvalue()


def executorch_bytes(module: nn.Module, example_input: torch.Tensor) -> bytes:
    """A ``.pte`` program for ``module`` at the example's shape (batch 1), delegated to XNNPACK."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackPartitioner,
    )
    from executorch.exir import to_edge_transform_and_lower

    module.eval()
    exported = torch.export.export(module, (example_input[:1].contiguous(),))
    program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    return bytes(program.buffer)


def _recorded_input_shape(module: nn.Module) -> tuple[int, ...] | None:
    """The input shape an exported (PT2E) graph was captured with, batch set to 1; None if unknown."""
    if not isinstance(module, GraphModule):
        return None
    for node in module.graph.nodes:
        if node.op == "placeholder" and hasattr(node.meta.get("val"), "shape"):
            rest = tuple(node.meta["val"].shape[1:])
            return (1, *rest) if all(isinstance(d, int) for d in rest) else None
    return None


def _example_for(module: nn.Module, example_input: torch.Tensor | None) -> torch.Tensor:
    if example_input is not None:
        return example_input[:1]
    shape = _recorded_input_shape(module)
    if shape is None:
        raise UserError(
            "Lowering this model to ExecuTorch needs an example input: the program is fixed to one input shape.",
            "pass example_input=torch.zeros(bundle.input_shape) (the data's 1×3×H×W shape).",
        )
    return torch.zeros(shape)


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

    def __deepcopy__(self, memo: dict[int, object]) -> "LoweredModule":
        # Loaded programs cannot be deep-copied; a copy reloads the same bytes.
        return LoweredModule(self.artifact, self.runtime, self.backend)

    def extra_repr(self) -> str:
        return f"runtime={self.runtime}, backend={self.backend}, bytes={len(self.artifact)}"


def _lowered(model: CompressedModel, artifact: bytes, runtime: LoweredRuntime) -> CompressedModel:
    return model.evolve(module=LoweredModule(artifact, runtime, model.backend), form=ModelForm.LOWERED,
                        runtime=runtime, artifact=artifact)


def _lower_to(model: CompressedModel, runtime: LoweredRuntime, example_input: torch.Tensor | None) -> CompressedModel:
    check_runs_on(TorchScriptConfig() if runtime == "torchscript" else ExecuTorchConfig(), model)
    module = copy.deepcopy(model.module)
    if runtime == "torchscript":
        return _lowered(model, torchscript_bytes(module, model.backend, example_input), runtime)
    return _lowered(model, executorch_bytes(module, _example_for(module, example_input)), runtime)


@register_stage(TorchScriptConfig)
def to_torchscript(model: CompressedModel, config: TorchScriptConfig, context: StageContext) -> CompressedModel:
    return _lower_to(model, "torchscript", torch.zeros(context.data.input_shape))


@register_stage(ExecuTorchConfig)
def to_executorch(model: CompressedModel, config: ExecuTorchConfig, context: StageContext) -> CompressedModel:
    return _lower_to(model, "executorch", torch.zeros(context.data.input_shape))


def lower(model: CompressedModel, runtime: LoweredRuntime | None = None, *,
          example_input: torch.Tensor | None = None) -> CompressedModel:
    """Lower ``model`` to the runtime it targets; already-lowered models are returned unchanged.

    Quantized models go where their backend runs (xnnpack: ExecuTorch; x86, fbgemm, qnnpack:
    TorchScript) and a conflicting ``runtime`` raises IncompatiblePipelineError; float models go
    to ``runtime`` (default ExecuTorch). ``example_input`` fixes the ExecuTorch input shape; it is
    needed unless the model was exported by PT2E quantization, which recorded its shape.
    """
    if model.form is ModelForm.LOWERED:
        return model
    if runtime not in (None, "torchscript", "executorch"):
        raise UserError(f"Cannot lower to runtime {runtime!r}.", "use 'torchscript' or 'executorch'.")
    if runtime is None:
        runtime = "executorch" if model.backend is None else runtime_for(model.backend)  # type: ignore[assignment]
    return _lower_to(model, runtime, example_input)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- runners


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


def model_runner(model: CompressedModel) -> Runner:
    """The runner for a model in any form: its artifact if lowered, else its module run eagerly."""
    if model.artifact is not None:
        return load_runner(model.artifact, model.runtime, model.backend)
    return load_runner(model.module, "eager", model.backend)


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

    return _ExecuTorchRunner(ExecuTorchRuntime.get().load_program(artifact))


class _ExecuTorchRunner:
    """Runs a program's ``forward`` on any batch size, in chunks of the batch it was exported with."""

    def __init__(self, program: object) -> None:
        self.program = program  # owns the method's memory: keep it alive as long as the method
        self.method = program.load_method("forward")  # type: ignore[attr-defined]
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


# --------------------------------------------------------------------------- parity


def parity(reference: Runner, candidate: Runner, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> ParityReport:
    """Compare ``candidate`` with ``reference`` on real ``(images, labels)`` batches (labels unused)."""
    batches = list(batches)
    if not batches:
        raise UserError("parity() got no batches to compare on.", "pass a non-empty split's loader.")
    expected, _ = predict_logits(reference, batches)
    actual, _ = predict_logits(candidate, batches)
    return compare_logits(expected, actual)
