"""Per-epoch metrics through DVCLive (rank 0): `dvc plots show` draws them, `dvc exp show` lists the latest.

    live = Live(live_dir, state.history)   # rewrites the log from the checkpoint's history
    live.log(entry)                        # one epoch's figures
"""

from __future__ import annotations

from pathlib import Path


class Live:
    """The log is rewritten from the checkpoint's history on every start, so after a resume it holds exactly
    the epochs the model has seen."""

    def __init__(self, live_dir: Path, history: list[dict]):
        from dvclive import Live as DVCLive

        self.live = DVCLive(str(live_dir), resume=False, save_dvc_exp=False, dvcyaml=None, report=None)
        for entry in history:
            self.log(entry)

    def log(self, entry: dict) -> None:
        for k, v in entry.items():
            if k != "epoch":
                self.live.log_metric(k, v)
        self.live.next_step()
