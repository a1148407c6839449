"""The base of every params section, and `paths`, the one section every stage shares.

    from tasks.params import Section, Paths

A section is a frozen pydantic model: unknown keys and wrong types are refused
with the dotted key that caused them (tasks/params/loader.py reports them all).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

# `dvc exp show` names its own columns so; a dep at one of these paths breaks the table (KeyError)
EXP_SHOW_COLUMNS = frozenset({"Experiment", "rev", "typ", "Created", "parent", "State", "Executor"})


class Section(BaseModel):
    """A params section: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(Section):
    """Every file the pipeline reads or writes; dvc.yaml templates these."""

    sources: Path = Field(description="folder of local source files (an ingest dep)")
    parent: Path = Field(Path("parent_model"), description="parent: a warm start's parent, its weights and "
                         "preprocessing (train.init.from), fetched from the registry")
    raw: Path = Field(description="ingest: raw snapshot (Parquet)")
    raw_manifest: Path = Field(description="ingest: data version, row count, schema, profile, source")
    contract_report: Path = Field(description="ingest: data contract violations and drift (JSON)")
    clean: Path = Field(description="clean: cleaned table with a `split` column")
    transform: Path = Field(description="clean: fitted imputation/scaling for inference")
    rows: Path = Field(Path("data/clean/rows.parquet"), description="clean: each kept row's hash and split "
                       "(a child's leak check against its parent)")
    clean_report: Path = Field(description="clean: counts of what was dropped/filled")
    buffer: Path = Field(Path("data/buffer"), description="buffer: the replay buffer, a reservoir of training rows "
                         "of every data version so far, and its record (tasks/continual/buffer.py)")
    splits: Path = Field(description="augment: folder of train/val/test Parquet files")
    checkpoints: Path = Field(description="train: DeepSpeed checkpoints (persistent)")
    model: Path = Field(description="train: consolidated weights (safetensors)")
    train_history: Path = Field(description="train: per-epoch loss/accuracy (DVC plot)")
    train_live: Path = Field(description="train: DVCLive folder, per-epoch metrics and plots")
    metrics: Path = Field(description="evaluate: test metrics, the headline figures (DVC metrics)")
    per_class: Path = Field(description="evaluate: precision, recall, F1 and support, a row per class (DVC plot)")
    confusion: Path = Field(description="evaluate: actual/predicted pairs (DVC plot)")
    figures: Path = Field(description="evaluate: PNG figures for people and Prefect")
    continual: Path = Field(Path("reports/continual"), description="evaluate: the accuracy matrix over every "
                            "data version's test set, its metrics (DVC metrics) and the average accuracy's trend")
    lineage: Path = Field(description="register: the registered version's record")
    model_card: Path = Field(description="register: the version's model card (markdown)")

    @field_validator("*")
    @classmethod
    def _not_a_dvc_column(cls, v: Path) -> Path:
        if str(v).rstrip("/") in EXP_SHOW_COLUMNS:
            raise ValueError(f"'{v}' is a column `dvc exp show` names itself ({', '.join(sorted(EXP_SHOW_COLUMNS))}); "
                             f"a dep at that path breaks the experiments table: name it otherwise (e.g. data/{v})")
        return v
