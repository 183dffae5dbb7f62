"""Opening a study's storage: embedded SQLite by default, any SQLAlchemy URL (PostgreSQL) for shared studies."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from udacisense.common.errors import UserError
from udacisense.common.schema import written_form
from udacisense.evaluators.exclusive import exclusive
from udacisense.search.study.config import StudyConfig
from udacisense.search.study.records import DIRECTIONS, OBJECTIVE_NAMES, StudyAttr, StudyRecord, store_study

# Paths and download switches move with a checkout without changing what a trial measures.
_UNCOMPARED = frozenset({"data.root", "data.archive", "data.download", "model.weights_file"})


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (None for other databases and in-memory SQLite)."""
    parsed = sqlalchemy.engine.make_url(url)
    return Path(parsed.database) if parsed.get_backend_name() == "sqlite" and parsed.database else None


def _root_cause(error: BaseException) -> BaseException:
    # Optuna wraps SQLAlchemy errors, which wrap the driver's: the driver's message is the useful one.
    while True:
        inner = getattr(error, "orig", None) or error.__cause__
        if inner is None or inner is error:
            return error
        error = inner


def storage_problem(error: BaseException, url: str | None) -> UserError:
    """What went wrong with a study storage, and how to fix it, for the kind of storage it is."""
    cause = _root_cause(error)
    message = (str(cause).splitlines() or [type(cause).__name__])[0]
    text = message.lower()
    other = "or pass `--storage URL` to use another database"
    path = sqlite_path(url) if url else None
    if path is not None:
        if "file is not a database" in text or "malformed" in text:
            return UserError(f"The study database {path} is damaged ({message}).",
                             f"move it aside (`mv {path} {path}.damaged`) and run `udacisense search` to start the "
                             f"study again, restore it from a backup, {other}.")
        if "locked" in text:
            return UserError(f"The study database {path} stayed locked by another process for too long ({message}).",
                             "wait for the other udacisense command on this study to finish (or stop it) and run this "
                             "one again; for many workers at once use PostgreSQL with `--storage postgresql://...`.")
        if "disk is full" in text:
            return UserError(f"The disk holding {path} is full ({message}).",
                             f"free some space and run the same command again (finished trials are kept), {other}.")
        if "readonly" in text or "unable to open" in text:
            return UserError(f"Cannot write the study database {path} ({message}).",
                             f"make {path.parent} writable by you, {other}.")
        return UserError(f"Cannot use the study database {path}: {message}.",
                         f"check that it is a file written by `udacisense search`, {other}.")
    where = url.split("@")[-1] if url else "the study storage"
    if "password" in text or "authentication" in text:
        return UserError(f"The database server at {where} refused the login: {message}.",
                         "fix the user and password in the URL (`--storage` or `storage` in the study file).")
    if "does not exist" in text:
        return UserError(f"The database server at {where} has no such database: {message}.",
                         "create it (e.g. `createdb NAME` on the server) or fix the database name in the URL "
                         "(`--storage` or `storage` in the study file).")
    return UserError(f"Cannot open the study storage at {where}: {type(cause).__name__}: {message}",
                     "check that the database server runs and accepts connections at the host and port of the URL "
                     "(`--storage` or `storage` in the study file).")


SCHEMA_ATTEMPTS = 3


def _lost_schema_race(error: Exception) -> bool:
    """Whether opening failed on tables or rows that another process created at the same moment."""
    return isinstance(error, sqlalchemy.exc.IntegrityError) or "already exists" in str(error)


