"""The machine's training hardware as a Prefect global concurrency limit counted in shares.

    with share("training-hardware", procs=2): ...   # a training of 2 GPUs (or CPU ranks) holds 2 of them

The limit's size is the machine's devices: its GPUs, or its CPU cores when it
has none (CPU ranks share the cores). A training holds as many shares as it
starts processes, so two one-rank search trials run side by side on two cores
while a two-rank pipeline training waits for both, and never the reverse.
Prefect refuses to grant more slots than a limit has, so a share is clamped to
the limit's size (a limit someone made smaller is respected, not deadlocked on).
"""

from __future__ import annotations

import contextlib
import os

from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound


def capacity() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else (os.cpu_count() or 1)


def limit_size(name: str, size: int) -> int:
    """The limit's size, creating it with `size` when missing (a limit a user set is kept)."""
    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(name).limit
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another run made it meanwhile
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=size))
            return client.read_global_concurrency_limit_by_name(name).limit


def share(name: str, procs: int, size: int | None = None) -> contextlib.AbstractContextManager:
    """Hold `procs` of the limit's shares (at most all of them) while the block runs; wait for them first."""
    total = limit_size(name, size or capacity())
    return concurrency(name, occupy=max(1, min(procs, total)), strict=True)


@contextlib.contextmanager
def patient_embedded_server():
    """A flow started from the command line without PREFECT_API_URL runs on Prefect's embedded server,
    which gives up after 20 s; on a machine whose cores a search or a training already fills (a second
    worker beside a first), starting it takes longer: 120 s, unless the user set their own."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as TIMEOUT
    from prefect.settings import temporary_settings

    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in os.environ:
        yield
        return
    with temporary_settings({TIMEOUT: 120}):
        yield
