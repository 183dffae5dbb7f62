"""Library log and warning levels for the CLI, its worker processes and the benchmarks.

What is silenced is noise a user of this tool cannot act on (native libraries describing the
machine, deprecations inside the libraries). Warnings about a study itself are left alone.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from udacisense.common.errors import trial_problem

# Environment switches of native libraries; setdefault keeps whatever a user set to debug them.
_NATIVE_LOG_LEVELS = {
    # c10's C++ log (read once, when torch is imported). Its warnings that reach this log are those
    # raised outside Python's warning machinery, e.g. the quantized-tensor deprecation printed while
    # torch.jit.load reads an int8 TorchScript artifact; errors still print.
    "TORCH_CPP_LOG_LEVEL": "ERROR",
    # Kineto, behind torch.profiler (peak memory): `USDT ... profiler_start/stop` on every profile,
    # and `gpuGetDeviceCount failed with code 35` from the CUDA build of torch on a machine with no
    # GPU. 6 is above its highest level (read when the profiler starts, so setting it late works).
    "KINETO_LOG_LEVEL": "6",
}

# torchao registers an Enum as a pytree constant, which torch now calls deprecated, on import.
_PYTREE_ENUM_NOTICE = "is an Enum subclass and is now natively supported"


def quiet_native_logs() -> None:
    """Quiet native libraries' own logs; call it before torch is imported (the CLI's first statement)."""
    for name, level in _NATIVE_LOG_LEVELS.items():
        os.environ.setdefault(name, level)


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in str(record.msg)


class _DropExpectedTrialFailure(logging.Filter):
    """Drops Optuna's report of a trial that failed for a reason the CLI explains itself.

    Optuna logs such a trial as failed, with a traceback, then its value. When the user stopped it
    (Ctrl-C, SIGTERM) or it failed for a reason the user must fix (a full disk, a changed space),
    the CLI says in one paragraph what happened instead.
    """

    def __init__(self) -> None:
        super().__init__()
        self._dropped: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, KeyboardInterrupt) or (error is not None and trial_problem(error) is not None):
            self._dropped.update(re.findall(r"^Trial (\d+) ", record.getMessage()))
            return False
        follow_up = re.match(r"^Trial (\d+) failed with value ", record.getMessage())
        return not (follow_up and follow_up.group(1) in self._dropped)


def quiet_libraries() -> None:
    """Silence warnings that help no user of this tool; call it in every process that runs trials."""
    import optuna

    quiet_native_logs()  # too late for torch's C++ log in this process, but reaches every child process
    # Heartbeat retries and artifact storage are marked experimental; the warning helps no user here.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*deprecated.*")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial_logger = logging.getLogger("optuna.study._optimize")  # where Optuna reports finished trials
    if not any(isinstance(f, _DropExpectedTrialFailure) for f in trial_logger.filters):
        trial_logger.addFilter(_DropExpectedTrialFailure())
    pytree = logging.getLogger("torch.utils._pytree")
    if not any(isinstance(f, _DropMessage) for f in pytree.filters):
        pytree.addFilter(_DropMessage(_PYTREE_ENUM_NOTICE))


@contextmanager
def native_stderr_without(pattern: re.Pattern[str]) -> Iterator[None]:
    """Run the block with file descriptor 2 captured, then write back every line that does not match ``pattern``.

    For native code that prints to stderr with no switch to turn it off. Other lines, an error's
    explanation among them, still reach stderr, after the block.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not pattern.search(line)))
            sys.stderr.flush()
