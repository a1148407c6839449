"""Typed parameters: params.yaml loaded once, checked whole, frozen.

    python -m tasks.params            # check params.yaml, print every problem

Each section of params.yaml is one frozen pydantic model named after its
stage. Unknown keys and wrong types are refused, and every problem is reported
at once with the dotted key that caused it, before any stage does work.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

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
    raw_manifest: Path = Field(description="ingest: data version, row count, schema, profile, source")
    contract_report: Path = Field(description="ingest: data contract violations and drift (JSON)")
    clean: Path = Field(description="clean: cleaned table with a `split` column")
    transform: Path = Field(description="clean: fitted imputation/scaling for inference")
    clean_report: Path = Field(description="clean: counts of what was dropped/filled")
    splits: Path = Field(description="augment: folder of train/val/test Parquet files")
    checkpoints: Path = Field(description="train: DeepSpeed checkpoints (persistent)")
    model: Path = Field(description="train: consolidated weights (safetensors)")
    train_history: Path = Field(description="train: per-epoch loss/accuracy (DVC plot)")
    train_live: Path = Field(description="train: DVCLive folder, per-epoch metrics and plots")
    metrics: Path = Field(description="evaluate: test metrics (DVC metrics)")
    confusion: Path = Field(description="evaluate: actual/predicted pairs (DVC plot)")
    figures: Path = Field(description="evaluate: PNG figures for people and Prefect")
    lineage: Path = Field(description="register: the registered version's record")
    model_card: Path = Field(description="register: the version's model card (markdown)")


class Ingest(Section):
    """Where the data comes from: a file, a folder, or a remote URL."""

    source: str = Field(
        description="a local file or folder (CSV, Parquet, JSON lines, or image folders with one subfolder "
        "per class), an fsspec URL (http(s)://, s3:// with the s3 extra), or pkg:<module>/<file>"
    )
    format: Literal["auto", "csv", "parquet", "jsonl", "images"] = Field("auto", description="auto: by suffix")
    header: bool = Field(True, description="CSV only: first row holds column names")
    delimiter: str = Field(",", min_length=1, max_length=1, description="CSV only")
    encoding: str = Field("utf8", description="CSV only: text encoding of the file, e.g. latin-1")
    label_column: str = Field("label", description="column with the class label, or the target value")
    task: Literal["classification", "regression"] = Field("classification", description="classes, or a "
                                                           "numeric target (then train.loss: mse or mae)")
    text_column: str | None = Field(None, description="a free-text column: normalised by clean, "
                                    "tokenized by augment")
    image_shape: tuple[int, int] | None = Field(
        None, description="(height, width) when the features are an image's pixels; required for image folders"
    )
    retries: int = Field(3, ge=0, le=20, description="remote sources: retries on transient errors")
    timeout_s: float = Field(60.0, gt=0, description="remote sources: seconds per attempt")
    storage_options: dict[str, Any] = Field(
        {}, description="remote sources: fsspec options, e.g. {client_kwargs: {endpoint_url: ...}} for s3; "
        "credentials come from the environment"
    )


ColumnType = Literal["number", "category", "text"]


class ColumnRule(Section):
    """What one column of the source must look like."""

    type: ColumnType | None = Field(None, description="number, category or text; None: any of them")
    required: bool = True
    min: float | None = None
    max: float | None = None
    allowed: tuple[str | int | float, ...] | None = Field(None, description="the only values allowed")
    max_null_ratio: float | None = Field(None, ge=0, le=1, description="overrides contract.max_null_ratio")


class Drift(Section):
    """Drift of a new data version against the previous one."""

    gate: bool = Field(False, description="true: drift beyond the limits stops the run like a violation")
    max_label_shift: float = Field(0.1, ge=0, le=1, description="total variation distance of the labels")
    max_mean_shift: float = Field(0.5, ge=0, description="|mean change| of a numeric column, in previous stds")


class Contract(Section):
    """The data contract, checked at ingest and at every stage boundary."""

    columns: dict[str, ColumnRule] = Field({}, description="declared columns; the label column may be one")
    only_declared: bool = Field(False, description="refuse columns that are not declared")
    min_rows: int = Field(1, ge=1)
    max_null_ratio: float = Field(0.5, ge=0, le=1, description="for every column without its own limit")
    min_class_rows: int = Field(1, ge=1, description="rows every class must have")
    max_class_ratio: float | None = Field(None, ge=1, description="largest class / smallest class, at most")
    examples: int = Field(5, ge=1, le=100, description="example rows shown per violation")
    drift: Drift = Drift()


MissingStrategy = Literal["drop", "mean", "median", "mode", "constant"]


class Split(Section):
    """Hash-based assignment: a row's split depends on its key only, so it never moves."""

    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    seed: int = Field(42, description="salt of the row hash")
    key_columns: tuple[str, ...] = Field((), description="columns that identify a row; () = all columns")


