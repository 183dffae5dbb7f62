"""Library log and warning levels for the CLI, its worker processes and the benchmarks."""

from __future__ import annotations

import logging
import re
import warnings


class _DropInterruptedTrial(logging.Filter):
    """Drops Optuna's report of a trial that failed because the user stopped it (Ctrl-C, SIGTERM).

    Optuna logs such a trial as failed, with the KeyboardInterrupt's traceback, then its value;
    the CLI says in one paragraph what happened to that trial instead.
    """

    def __init__(self) -> None:
        super().__init__()
        self._interrupted: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is not None and issubclass(record.exc_info[0], KeyboardInterrupt):
            self._interrupted.update(re.findall(r"^Trial (\d+) ", record.getMessage()))
            return False
        follow_up = re.match(r"^Trial (\d+) failed with value ", record.getMessage())
        return not (follow_up and follow_up.group(1) in self._interrupted)


def quiet_libraries() -> None:
    """Silence warnings that help no user of this tool; call it in every process that runs trials."""
    import optuna

    # Heartbeat retries and artifact storage are marked experimental; the warning helps no user here.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*deprecated.*")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial_logger = logging.getLogger("optuna.study._optimize")  # where Optuna reports finished trials
    if not any(isinstance(f, _DropInterruptedTrial) for f in trial_logger.filters):
        trial_logger.addFilter(_DropInterruptedTrial())
