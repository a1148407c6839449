"""The `hpo:` section: a search over params.yaml's own keys, with Optuna's samplers and pruners.

    from tasks.params import Hpo
    python -m flows.hpo                 # runs the search this section describes (tasks/hpo/)

The space names params.yaml keys by their dotted path (`train.optimizer.lr`).
A key params.yaml does not have, or a range its type refuses, fails before any
trial (tasks/hpo/space.py checks every bound and choice against the typed
params). Categorical choices may be whole sections (a dict), so a search can
pick the model family and its shape; `when` makes a dimension conditional on
another's choice (a CNN's channels only when `train.model` is cnn).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tasks.params.base import Section

SAMPLERS = ("tpe", "random", "cmaes", "qmc", "gp", "nsgaii")
PRUNERS = ("none", "median", "asha", "hyperband")


class Dimension(Section):
    """One searched key: a float or int range (linear or log), or a list of choices."""

    type: Literal["float", "int", "categorical"] = Field(description="float, int or categorical")
    low: float | None = Field(None, description="float/int: the smallest value")
    high: float | None = Field(None, description="float/int: the largest value")
    log: bool = Field(False, description="float/int: sample on a log scale")
    step: float | None = Field(None, description="float/int: a grid step (not with log)")
    choices: tuple[Any, ...] | None = Field(None, description="categorical: the values (a dict sets a section)")
    when: dict[str, Any] = Field({}, description="searched only when these other searched keys have these values")

    @model_validator(mode="after")
    def _fits_its_type(self) -> Dimension:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical dimension needs `choices`: a non-empty list")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} dimension needs `low` and `high`")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("`step` and `log` do not go together (Optuna refuses both)")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"an int dimension needs whole bounds (got {self.low}, {self.high})")
        return self


class Pruner(Section):
    """Stopping unpromising trials at an epoch boundary; the resource is the epoch."""

    kind: Literal["none", "median", "asha", "hyperband"] = Field("asha", description="none, median, asha "
                                                                 "(successive halving) or hyperband")
    min_epochs: int = Field(1, ge=1, description="epochs every trial runs before it can be pruned")
    reduction_factor: int = Field(3, ge=2, description="asha/hyperband: keep 1 in this many at each rung")


class Hpo(Section):
    """The search: its space, sampler, pruner, objective and budget. Trials run as DVC experiments up to
    evaluate; the objective is a validation metric from training's history, so the test split is never
    looked at while searching."""

    study: str = Field("digits-search", pattern=r"^[a-z0-9][a-z0-9-]*$", description="the Optuna study's "
                       "name, and the prefix of its trials' DVC experiment names")
    space: dict[str, Dimension] = Field(description="params.yaml keys (dotted) and how to search each")
    sampler: Literal[SAMPLERS] = Field("tpe", description="tpe, random, cmaes, qmc, gp or nsgaii")
    pruner: Pruner = Pruner()
    metric: Literal["val_loss", "val_accuracy", "val_f1", "val_mae", "val_rmse"] = Field(
        "val_loss", description="the trial's value: this validation figure at its best epoch")
    direction: Literal["minimize", "maximize"] | None = Field(None, description="null: from the metric's name")
    trials: int = Field(20, ge=1, description="finished trials the study should reach (complete or pruned); "
                        "a failed or cut-off trial is run again")
    parallel: int = Field(1, ge=1, description="trials at once, each on its share of the hardware")
    procs_per_trial: int = Field(1, ge=1, description="DeepSpeed processes (GPUs, or CPU ranks) per trial")
    seed: int = Field(0, description="the sampler's seed")
    timeout_s: float | None = Field(None, gt=0, description="stop asking for trials after this many seconds")
    storage: str | None = Field(None, description="null: Optuna's journal file under .dvc/tmp/hpo/ (no "
                                "server); or a database URL, e.g. postgresql+psycopg://user@host/db")
