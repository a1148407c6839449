"""The data stages' sections: ingest, its data contract, clean, augment.

    from tasks.params import Ingest, Contract, Clean, Augment

Each default here is the value params.yaml ships (tests/test_params.py checks
that they agree), so a key left out of a params file means what the shipped
file says.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, StrictFloat, StrictInt, model_validator

from tasks.params.base import Section


class Stream(Section):
    """A continual-learning stream made of one source by params alone: each experience is a new data version
    of it (tasks/data/stream.py)."""

    kind: Literal["none", "class_incremental", "domain_incremental"] = Field(
        "none", description="none: the source as it is; class_incremental: experience j holds the j-th of "
        "`experiences` equal groups of the sorted labels; domain_incremental: experience j holds about 1/experiences "
        "of the rows (by a hash of each row), rotated by j * rotation_degrees and with noise of std j * noise_std")
    experiences: int = Field(5, ge=2, description="how many experiences the stream has in all")
    upto: int = Field(0, ge=0, description="the data version holds experiences 0..upto, each version every row of "
                      "the one before unchanged; below ingest.stream.experiences")
    rotation_degrees: float = Field(15.0, allow_inf_nan=False, description="domain_incremental: experience j's "
                                    "images are rotated by j times this (needs ingest.image_shape unless 0)")
    noise_std: float = Field(1.0, ge=0, allow_inf_nan=False, description="domain_incremental: experience j's "
                             "numeric features get Gaussian noise of std j times this, in the source's units")
    seed: int = Field(0, description="domain_incremental: salt of the row hash that picks each row's experience, "
                      "and of its noise")

    @model_validator(mode="after")
    def _upto_below_experiences(self) -> Stream:
        if self.upto >= self.experiences:
            raise ValueError(f"ingest.stream.upto {self.upto} must be below ingest.stream.experiences "
                             f"({self.experiences}): the experiences are 0..{self.experiences - 1}")
        return self


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
    labels: tuple[StrictInt | StrictFloat | str, ...] | None = Field(
        None, min_length=1, description="keep only the rows whose label is one of these, compared as the label "
        "column's values: numbers as numbers ([0, 1, 2] for the digits), names as text; null: every label")
    per_class: int | None = Field(
        None, ge=1, description="keep at most this many rows of each class (distinct, labelled ones), a sample "
        "chosen by a hash of each row's content and ingest.sample_seed, not by position; null: every row")
    sample_seed: int = Field(0, description="salt of ingest.per_class's row hash: another seed, another sample")
    per_class_in: Literal["all", "train"] = Field(
        "all", description="all: the snapshot keeps ingest.per_class rows of each class; train: per_class of each "
        "class's training rows (the split clean.split's hashes give them), every validation and test row kept, "
        "so a few-label run is measured on the whole test split (nothing without per_class)")
    stream: Stream = Stream()

    @model_validator(mode="after")
    def _classes_only(self) -> Ingest:
        keys = [f"ingest.{k}" for k in ("labels", "per_class") if getattr(self, k) is not None]
        if self.task == "regression" and keys:
            raise ValueError(f"{' and '.join(keys)} select{'s' * (len(keys) == 1)} rows by class, and ingest.task "
                             f"is regression (a numeric target has no classes); set {'them' if keys[1:] else 'it'} "
                             f"to null")
        return self

    @model_validator(mode="after")
    def _stream_fits(self) -> Ingest:
        s, problems = self.stream, []
        if s.kind == "class_incremental" and self.task == "regression":
            problems.append("ingest.stream.kind class_incremental cuts the classes into experiences, and ingest.task "
                            "is regression (a numeric target has no classes); use domain_incremental or none")
        if s.kind == "domain_incremental" and s.rotation_degrees != 0 and self.image_shape is None:
            problems.append(f"ingest.stream.rotation_degrees {s.rotation_degrees} rotates images, and "
                            f"ingest.image_shape is not set; set it to the images' [height, width], or "
                            f"ingest.stream.rotation_degrees to 0 for noise alone")
        if problems:
            raise ValueError("; ".join(problems))
        return self


ColumnType = Literal["number", "category", "text"]


class ColumnRule(Section):
    """What one column of the source must look like."""

    type: ColumnType | None = Field(None, description="number, category or text; None: any of them")
    required: bool = True
    min: float | None = None
    max: float | None = None
    allowed: tuple[str | int | float, ...] | None = Field(None, description="the only values allowed")
    max_null_ratio: float | None = Field(None, ge=0, le=1, description="overrides contract.max_null_ratio")
    allow_non_finite: bool | None = Field(None, description="overrides contract.allow_non_finite")


class Drift(Section):
    """Drift of a new data version against the previous one."""

    gate: bool = Field(False, description="true: drift beyond the limits stops the run like a violation")
    max_label_shift: float = Field(0.1, ge=0, le=1, description="total variation distance of the labels")
    max_mean_shift: float = Field(0.5, ge=0, description="|mean change| of a numeric column, in previous stds")


class Contract(Section):
    """The data contract, checked at ingest and at every stage boundary."""

    columns: dict[str, ColumnRule] = Field({}, description="declared columns; the label column may be one")
    only_declared: bool = Field(False, description="refuse columns that are not declared")
    min_rows: int = Field(500, ge=1, description="data rows the source must have at least")
    max_null_ratio: float = Field(0.1, ge=0, le=1, description="for every column without its own limit")
    allow_non_finite: bool = Field(
        False, description="false: inf or -inf in a feature column is a violation; true: clean treats them as "
        "missing (filled by clean.missing, counted in its report). A label is never allowed to be non-finite")
    min_class_rows: int = Field(50, ge=1, description="rows every class must have")
    max_class_ratio: float | None = Field(3.0, ge=1, description="largest class / smallest class, at most; "
                                          "None: no limit")
    examples: int = Field(5, ge=1, le=100, description="example rows shown per violation")
    drift: Drift = Drift()


MissingStrategy = Literal["drop", "mean", "median", "mode", "constant"]


class Split(Section):
    """Hash-based assignment: a row's split depends on its key only, so it never moves."""

    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="share of the rows in the validation split")
    test_fraction: float = Field(0.15, gt=0, lt=0.5, description="share of the rows in the test split")
    seed: int = Field(42, description="salt of the row hash")
    key_columns: tuple[str, ...] = Field((), description="columns that identify a row; () = all columns")


