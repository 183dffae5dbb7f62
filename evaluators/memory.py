"""Peak memory allocated by torch during one forward pass, from the profiler's allocation events."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile


def peak_forward_memory(run: Callable[[torch.Tensor], object], example_input: torch.Tensor) -> int:
    """Largest number of bytes live at once (activations and workspaces) while running one input.

    The profiler attributes every allocation (+bytes) and free (-bytes) to the op that made it;
    in time order, the running sum's maximum is the peak. Weights allocated before the call are
    not included.
    """
    with torch.inference_mode():
        run(example_input)  # warm: lazy initialisation would otherwise count as activations
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            run(example_input)
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return int(peak)
