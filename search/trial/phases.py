"""Where a trial's time goes: seconds per phase (each stage, validation, lowering, accuracy, parity, latency)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class PhaseClock:
    """Seconds per named phase of one trial; a phase entered twice (validation after each stage) adds up."""

    started: float = field(default_factory=time.perf_counter)
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def summary(self) -> dict[str, float]:
        """Every phase so far, and ``other``: what no phase covers (sampling, storage)."""
        other = time.perf_counter() - self.started - sum(self.seconds.values())
        return {name: round(seconds, 3) for name, seconds in {**self.seconds, "other": max(0.0, other)}.items()}
