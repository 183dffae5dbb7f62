"""Opening a study's storage: embedded SQLite by default, any SQLAlchemy URL (PostgreSQL) for shared studies."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from udacisense.common.errors import UserError
from udacisense.search.study import StudyConfig

OBJECTIVE_NAMES = ("val_accuracy", "latency_ratio", "size_ratio")
DIRECTIONS = ("maximize", "minimize", "minimize")


def open_storage(url: str, heartbeat_seconds: int = 30) -> RDBStorage:
    """An RDB storage with heartbeats: a trial whose worker died is failed and retried by another worker."""
    engine_kwargs: dict[str, object] = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # Several local processes share one file: wait for the lock instead of failing.
        engine_kwargs = {"connect_args": {"timeout": 120}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    try:
        return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_seconds,
                          grace_period=heartbeat_seconds * 4,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2, inherit_intermediate_values=True))
    except ImportError as error:
        raise UserError(f"The storage {url.split('@')[-1]} needs a database driver that is not installed: {error}.",
                        "install it, e.g. `pip install 'psycopg[binary]'` for postgresql:// URLs.") from None
    except Exception as error:  # SQLAlchemy raises many types for unreachable servers and bad credentials
        safe = url.split("@")[-1]
        raise UserError(f"Cannot open the study storage at {safe}: {type(error).__name__}: {str(error).splitlines()[0]}",
                        "check that the database server runs and that the URL, user and password are right.") from None


def artifact_store(study: StudyConfig) -> optuna.artifacts.FileSystemArtifactStore:
    path = study.run_dir / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(str(path))


def open_study(study: StudyConfig, url: str | None = None, sampler: optuna.samplers.BaseSampler | None = None,
               *, create: bool = True) -> optuna.Study:
    storage = open_storage(url or study.storage_url, study.search.heartbeat_seconds)
    if not create:
        try:
            return optuna.load_study(study_name=study.name, storage=storage, sampler=sampler)
        except KeyError:
            names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
            raise UserError(f"The storage has no study named {study.name!r} (it has: {names or 'none'}).",
                            "run `udacisense search --study ...` first, or pass the right study file.") from None
    optuna_study = optuna.create_study(study_name=study.name, storage=storage, sampler=sampler,
                                       directions=list(DIRECTIONS), load_if_exists=True)
    if optuna_study.metric_names is None:
        optuna_study.set_metric_names(list(OBJECTIVE_NAMES))
    return optuna_study