class TextNorm(Section):
    lowercase: bool = True
    strip_accents: bool = True
    collapse_whitespace: bool = True


class Clean(Section):
    """Cleaning; every statistic is fitted on the training rows only."""

    missing: MissingStrategy = Field("median", description="numeric columns: what fills a missing value")
    missing_category: Literal["drop", "mode", "constant"] = Field(
        "constant", description="categorical columns: constant makes 'missing' a category of its own")
    missing_columns: dict[str, MissingStrategy] = Field({}, description="per-column strategy, by name")
    fill_value: float = Field(0.0, description="numeric fill for the constant strategy")
    fill_category: str = "(missing)"
    outliers: tuple[float, float] | None = Field(
        None, description="(low, high) training quantiles numeric values are clipped to, e.g. [0.01, 0.99]")
    scaling: Literal["standard", "minmax", "none"] = "standard"
    per_column: bool = Field(
        True, description="one scale per column (tables) or one for all numeric columns (pixels)"
    )
    categorical: Literal["onehot", "ordinal"] = Field(
        "onehot", description="unseen categories: all zeros (onehot) or -1 (ordinal)")
    max_categories: int = Field(100, ge=2, description="more distinct values than this: declare a text column")
    text: TextNorm = TextNorm()
    split: Split = Split()
    batch_rows: int = Field(65_536, ge=1024, description="rows per batch; tables larger than memory stream")

    @model_validator(mode="after")
    def _quantiles(self) -> Clean:
        if self.outliers and not 0 <= self.outliers[0] < self.outliers[1] <= 1:
            raise ValueError(f"outliers: expected 0 <= low < high <= 1, got {list(self.outliers)}")
        return self


class ImageAug(Section):
    """Each transform is applied to a row with its probability."""

    rotation_degrees: float = Field(10.0, ge=0, le=180)
    p_rotate: float = Field(1.0, ge=0, le=1)
    shift_pixels: float = Field(1.0, ge=0)
    p_shift: float = Field(1.0, ge=0, le=1)
    p_hflip: float = Field(0.0, ge=0, le=1, description="leave 0 where mirror images mean something else")
    p_vflip: float = Field(0.0, ge=0, le=1)
    noise_std: float = Field(0.05, ge=0)
    p_noise: float = Field(1.0, ge=0, le=1)


class TableAug(Section):
    noise_std: float = Field(0.05, ge=0, description="Gaussian noise on the scaled numeric features")
    mixup_alpha: float = Field(0.0, ge=0, description="Beta(a, a) mixup of two rows of one class; 0 disables")


class TextAug(Section):
    vocab_size: int = Field(2000, ge=16, description="BPE vocabulary, trained on the training split")
    min_frequency: int = Field(2, ge=1)
    token_dropout: float = Field(0.1, ge=0, lt=1, description="augmented copies drop each token with this p")
    representation: Literal["bag", "sequence"] = Field("bag", description="bag: log(1 + count) per token, for "
                                                       "the MLP; sequence: token ids in order, for rnn/transformer")
    max_tokens: int = Field(64, ge=1, description="sequence: ids per text, cut or padded with 0")


