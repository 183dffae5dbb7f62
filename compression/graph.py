"""Graph stages: Conv-BN fusion, and lowering to a runtime artifact (TorchScript or ExecuTorch).

Lowering is always the last stage: a lowered model is the artifact's bytes plus a module that runs
them, and nothing accepts it as input. Which runtime a model can be lowered to follows from how it
was quantized (``runtime.backends.runtime_for``); the bytes come from ``runtime.lowering``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from udacisense.common.errors import IncompatiblePipelineError, UserError
from udacisense.compression.stage import (
    CompressedModel,
    ModelForm,
    Signature,
    StageContext,
    check_runs_on,
    register_stage,
    require_form,
)
from udacisense.runtime import (
    FX_BACKENDS,
    LoweredModule,
    LoweredProgram,
    LoweredRuntime,
    Runner,
    load_runner,
    lower_program,
    runtime_for,
)

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


def _lowered(model: CompressedModel, program: LoweredProgram, runtime: LoweredRuntime) -> CompressedModel:
    return model.evolve(module=LoweredModule(program.artifact, runtime, model.backend), form=ModelForm.LOWERED,
                        runtime=runtime, artifact=program.artifact, delegation=program.delegation)


def _lower_to(model: CompressedModel, runtime: LoweredRuntime, example_input: torch.Tensor | None) -> CompressedModel:
    check_runs_on(TorchScriptConfig() if runtime == "torchscript" else ExecuTorchConfig(), model)
    module = copy.deepcopy(model.module)
    return _lowered(model, lower_program(module, runtime, model.backend, example_input), runtime)


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
    target: LoweredRuntime = runtime_for(model.backend) if runtime is None else runtime
    return _lower_to(model, target, example_input)


# --------------------------------------------------------------------------- runners


def model_runner(model: CompressedModel) -> Runner:
    """The runner for a model in any form: its artifact if lowered, else its module run eagerly."""
    if model.artifact is not None:
        return load_runner(model.artifact, model.runtime, model.backend)
    return load_runner(model.module, "eager", model.backend)
