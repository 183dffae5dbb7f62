"""Library log and warning levels for the CLI, its worker processes and the benchmarks."""

from __future__ import annotations

import warnings


def quiet_libraries() -> None:
    """Silence warnings that help no user of this tool; call it in every process that runs trials."""
    import optuna

    # Heartbeat retries and artifact storage are marked experimental; the warning helps no user here.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*deprecated.*")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