class Augment(Section):
    """Augmentation of the training split only; reproducible per seed."""

    seed: int = 0
    copies: int = Field(1, ge=0, description="augmented copies of each training row")
    image: ImageAug = ImageAug()
    table: TableAug = TableAug()
    text: TextAug = TextAug()


Activation = Literal["relu", "gelu", "tanh", "sigmoid", "silu", "leaky_relu", "elu"]
Norm = Literal["batch", "layer", "none"]
Init = Literal["he", "xavier", "default"]


class MLP(Section):
    """Linear -> norm -> activation -> dropout blocks (models/mlp.py)."""

    hidden: tuple[int, ...] = (128, 64)
    dropout: float = Field(0.1, ge=0, lt=1)
    activation: Activation = "relu"
    norm: Norm = "batch"
    init: Init = Field("he", description="he suits ReLU-like activations, xavier tanh and sigmoid")


class CNN(Section):
    """Conv3x3 -> norm -> activation -> max-pool blocks (models/cnn.py); needs ingest.image_shape."""

    channels: tuple[int, ...] = (16, 32)
    dropout: float = Field(0.1, ge=0, lt=1)
    activation: Activation = "relu"
    norm: Norm = "batch"
    init: Init = "he"


class RNN(Section):
    """LSTM or GRU over a row read as a sequence (models/rnn.py)."""

    cell: Literal["lstm", "gru"] = "lstm"
    hidden: int = Field(64, ge=1)
    layers: int = Field(1, ge=1)
    bidirectional: bool = False
    dropout: float = Field(0.1, ge=0, lt=1)
    norm: Norm = "layer"
    init: Init = "xavier"
    seq_len: int | None = Field(None, ge=1, description="steps per row; default: the image's height, or one "
                                "step per token for text sequences")


class Transformer(Section):
    """A pre-norm Transformer encoder over a row read as a sequence (models/transformer.py)."""

    d_model: int = Field(64, ge=1)
    heads: int = Field(4, ge=1)
    layers: int = Field(2, ge=1)
    ff_mult: int = Field(4, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    activation: Literal["gelu", "relu"] = "gelu"
    init: Init = "xavier"
    seq_len: int | None = Field(None, ge=1, description="as rnn.seq_len")


class Optimizer(Section):
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(3e-3, gt=0, description="peak learning rate (after warmup)")
    weight_decay: float = Field(1e-4, ge=0, description="L2: decoupled weight decay for AdamW, an L2 term "
                                "in the gradient for SGD")
    l1: float = Field(0.0, ge=0, description="L1 penalty on the weights (not biases or norms), added to the loss")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW only")


class Schedule(Section):
    """DeepSpeed's learning-rate schedulers: linear warmup, then constant, linear decay or cosine decay."""

    name: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0, description="optimizer steps of linear warmup from 0")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine: the final lr as a fraction of the peak")


class EarlyStopping(Section):
    metric: Literal["val_loss", "val_accuracy", "val_f1", "val_mae", "val_rmse"] = Field(
        "val_loss", description="val_loss, or val_accuracy / val_f1 (classification), val_mae / val_rmse "
        "(regression)")
    patience: int = Field(0, ge=0, description="epochs without improvement before stopping; 0 never stops")
    min_delta: float = Field(0.0, ge=0, description="smallest change that counts as an improvement")


class Checkpointing(Section):
    every_steps: int = Field(0, ge=0, description="also checkpoint every N optimizer steps within an epoch; "
                             "0: at the end of each epoch only")
    keep_last: int = Field(2, ge=1, description="complete checkpoints kept besides the best one")
    reshard: bool = Field(False, description="an unfinished run written by another number of processes "
                          "continues with this many from where it stopped, instead of stopping with an error "
                          "(ZeRO stages 0-2; not bit-exact: the global batch follows the count; tasks/reshard.py)")


