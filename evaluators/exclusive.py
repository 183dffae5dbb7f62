"""One latency timing at a time on a machine: an inter-process lock held only while timing.

Search workers train side by side, but two timings at once compete for the same cores and caches,
and a latency ratio would then depend on how many workers happened to be timing together. The
workers of a study share one lock file, so their timings take turns while their training overlaps.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The lock file's name inside a study's run folder.
TIMING_LOCK = "timing.lock"


@contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created if needed) for the ``with`` block; waits for its turn.

    The kernel releases the lock when its holder exits, so a worker that dies while timing blocks
    nobody. Not re-entrant: a nested ``exclusive`` on the same path in one process waits for ever.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def held(lock_path: Path) -> bool:
    """Whether a process (this one included) holds ``lock_path`` with ``exclusive`` now; asking never waits."""
    if not lock_path.is_file():
        return False
    with open(lock_path, "a", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False
