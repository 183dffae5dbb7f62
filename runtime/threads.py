"""The ExecuTorch (XNNPACK) thread pool: its size is set once per process, before any program loads.

``torch.set_num_threads`` does not reach this pool; it starts at the machine's core count. Resetting
it after a program was loaded crashed the process (a segfault, ExecuTorch 1.5.1), so the size is
requested up front and applied just before the first program is loaded; a later request for another
size is refused with an error instead of a crash. That is also why timing does not set and restore
the pool around each measurement: it is pinned for the whole process.
"""

from __future__ import annotations

import re

from udacisense.common.errors import UserError
from udacisense.common.logs import native_stderr_without

# ExecuTorch describes the machine and its pool on stderr when the pool is first touched and when
# the XNNPACK delegate first loads a method (`[cpuinfo_utils.cpp:71] Reading file /sys/devices/soc0/...`,
# `CPU info and manual query ... dont match`, `Resetting threadpool to 1 threads`), with no switch
# to turn it off.
EXECUTORCH_MACHINE_LOG = re.compile(r"^\[(cpuinfo_utils|threadpool)\.cpp:\d+\] ")

_requested: int | None = None
_program_loaded = False


def executorch_threads() -> int:
    """The size of the XNNPACK thread pool now in force in this process."""
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count

    with native_stderr_without(EXECUTORCH_MACHINE_LOG):  # the first call creates the pool, which probes the CPU
        return int(_threadpool_get_thread_count())


def request_executorch_threads(threads: int) -> None:
    """Run every ExecuTorch program of this process on ``threads`` threads.

    Before the first program loads this only records the size; afterwards it checks that the pool
    already has that size, since it can no longer be changed safely.
    """
    global _requested
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if _program_loaded:
        actual = executorch_threads()
        if actual != threads:
            raise UserError(
                f"ExecuTorch's thread pool has {actual} thread(s), but {threads} were requested after programs "
                "were already loaded in this process (it cannot be resized then).",
                "request the thread count (evaluation.threads) before the first ExecuTorch program is loaded.",
            )
    _requested = threads


def before_program_load() -> None:
    """Apply the requested pool size; called by the runner just before it loads a program."""
    global _program_loaded
    if not _program_loaded and _requested is not None and executorch_threads() != _requested:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

        _unsafe_reset_threadpool(_requested)
        if executorch_threads() != _requested:
            raise UserError(f"ExecuTorch refused a thread pool of {_requested} thread(s) "
                            f"(it has {executorch_threads()}).", "set evaluation.threads to what this machine offers.")
    _program_loaded = True
