"""The one loader: params.yaml read once, checked whole, into the frozen sections.

    python -m tasks.params            # check params.yaml, print every problem (or the params, resolved)
    python -m tasks.params other.yaml

    from tasks.params import load_params
    p = load_params()                 # Params: p.clean, p.train.optimizer.lr, ...

Unknown keys and wrong types are refused, and every problem is reported at
once with the dotted key that caused it, before any stage does work. The
sections are defined by stage in data.py, training.py and register.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from pydantic import Field, ValidationError, model_validator

from tasks.errors import InputError
from tasks.params.base import Paths, Section
from tasks.params.continual import Continual
from tasks.params.data import Augment, Clean, Contract, Ingest
from tasks.params.hpo import Hpo
from tasks.params.register import Register
from tasks.params.training import Evaluate, Train

DEFAULT_PARAMS = Path("params.yaml")


class Params(Section):
    """The whole of params.yaml: one section per stage, and the paths they share."""

    paths: Paths
    ingest: Ingest
    contract: Contract
    clean: Clean
    augment: Augment
    train: Train
    evaluate: Evaluate
    # `register` would shadow BaseModel's (ABC) `register` and silently default
    # to it when missing, so the field is stored under another name.
    register_: Register = Field(alias="register")

    @property
    def register(self) -> Register:
        return self.register_

    hpo: Hpo
    continual: Continual = Continual()

    @model_validator(mode="after")
    def _cnn_needs_image(self) -> Params:
        if self.train.model == "cnn" and self.ingest.image_shape is None:
            raise ValueError("train.model is 'cnn' but ingest.image_shape is not set")
        regression = self.ingest.task == "regression"
        if regression != (self.train.loss in ("mse", "mae")):
            raise ValueError(f"train.loss {self.train.loss!r} does not fit ingest.task {self.ingest.task!r}: "
                             f"classification trains with cross_entropy, regression with mse or mae")
        for key, metric in (("train.early_stopping.metric", self.train.early_stopping.metric),
                            ("hpo.metric", self.hpo.metric)):
            if metric in (("val_accuracy", "val_f1") if regression else ("val_mae", "val_rmse")):
                raise ValueError(f"{key} {metric!r} is a "
                                 f"{'classification' if regression else 'regression'} metric; this "
                                 f"{self.ingest.task} has val_loss and " +
                                 ("val_mae, val_rmse" if regression else "val_accuracy, val_f1"))
        if self.ingest.format == "images" and self.ingest.image_shape is None:
            raise ValueError("ingest.format is 'images': set ingest.image_shape to the images' [height, width]")
        return self


def _describe(err: dict) -> str:
    key = ".".join(str(part) for part in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if err["type"] == "missing":
        return f"{key}: missing key"
    if err["type"] == "value_error" and isinstance(err.get("input"), dict):  # a section's own check: its message
        return f"{key}: {err['msg'].removeprefix('Value error, ')}"  # names the keys; the whole section would not
    return f"{key}: {err['msg']} (got {err.get('input')!r})"


def load_params(path: Path | str = DEFAULT_PARAMS) -> Params:
    """Read and check params.yaml; raise InputError listing every problem."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        problems = "\n".join(f"  - {_describe(err)}" for err in e.errors())
        raise InputError(f"{path}: {e.error_count()} problem(s):\n{problems}") from None


def main() -> None:
    from tasks.errors import run_main

    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PARAMS
    params = run_main(lambda: load_params(path))
    print(yaml.safe_dump(params.model_dump(mode="json", by_alias=True), sort_keys=False), end="")
    print(f"# {path}: ok", file=sys.stderr)


if __name__ == "__main__":
    main()
