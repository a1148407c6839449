"""Typed parameters: params.yaml loaded once, checked whole, frozen.

    python -m tasks.params            # check params.yaml, print every problem

Each section of params.yaml is one frozen pydantic model named after its
stage. Unknown keys and wrong types are refused, and every problem is reported
at once with the dotted key that caused it, before any stage does work.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.errors import InputError

DEFAULT_PARAMS = Path("params.yaml")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(Section):
    """Every file the pipeline reads or writes; dvc.yaml templates these."""

    sources: Path = Field(description="folder of local source files (an ingest dep)")
    raw: Path = Field(description="ingest: raw snapshot (Parquet)")
    raw_manifest: Path = Field(description="ingest: row count, schema, hash, source")
    clean: Path = Field(description="clean: cleaned table with a `split` column")
    transform: Path = Field(description="clean: fitted imputation/scaling for inference")
    clean_report: Path = Field(description="clean: counts of what was dropped/filled")
    splits: Path = Field(description="augment: folder of train/val/test Parquet files")
    checkpoints: Path = Field(description="train: DeepSpeed checkpoints (persistent)")
    model: Path = Field(description="train: consolidated weights (safetensors)")
    train_history: Path = Field(description="train: per-epoch loss/accuracy (DVC plot)")
    metrics: Path = Field(description="evaluate: test metrics (DVC metrics)")
    confusion: Path = Field(description="evaluate: actual/predicted pairs (DVC plot)")
    figures: Path = Field(description="evaluate: PNG figures for people and Prefect")
    lineage: Path = Field(description="register: the registered version's record")


class Ingest(Section):
    """Where the data comes from."""

    source: str = Field(
        description="a CSV or Parquet path, or pkg:<module>/<file> for a file shipped in a package"
    )
    format: Literal["auto", "csv", "parquet"] = Field("auto", description="auto: by suffix")
    header: bool = Field(True, description="CSV only: first row holds column names")
    label_column: str = Field("label", description="column with the class label")
    image_shape: tuple[int, int] | None = Field(
        None, description="(height, width) when the features are an image's pixels"
    )


class Split(Section):
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    seed: int = 42


class Clean(Section):
    """Cleaning; statistics are fitted on the training rows only."""

    missing: Literal["median", "mean", "drop"] = Field(
        "median", description="what to do with a missing feature value"
    )
    scaling: Literal["standard", "minmax", "none"] = "standard"
    per_column: bool = Field(
        True, description="one scale per column (tables) or one for all (pixels)"
    )
    split: Split = Split()


class Augment(Section):
    """Augmentation of the training split only; reproducible per seed."""

    seed: int = 0
    copies: int = Field(1, ge=0, description="augmented copies of each training row")
    rotation_degrees: float = Field(10.0, ge=0, le=180)
    shift_pixels: float = Field(1.0, ge=0)
    noise_std: float = Field(0.05, ge=0)


class MLP(Section):
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = Field(0.1, ge=0, lt=1)


class CNN(Section):
    channels: tuple[int, ...] = (16, 32)
    dropout: float = Field(0.1, ge=0, lt=1)


class Train(Section):
    """Training with DeepSpeed; the DeepSpeed config is derived from these."""

    model: Literal["mlp", "cnn"] = "cnn"
    mlp: MLP = MLP()
    cnn: CNN = CNN()
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1, description="per process (DeepSpeed micro batch)")
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    zero_stage: int = Field(1, ge=0, le=3)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    num_procs: int = Field(2, ge=1, description="CPU processes when there is no GPU")
    master_port: int = Field(29500, ge=1024, le=65535)
    seed: int = 0


class Evaluate(Section):
    batch_size: int = Field(512, ge=1)


class Register(Section):
    """Registration with GTO and the rule that moves the production stage."""

    name: str = Field("digits", pattern=r"^[a-z0-9][a-z0-9-]*$")
    metric: str = Field("accuracy", description="key in the metrics file")
    higher_is_better: bool = True
    min_improvement: float = Field(0.0, ge=0)
    stage: str = Field("prod", pattern=r"^[a-z0-9][a-z0-9-]*$")


class Params(Section):
    paths: Paths
    ingest: Ingest
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

    @model_validator(mode="after")
    def _cnn_needs_image(self) -> Params:
        if self.train.model == "cnn" and self.ingest.image_shape is None:
            raise ValueError("train.model is 'cnn' but ingest.image_shape is not set")
        return self


def _describe(err: dict) -> str:
    key = ".".join(str(part) for part in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if err["type"] == "missing":
        return f"{key}: missing key"
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
