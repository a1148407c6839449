"""A real PostgreSQL server for tests: Debian's package, started in a temporary folder on 127.0.0.1.

    with postgres_server(tmp) as url: ...   # postgresql+psycopg://postgres@127.0.0.1:PORT/postgres

PostgreSQL refuses to run as root, so when the tests run as root the server runs
as the `postgres` user the package creates (through runuser). `.ci/run`
installs the package where it is missing; without it the tests that need it skip.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Iterator


def binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server(folder: Path, database: str = "dagtrain") -> Iterator[str]:
    """initdb, pg_ctl start (trust auth on loopback), a database; its SQLAlchemy URL; stopped after."""
    bin_dir = binaries()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    data, sock = folder / "pgdata", folder / "pgsock"
    for d in (folder, sock):
        d.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(sock, "postgres")
    port = _free_port()
    subprocess.run(_as_server_user([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                                    "--no-sync", "-E", "UTF8"]), check=True, capture_output=True)
    opts = f"-p {port} -h 127.0.0.1 -k {sock} -c fsync=off -c max_connections=200"
    subprocess.run(_as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", opts, "-l",
                                    str(folder / "server.log"), "-w", "start"]), check=True, capture_output=True)
    try:
        subprocess.run(_as_server_user([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                                        "postgres", database]), check=True, capture_output=True)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/{database}"
    finally:
        subprocess.run(_as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True)
