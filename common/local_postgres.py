"""A throwaway PostgreSQL server on loopback (Debian's postgresql package), for shared-storage tests and benchmarks."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PASSWORD = "udaci-secret"


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_postgres(args: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: drop to the package's own user when needed.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a throwaway server with password authentication; yields the admin URL without a database."""
    bindir = postgres_bin()
    assert bindir is not None
    # Directly under /tmp: the postgres user cannot traverse pytest's private (0700) temporary folders.
    workdir = Path(tempfile.mkdtemp(prefix="udaci-pg-"))
    data, sockets = workdir / "pgdata", workdir / "sockets"
    sockets.mkdir(parents=True)
    (workdir / "pw").write_text(PASSWORD)
    if os.geteuid() == 0:
        uid = pwd.getpwnam("postgres").pw_uid
        for path in (workdir, sockets, workdir / "pw"):
            os.chown(path, uid, -1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "udaci", "-A", "scram-sha-256",
                                 f"--pwfile={workdir / 'pw'}"]), check=True, capture_output=True)
    subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(workdir / "log"),
                                 "-o", f"-p {port} -h 127.0.0.1 -k {sockets}", "start"]), check=True, capture_output=True)
    try:
        yield f"postgresql://udaci:{PASSWORD}@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


def create_database(admin_url: str, name: str) -> str:
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"{admin_url}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return f"{admin_url}/{name}"


def drop_database(admin_url: str, name: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"{admin_url}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()