def read_only_connection(url: str, engine_kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The URL and engine arguments of a connection that cannot write: SQLite opened read-only, PostgreSQL
    sessions whose transactions are read-only. Other databases are left as they are."""
    parsed = sqlalchemy.engine.make_url(url)
    path = sqlite_path(url)
    if path is not None:
        parsed = parsed.set(database=f"file:{quote(str(path.absolute()))}", query={"mode": "ro", "uri": "true"})
        return parsed.render_as_string(hide_password=False), engine_kwargs
    if parsed.get_backend_name() == "postgresql":
        connect_args = {**engine_kwargs.get("connect_args", {}), "options": "-c default_transaction_read_only=on"}
        return url, {**engine_kwargs, "connect_args": connect_args}
    return url, engine_kwargs


def holds_a_study(url: str, engine_kwargs: dict[str, Any]) -> bool:
    """Whether the database has Optuna's tables and a study in them, found by reading only."""
    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        with engine.connect() as connection:
            if "studies" not in sqlalchemy.inspect(connection).get_table_names():
                return False
            return bool(connection.execute(sqlalchemy.text("SELECT COUNT(*) FROM studies")).scalar_one())
    finally:
        engine.dispose()


def open_storage(url: str, heartbeat_seconds: int = 30, *, create: bool = True, read_only: bool = False) -> RDBStorage:
    """An RDB storage with heartbeats: a trial whose worker died is failed and retried by another worker.

    With ``create=False`` (commands on an existing study) a SQLite file that does not exist is an error
    rather than a new empty database and folder. With ``read_only`` (``front``, ``report``,
    ``dashboard``) nothing is written either: Optuna would create its tables and version row in any
    database it opens, so the connection cannot write and a database without a study is refused.
    """
    create = create and not read_only
    try:
        path = sqlite_path(url)
    except sqlalchemy.exc.ArgumentError:
        raise UserError(f"The storage URL {url.split('@')[-1]!r} is not a database URL.",
                        "pass `--storage` as e.g. sqlite:///runs/x/study.db or postgresql://user:pw@host/db.") from None
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if path is not None:
        if not create and not path.is_file():
            raise UserError(f"There is no study database at {path}.",
                            "run `udacisense search --study ...` first, or pass `--storage URL` of an existing study.")
        path.parent.mkdir(parents=True, exist_ok=True)
        # Several local processes share one file: wait for the lock instead of failing.
        engine_kwargs = {"connect_args": {"timeout": 120}}
    connect_url, engine_kwargs = read_only_connection(url, engine_kwargs) if read_only else (url, engine_kwargs)

    def connect() -> RDBStorage:
        return RDBStorage(connect_url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_seconds,
                          grace_period=heartbeat_seconds * 4, skip_table_creation=read_only,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2, inherit_intermediate_values=True))

    try:
        if read_only and not holds_a_study(connect_url, engine_kwargs):
            where = path or url.split("@")[-1]
            raise UserError(f"The database {where} holds no Optuna study: it was not written by `udacisense search`.",
                            "pass the storage of a searched study with `--storage`, or run `udacisense search --study "
                            "...` first (it creates the study there).")
        for _ in range(SCHEMA_ATTEMPTS - 1):
            try:
                return connect()
            except sqlalchemy.exc.DBAPIError as error:
                # Processes that open a new database at the same moment each create its tables and
                # schema version; the ones that lose find them made on another try.
                if not _lost_schema_race(error):
                    raise
        return connect()
    except UserError:
        raise
    except ImportError as error:
        raise UserError(f"The storage {url.split('@')[-1]} needs a database driver that is not installed: {error}.",
                        "install it, e.g. `pip install 'psycopg[binary]'` for postgresql:// URLs.") from None
    except Exception as error:  # SQLAlchemy raises many types for unreachable servers and bad credentials
        raise storage_problem(error, url) from None


def artifact_store(study: StudyConfig) -> optuna.artifacts.FileSystemArtifactStore:
    path = study.run_dir / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(str(path))


def existing_artifact_store(study: StudyConfig) -> optuna.artifacts.FileSystemArtifactStore | None:
    """The study's trial artifacts for read-only commands: None rather than a new folder when there are none."""
    return artifact_store(study) if (study.run_dir / "artifacts").is_dir() else None


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}.{key}").items()}
    return {prefix: list(value) if isinstance(value, tuple) else value}


_SETTING_TABLES = ("data", "model", "baseline", "students", "evaluation", "targets", "space")


def _comparable(seed: int, tables: dict[str, Any]) -> dict[str, Any]:
    flat = {"seed": seed, **_flatten(tables, "")}
    # Compared with what the storage gives back, so in the JSON form it stores.
    return json.loads(json.dumps({key.lstrip("."): value for key, value in flat.items()
                                  if key.lstrip(".") not in _UNCOMPARED}))