class Train(Section):
    """Training with DeepSpeed; the DeepSpeed config is derived from these."""

    model: Literal["mlp", "cnn", "rnn", "transformer"] = "cnn"
    mlp: MLP = MLP()
    cnn: CNN = CNN()
    rnn: RNN = RNN()
    transformer: Transformer = Transformer()
    loss: Literal["cross_entropy", "mse", "mae"] = Field("cross_entropy", description="mse and mae train a "
                                                         "regression on a numeric label (ingest.task: regression)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross_entropy only")
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1, description="per process (DeepSpeed micro batch)")
    grad_accum: int = Field(1, ge=1)
    optimizer: Optimizer = Optimizer()
    schedule: Schedule = Schedule()
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    zero_stage: int = Field(0, ge=0, le=3, description="0: plain data parallel, every rank holding the whole "
                            "optimizer state; 1, 2, 3 also shard the optimizer state, the gradients, the weights")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    early_stopping: EarlyStopping = EarlyStopping()
    checkpoint: Checkpointing = Checkpointing()
    deepspeed_config: Path | None = Field(None, description="a DeepSpeed JSON file whose keys override the "
                                          "config derived from these params")
    deterministic: bool = Field(False, description="deterministic kernels only (slower on a GPU)")
    num_procs: int = Field(2, ge=1, description="CPU processes when there is no GPU (per node with a hostfile)")
    master_port: int = Field(29500, ge=1024, le=65535)
    hostfile: Path | None = Field(None, description="several machines: DeepSpeed's hostfile ('host slots=N' per "
                                  "line); with NODE_RANK set, each node starts its own launcher (no ssh)")
    master_addr: str = Field("127.0.0.1", description="address of node 0 when several machines train together")
    seed: int = 0


class Evaluate(Section):
    batch_size: int = Field(512, ge=1)


class Card(Section):
    """What the model card says beyond the numbers."""

    intended_use: str = Field("", description="what the model is for, in a sentence or two")
    limitations: tuple[str, ...] = Field((), description="where it should not be trusted; the card adds "
                                         "the weakest classes and the input schema itself")


class Register(Section):
    """Registration with GTO and the promotion policy, checked before `stage` moves (by register and by
    `python -m tasks.registry promote`)."""

    name: str = Field("digits", pattern=r"^[a-z0-9][a-z0-9-]*$")
    metric: str = Field("accuracy", description="key in the metrics file that decides promotion")
    higher_is_better: bool = True
    min_improvement: float = Field(0.0, ge=0, description="over the version in `stage`, in the metric's units")
    require_contract: bool = Field(True, description="the data version must have passed the data contract")
    require_reproducible: bool = Field(False, description="code committed, and the evaluation rerun on the "
                                       "registered weights gives the recorded metric back")
    stage: str = Field("prod", pattern=r"^[a-z0-9][a-z0-9-]*$")
    card: Card = Card()


class Params(Section):
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

    @model_validator(mode="after")
    def _cnn_needs_image(self) -> Params:
        if self.train.model == "cnn" and self.ingest.image_shape is None:
            raise ValueError("train.model is 'cnn' but ingest.image_shape is not set")
        regression = self.ingest.task == "regression"
        if regression != (self.train.loss in ("mse", "mae")):
            raise ValueError(f"train.loss {self.train.loss!r} does not fit ingest.task {self.ingest.task!r}: "
                             f"classification trains with cross_entropy, regression with mse or mae")
        metric = self.train.early_stopping.metric
        if metric in (("val_accuracy", "val_f1") if regression else ("val_mae", "val_rmse")):
            raise ValueError(f"train.early_stopping.metric {metric!r} is a "
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
