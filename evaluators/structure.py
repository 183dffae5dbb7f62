"""What a would-be artifact is made of, without lowering it: a key of its structure and the counts a cost model reads.

A dense lowered program's bytes and its single-thread XNNPACK latency are fixed by its operators,
shapes and dtypes, not by its weight values: two MobileNetV3-Small int8 programs of one width with
different weights lowered to the same 538,792 bytes here. So a model's structure (its graph with every
weight-dependent number left out, and each tensor's shape and dtype) keys what lowering it would measure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import fx, nn

# Modules the lowering folds into their neighbours or drops: they are no operator of the program.
_FOLDED = (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.Identity)
# Quantize/dequantize ops whose scale and zero point are literals (arguments 1 and 2): values, not structure.
_PER_TENSOR_QDQ = ("quantize_per_tensor", "dequantize_per_tensor")


@dataclass(frozen=True)
class Structure:
    """A model's structure as lowering would see it: ``key`` equal for models that lower alike."""

    key: str
    operators: int  # graph operators (an exported graph's calls, or an eager model's unfused leaf modules)
    weight_elements: int  # parameters and constants: at a fixed input size, what the MACs scale with
    weight_bytes: float  # as stored: float32 4 bytes, int8 1, int4 half of one

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> Structure:
        return cls(str(document["key"]), int(document["operators"]), int(document["weight_elements"]),
                   float(document["weight_bytes"]))


def _argument(value: Any) -> str:
    """An argument as structure: nodes by position only, floats (scales, eps) by kind, the rest (shapes, strides, ranges) as is."""
    if isinstance(value, fx.Node):
        return "%"
    if isinstance(value, float):
        return "f"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_argument(v) for v in value) + "]"
    return repr(value)


def _constant(module: nn.Module, target: str) -> torch.Tensor | None:
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part, None)
    return value if isinstance(value, torch.Tensor) else None


def _bytes_per_element(tensor: torch.Tensor) -> float:
    # torchao's int4 weights are a tensor subclass holding int8 `qdata`; XNNPACK packs two to a byte.
    return 0.5 if hasattr(tensor, "qdata") else tensor.element_size()


def _graph_lines(graph_module: fx.GraphModule) -> tuple[list[str], int, int, float]:
    lines, operators, elements, stored = [], 0, 0, 0.0
    for node in graph_module.graph.nodes:
        if node.op == "get_attr":
            tensor = _constant(graph_module, str(node.target))
            if tensor is None:
                lines.append(f"get_attr {type(getattr(graph_module, str(node.target), None)).__name__}")
                continue
            bytes_per_element = _bytes_per_element(tensor)
            elements += tensor.numel()
            stored += tensor.numel() * bytes_per_element
            lines.append(f"get_attr {tuple(tensor.shape)} {tensor.dtype} {type(tensor).__name__}")
        elif node.op == "call_function":
            target = str(node.target)
            args = list(node.args)
            if any(name in target for name in _PER_TENSOR_QDQ):
                args = args[:1] + args[3:]
            operators += "getitem" not in target
            lines.append(f"{target}({','.join(_argument(a) for a in args)};{_argument(dict(node.kwargs))})")
        elif node.op == "placeholder":
            value = node.meta.get("val")
            lines.append(f"input {tuple(value.shape) if isinstance(value, torch.Tensor) else node.target}")
        else:
            lines.append(node.op)
    # Only what the graph reads: a converted graph keeps its float originals of the weights it folded to int8.
    return lines, operators, elements, stored


def _module_lines(module: nn.Module) -> tuple[list[str], int, int, float]:
    # The module tree's repr names every layer with its hyperparameters (kernel, stride, channels,
    # activation) and no weight value; the tensors add their shapes and dtypes.
    lines = [repr(module)]
    tensors = [*module.named_parameters(), *module.named_buffers()]
    lines += [f"{name} {tuple(t.shape)} {t.dtype}" for name, t in tensors]
    operators = sum(1 for m in module.modules() if not list(m.children()) and not isinstance(m, _FOLDED))
    elements = sum(t.numel() for _, t in tensors if t.is_floating_point())
    stored = float(sum(t.numel() * t.element_size() for _, t in tensors if t.is_floating_point()))
    return lines, operators, elements, stored


def structure_of(module: nn.Module, *context: str) -> Structure:
    """The structure of ``module`` (an exported or quantized graph, or an eager model), keyed together
    with ``context`` (what else decides the artifact: its runtime and quantization backend)."""
    lines, operators, elements, stored = (_graph_lines(module) if isinstance(module, fx.GraphModule)
                                          else _module_lines(module))
    digest = hashlib.sha256("\n".join([*context, *lines]).encode()).hexdigest()[:16]
    return Structure(digest, operators, elements, stored)
