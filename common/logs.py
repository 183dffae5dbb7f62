"""Library log and warning levels for the CLI, its worker processes and the benchmarks."""

from __future__ import annotations

import logging
import re
import warnings

from udacisense.common.errors import trial_problem


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

    # Heartbeat retries and artifact storage are marked experimental; the warning helps no user here.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*deprecated.*")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial_logger = logging.getLogger("optuna.study._optimize")  # where Optuna reports finished trials
    if not any(isinstance(f, _DropExpectedTrialFailure) for f in trial_logger.filters):
        trial_logger.addFilter(_DropExpectedTrialFailure())
