"""Lowering a module to a runtime artifact's bytes: TorchScript (frozen) or an ExecuTorch ``.pte`` (XNNPACK).

ExecuTorch programs are exported with a batch of one (that is what an app runs, and what latency
is measured at). TorchScript modules are scripted, so they take any batch.
"""

from __future__ import annotations

import functools
import io
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.fx import GraphModule

from udacisense.common.errors import UserError
from udacisense.runtime.backends import Backend, LoweredRuntime, quantized_engine, quiet_legacy_apis

if TYPE_CHECKING:
    from executorch.exir.pass_manager import ExportedProgramPassManager


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


@dataclass(frozen=True)
class Delegation:
    """How much of a ``.pte`` runs in the XNNPACK delegate; the rest falls back to portable (slow) kernels."""

    delegated_subgraphs: int
    delegated_nodes: int
    portable_nodes: int
    portable_ops: dict[str, int]  # operator -> nodes left to portable kernels
    # operator -> nodes the delegate runs, quantize/dequantize included: at phone-app input sizes a
    # program's latency follows how many operators it runs more than how much arithmetic they do.
    delegated_ops: dict[str, int]

    @property
    def fully_delegated(self) -> bool:
        return self.portable_nodes == 0

    @property
    def operator_count(self) -> int:
        """Every operator the program runs, in the delegate or on portable kernels."""
        return self.delegated_nodes + self.portable_nodes

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "fully_delegated": self.fully_delegated, "operator_count": self.operator_count}


@dataclass(frozen=True)
class LoweredProgram:
    """An artifact's bytes and, for a ``.pte``, how much of it the XNNPACK delegate runs."""

    artifact: bytes
    delegation: Delegation | None  # None for TorchScript, which has no delegate


def _constant_folding() -> ExportedProgramPassManager:
    """A pass manager that folds every operator whose inputs are all constants into a constant.

    Edge lowering turns the Python scalars of decomposed ops (hardswish's ``+ 3`` and ``/ 6``) into
    tensor constants behind a dtype copy the delegate does not take: MobileNetV3's float ``.pte``
    kept 18 of them on portable kernels, run on every inference. Folded, the program is one delegate.
    """
    from executorch.exir.pass_base import ExportedProgramPassBase, ExportedProgramPassResult
    from executorch.exir.pass_manager import ExportedProgramPassManager
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass

    class FoldConstants(ExportedProgramPassBase):
        def call(self, exported_program: torch.export.ExportedProgram) -> ExportedProgramPassResult:
            # Quantize/dequantize ops are skipped by default: the delegate matches them as patterns.
            return ExportedProgramPassResult(constant_prop_pass(exported_program), True)

    return ExportedProgramPassManager([FoldConstants()])


def executorch_program(module: nn.Module, example_input: torch.Tensor) -> LoweredProgram:
    """A ``.pte`` program for ``module`` at the example's shape (batch 1), delegated to XNNPACK, with its coverage."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackPartitioner,
    )
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    module.eval()
    exported = torch.export.export(module, (example_input[:1].contiguous(),))
    edge = to_edge_transform_and_lower(exported, transform_passes=_constant_folding(),
                                       partitioner=[XnnpackPartitioner()])
    info = get_delegation_info(edge.exported_program().graph_module)
    # `getitem` only unpacks a tuple (a delegate's outputs): no kernel runs for it.
    counted = sorted((op, b) for op, b in info.delegation_by_operator.items() if op != "getitem")
    portable = {op: b.non_delegated for op, b in counted if b.non_delegated}
    delegated = {op: b.delegated for op, b in counted if b.delegated}
    delegation = Delegation(delegated_subgraphs=info.num_delegated_subgraphs, delegated_nodes=sum(delegated.values()),
                            portable_nodes=sum(portable.values()), portable_ops=portable, delegated_ops=delegated)
    return LoweredProgram(bytes(edge.to_executorch().buffer), delegation)


@functools.cache
def warm_executorch_lowering() -> None:
    """Lower a two-operator program in this process, once: before forking children that lower ``.pte`` programs.

    A process's first lowering builds XNNPACK's pattern graphs (upsampling, attention) and fills torch's dispatch
    caches, ~11 s here; a forked child inherits them. Children of a process that had lowered nothing built their
    own: a MobileNetV3-Small program took 32 s in such a child and 17 s in a child of a warmed process (Intel Xeon).
    """
    executorch_program(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))


def executorch_bytes(module: nn.Module, example_input: torch.Tensor) -> bytes:
    """The bytes of ``executorch_program``."""
    return executorch_program(module, example_input).artifact


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


def lower_program(module: nn.Module, runtime: LoweredRuntime, backend: Backend | None = None,
                  example_input: torch.Tensor | None = None) -> LoweredProgram:
    """``module`` lowered to ``runtime``. ``example_input`` fixes the ExecuTorch input shape; it is needed
    unless the module was exported by PT2E quantization, which recorded its shape."""
    if runtime == "torchscript":
        return LoweredProgram(torchscript_bytes(module, backend, example_input), None)
    if runtime == "executorch":
        return executorch_program(module, _example_for(module, example_input))
    raise UserError(f"Cannot lower to runtime {runtime!r}.", "use 'torchscript' or 'executorch'.")


def artifact_bytes(module: nn.Module, runtime: LoweredRuntime, backend: Backend | None = None,
                   example_input: torch.Tensor | None = None) -> bytes:
    """The bytes of ``lower_program``."""
    return lower_program(module, runtime, backend, example_input).artifact
