"""Typed parameters: params.yaml loaded once, checked whole, frozen.

    python -m tasks.params            # check params.yaml, print every problem

    from tasks.params import load_params, Clean
    p = load_params()                 # p.clean is a Clean, p.train a Train, ...
    Clean(per_column=True)            # a section by hand (tests): every other key at params.yaml's value

Each section of params.yaml is one frozen pydantic model named after its
stage, with a description per key: data.py (ingest, contract, clean,
augment), training.py (train and its models, evaluate), register.py, hpo.py (the
search), continual.py (learning from each new data version), and
base.py (the shared `paths`). loader.py holds the one loader. Every default
is the value params.yaml ships, and params.yaml writes every key, so DVC sees
each one a stage reads (tests/test_params.py checks both).
"""

from tasks.params.base import Paths, Section
from tasks.params.continual import Buffer, Continual, Ewc, Lwf
from tasks.params.data import (
    Augment,
    Clean,
    ColumnRule,
    ColumnType,
    Contract,
    Drift,
    ImageAug,
    Ingest,
    MissingStrategy,
    Split,
    Stream,
    TableAug,
    TextAug,
    TextNorm,
)
from tasks.params.hpo import Dimension, Hpo, Pruner
from tasks.params.loader import DEFAULT_PARAMS, Params, load_params, main
from tasks.params.register import Card, Register
from tasks.params.training import (
    CNN,
    MLP,
    RNN,
    Activation,
    Checkpointing,
    EarlyStopping,
    Evaluate,
    Init,
    Norm,
    Optimizer,
    Schedule,
    Train,
    Transformer,
    WarmStart,
)

__all__ = [
    "Activation", "Augment", "Buffer", "CNN", "Card", "Checkpointing", "Clean", "ColumnRule", "ColumnType",
    "Continual", "Contract", "DEFAULT_PARAMS", "Dimension", "Drift", "EarlyStopping", "Evaluate", "Ewc", "Hpo",
    "ImageAug", "Ingest", "Init", "Lwf", "MLP", "MissingStrategy", "Norm", "Optimizer", "Params", "Paths", "Pruner",
    "RNN", "Register", "Schedule", "Section", "Split", "Stream", "TableAug", "TextAug", "TextNorm", "Train",
    "Transformer", "WarmStart", "load_params", "main",
]
