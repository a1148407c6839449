"""A registered version's files, read at its commit and checked against the SHA-256 its lineage recorded.

    read = reader(repo, v)                                        # read(path, what) -> bytes, via DVC
    rec = recorded(v, lineage["model"], "weights")               # {"path", "sha256"}, or a clear refusal
    data = checked(read(rec["path"], "weights"), rec, v, "weights")
    data, where, sha256, v = registered_weights("digits@prod")   # what loading and a warm start read

The bytes come through DVC (the local cache, or the remote when they are not
pulled), so a version's files are the ones it was registered with. Used by
tasks/loading.py (a model with its preprocessing) and tasks/training/init.py
(a parent's weights for a warm start); the weights are parsed by tasks/weights.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tasks.errors import InputError
from tasks.registry.versions import Version, read_lineage, resolve


def reader(repo: str | Path, v: Version):
    """read(path, what) -> bytes of a file at the version's commit, from the DVC cache or remote."""
    from dvc.fs import DVCFileSystem

    fs = DVCFileSystem(repo=str(repo), rev=v.commit)

    def read(path: str, what: str) -> bytes:
        try:
            return fs.read_bytes(path)
        except Exception as e:  # not pulled and no remote, or a remote that does not answer
            raise InputError(f"{v}: the {what} {path} at {v.commit[:8]} is neither in the DVC cache nor in a "
                             f"reachable remote; run `dvc pull` ({type(e).__name__}: {e})") from None

    return read


def recorded(v: Version, rec: dict | None, what: str) -> dict:
    if not rec or not rec.get("path") or not rec.get("sha256"):
        raise InputError(f"{v}: its lineage records no path and sha256 for the {what}, so it cannot be checked "
                         f"before use (registered before the {what} was versioned with the model?)")
    return rec


def checked(data: bytes, rec: dict, v: Version, what: str) -> bytes:
    if hashlib.sha256(data).hexdigest() != rec["sha256"]:
        raise InputError(f"{v}: the {what} {rec['path']} differs from the sha256 recorded at registration; "
                         f"the file was changed, so it is not used")
    return data


def registered_weights(spec: str, repo: str | Path = ".") -> tuple[bytes, str, str, Version, dict]:
    """(bytes, where, recorded sha256, version, lineage) of a version's weights; the caller parses them with
    tasks/weights.py, which checks the sha256 before anything else."""
    v = resolve(spec, repo)
    lineage = read_lineage(v, repo)
    model = recorded(v, lineage.get("model"), "weights")
    return reader(repo, v)(model["path"], "weights"), f"{v}: {model['path']}", model["sha256"], v, lineage
