"""FLOPs and MACs of one forward pass, counted by torch's own FlopCounterMode."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_flops(module: nn.Module, example_input: torch.Tensor) -> int:
    """Floating-point operations for one forward pass of a float (eager or exported) model.

    Quantized kernels are invisible to the counter; callers record FLOPs while the model is float
    (quantization does not change the operation count).
    """
    module.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        module(example_input)
    return int(counter.get_total_flops())


def macs_from_flops(flops: int) -> int:
    return flops // 2