def _declared_defaults(table: Any) -> dict[str, Any]:
    """A settings table's fields at the defaults its dataclass declares (required fields left out)."""
    defaults: dict[str, Any] = {}
    for field in dataclasses.fields(table):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = written_form(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = written_form(field.default_factory())
    return defaults


# What a study stored before a setting existed ran under, where that is not the setting's declared default
# (the default widened since): a study stored without the key keeps running its old value.
BEFORE_IT_EXISTED = {"space.linear_weight_bits": [8]}


def default_settings(study: StudyConfig) -> dict[str, Any]:
    """``study_settings`` as what a study stored before a setting existed ran under: every field's declared
    default, or its value from before it existed (``BEFORE_IT_EXISTED``)."""
    return {**_comparable(study.seed, {name: _declared_defaults(getattr(study, name)) for name in _SETTING_TABLES}),
            **BEFORE_IT_EXISTED}


def study_settings(study: StudyConfig) -> dict[str, Any]:
    """The settings that decide what a trial measures, as dotted keys: trials under different ones are incomparable.

    The ``[search]`` table (budget, sampler, early stopping) is left out: it may change between runs.
    """
    return _comparable(study.seed, {name: written_form(getattr(study, name)) for name in _SETTING_TABLES})


def check_settings(study: StudyConfig, optuna_study: optuna.Study, *, record: bool) -> None:
    """Refuse a study file whose settings differ from those the stored trials were measured under."""
    current = study_settings(study)
    stored = StudyRecord.of(optuna_study).settings
    if stored is None:
        if record:  # a new study, or one from before settings were recorded: these are its settings from now on
            store_study(optuna_study, {StudyAttr.SETTINGS: current})
        return
    # A setting added since the trials were stored is no change while the study keeps its default:
    # that default is what the code did before the setting existed.
    defaults = default_settings(study)
    changed = sorted(key for key in stored.keys() | current.keys() if stored.get(key) != current.get(key)
                     and not (key not in stored and key in defaults and current[key] == defaults[key]))
    if changed:
        shown = "; ".join(f"{key}: {stored.get(key, '(unset)')!r} -> {current.get(key, '(unset)')!r}" for key in changed[:6])
        more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
        raise UserError(
            f"The study file changes settings of study {study.name!r} after its trials were measured: {shown}{more}. "
            "Its stored trials would not be comparable with new ones.",
            f"give the changed study a new `name` in its TOML file (e.g. name = \"{study.name}-2\") to start a new "
            "study, or restore the previous values to continue this one.")


def open_study(study: StudyConfig, url: str | None = None, sampler: optuna.samplers.BaseSampler | None = None,
               *, create: bool = True, read_only: bool = False) -> optuna.Study:
    """The study of ``study`` in its storage (``url`` overrides it): created unless ``create`` is False;
    ``read_only`` (an existing study too) for commands that must write nothing (see ``open_storage``)."""
    url = url or study.storage_url
    if read_only or not create:
        storage = open_storage(url, study.search.heartbeat_seconds, create=False, read_only=read_only)
        try:
            optuna_study = optuna.load_study(study_name=study.name, storage=storage, sampler=sampler)
        except KeyError:
            names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
            raise UserError(f"The storage has no study named {study.name!r} (it has: {names or 'none'}).",
                            "run `udacisense search --study ...` first, or pass the right study file with `--study`.") from None
        check_settings(study, optuna_study, record=False)
        return optuna_study
    path = sqlite_path(url)
    # Local processes creating one new SQLite study at the same moment race on its tables, rows and
    # attributes (a concurrent-search test failed 1 run in 3 with a driver error there): they take turns.
    # A database server serialises its clients itself.
    with exclusive(path.parent / f"{path.name}.lock") if path is not None else contextlib.nullcontext():
        storage = open_storage(url, study.search.heartbeat_seconds)
        optuna_study = optuna.create_study(study_name=study.name, storage=storage, sampler=sampler,
                                           directions=list(DIRECTIONS), load_if_exists=True)
        if optuna_study.metric_names is None:
            optuna_study.set_metric_names(list(OBJECTIVE_NAMES))
        check_settings(study, optuna_study, record=True)
    return optuna_study