class TextNorm(Section):
    """How clean normalises ingest.text_column (evaluation and prediction apply the same)."""

    lowercase: bool = Field(True, description="lower case")
    strip_accents: bool = Field(True, description="Unicode NFKD, then the combining marks dropped")
    collapse_whitespace: bool = Field(True, description="runs of whitespace become one space; ends trimmed")


class Clean(Section):
    """Cleaning; every statistic is fitted on the training rows only."""

    missing: MissingStrategy = Field("median", description="numeric columns: what fills a missing value")
    missing_category: Literal["drop", "mode", "constant"] = Field(
        "constant", description="categorical columns: constant makes 'missing' a category of its own")
    missing_columns: dict[str, MissingStrategy] = Field({}, description="per-column strategy, by name")
    fill_value: float = Field(0.0, description="numeric fill for the constant strategy")
    fill_category: str = Field("(missing)", description="the category a missing value becomes (constant)")
    outliers: tuple[float, float] | None = Field(
        None, description="(low, high) training quantiles numeric values are clipped to, e.g. [0.01, 0.99]")
    scaling: Literal["standard", "minmax", "none"] = Field(
        "standard", description="standard (mean 0, std 1) or minmax (0 to 1), by the training rows; or none")
    per_column: bool = Field(
        False, description="false: one scale for all numeric columns, which keeps an image's pixels in "
        "proportion; true: one per column, for a table whose columns have units of their own")
    categorical: Literal["onehot", "ordinal"] = Field(
        "onehot", description="unseen categories: all zeros (onehot) or -1 (ordinal)")
    max_categories: int = Field(100, ge=2, description="more distinct values than this: declare a text column")
    classes: tuple[int | str, ...] | None = Field(None, description="the output layer's classes, in this order "
                                                  "(the label column's values); null: those of the training "
                                                  "split. A continual stream whose first data versions lack "
                                                  "some classes names them all, so every version has one head")
    text: TextNorm = TextNorm()
    split: Split = Split()
    batch_rows: int = Field(65_536, ge=1024, description="rows read, transformed and written at a time: "
                            "memory follows it, not the table; the clean table's record batches (its bytes) too")

    @model_validator(mode="after")
    def _quantiles(self) -> Clean:
        if self.outliers and not 0 <= self.outliers[0] < self.outliers[1] <= 1:
            raise ValueError(f"outliers: expected 0 <= low < high <= 1, got {list(self.outliers)}")
        named = [str(c) for c in self.classes or ()]
        if len(set(named)) != len(named):
            raise ValueError(f"classes: a class is named twice in {list(self.classes)}")
        return self


class ImageAug(Section):
    """Each transform is applied to a row with its probability."""

    rotation_degrees: float = Field(10.0, ge=0, le=180, description="a rotation by up to this angle, "
                                    "either way")
    p_rotate: float = Field(1.0, ge=0, le=1, description="probability that a row is rotated")
    shift_pixels: float = Field(0.7, ge=0, description="a shift by up to this many pixels on each axis")
    p_shift: float = Field(1.0, ge=0, le=1, description="probability that a row is shifted")
    p_hflip: float = Field(0.0, ge=0, le=1, description="probability of a left-right mirror; leave 0 where "
                           "mirror images mean something else")
    p_vflip: float = Field(0.0, ge=0, le=1, description="probability of an upside-down mirror")
    noise_std: float = Field(0.05, ge=0, description="Gaussian noise on the pixels (in scaled units)")
    p_noise: float = Field(1.0, ge=0, le=1, description="probability that a row gets the noise")


class TableAug(Section):
    """Rows that are not images: Gaussian noise and mixup on their features."""

    noise_std: float = Field(0.05, ge=0, description="Gaussian noise on the scaled numeric features")
    mixup_alpha: float = Field(0.0, ge=0, description="Beta(a, a) mixup of two rows of one class; 0 disables")


class TextAug(Section):
    """The tokenizer of ingest.text_column, and what the model sees of a text."""

    vocab_size: int = Field(2000, ge=16, description="BPE vocabulary, trained on the training split")
    min_frequency: int = Field(2, ge=1, description="a BPE merge needs a pair that occurs this often in the "
                               "training split")
    token_dropout: float = Field(0.1, ge=0, lt=1, description="augmented copies drop each token with this p")
    representation: Literal["bag", "sequence"] = Field("bag", description="bag: log(1 + count) per token, for "
                                                       "the MLP; sequence: token ids in order, for rnn/transformer")
    max_tokens: int = Field(64, ge=1, description="sequence: ids per text, cut or padded with 0")


class Augment(Section):
    """Augmentation of the training split only; reproducible per seed."""

    seed: int = Field(0, description="the same seed gives byte-identical split files")
    copies: int = Field(1, ge=0, description="augmented copies of each training row")
    image: ImageAug = ImageAug()
    table: TableAug = TableAug()
    text: TextAug = TextAug()
