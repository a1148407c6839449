"""Shared fixtures: a private Prefect home, and throwaway copies of the repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

# before prefect is imported anywhere: a private home, no telemetry
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-home-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("TQDM_DISABLE", "1")
# DVC runs stage commands through the shell: `python` must be this interpreter
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"

ROOT = Path(__file__).resolve().parents[1]
GIT_ENV = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost"}


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run a command (with a git identity) and return what it printed."""
    env = (env or os.environ) | GIT_ENV
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kw)
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    return res


def copy_repo(dest: Path, master_port: int) -> Path:
    """A fresh git repo holding the project's files as a clone would (no outputs)."""
    dest.mkdir(parents=True, exist_ok=True)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    (dest / "dvc.lock").unlink(missing_ok=True)  # a clone has no run of its own yet
    set_params(dest, {"train.master_port": master_port})
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "initial"], dest)
    return dest


def set_params(repo: Path, changes: dict) -> None:
    """Set dotted keys in a repo's params.yaml, e.g. {"train.epochs": 3}."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = params
        for part in parents:
            node = node[part]
        node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="session")
def prefect_server():
    """One private Prefect server for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def postgres():
    """The SQLAlchemy URL of a real PostgreSQL server on 127.0.0.1 (Debian's package), for the session.
    Its folder is made outside pytest's own (which only root may enter: the server runs as `postgres`)."""
    from tests.postgres import binaries, postgres_server

    if binaries() is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's package)")
    folder = Path(tempfile.mkdtemp(prefix="dagtrain-pg-"))
    with postgres_server(folder) as url:
        yield url
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def s3(monkeypatch):
    """(boto3 client, endpoint_url) of a moto S3 server on 127.0.0.1 with a bucket 'data'."""
    pytest.importorskip("s3fs")
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                 "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="data")
    yield client, endpoint
    server.stop()
