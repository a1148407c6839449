"""The train stage's sections (its models, optimizer, schedule, early stopping, checkpoints, warm start) and
evaluate's.

    from tasks.params import Train, Evaluate

The DeepSpeed config is derived from `Train` (tasks/training/engine.py). Each
default here is the value params.yaml ships (tests/test_params.py checks it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from tasks.params.base import Section

Activation = Literal["relu", "gelu", "tanh", "sigmoid", "silu", "leaky_relu", "elu"]
Norm = Literal["batch", "layer", "none"]
Init = Literal["he", "xavier", "default"]


class MLP(Section):
    """Linear -> norm -> activation -> dropout blocks (models/mlp.py)."""

    hidden: tuple[int, ...] = Field((128, 64), description="width of each hidden block, first to last")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout probability, in training only")
    activation: Activation = Field("relu", description="relu, gelu, tanh, sigmoid, silu, leaky_relu or elu")
    norm: Norm = Field("batch", description="batch, layer or none, after each linear layer")
    init: Init = Field("he", description="he suits ReLU-like activations, xavier tanh and sigmoid")


class CNN(Section):
    """Conv3x3 -> norm -> activation -> max-pool blocks (models/cnn.py); needs ingest.image_shape."""

    channels: tuple[int, ...] = Field((16, 32), description="output channels of each block; each block halves "
                                      "the image")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout probability, in training only")
    activation: Activation = Field("relu", description="as mlp.activation")
    norm: Norm = Field("batch", description="batch, layer or none, after each convolution")
    init: Init = Field("he", description="as mlp.init")


class RNN(Section):
    """LSTM or GRU over a row read as a sequence (models/rnn.py)."""

    cell: Literal["lstm", "gru"] = Field("lstm", description="lstm or gru")
    hidden: int = Field(64, ge=1, description="state size of each direction (and of the projected input steps)")
    layers: int = Field(1, ge=1, description="stacked recurrent layers")
    bidirectional: bool = Field(False, description="also read the sequence backwards")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout probability, in training only")
    norm: Norm = Field("layer", description="batch, layer or none, on the pooled state")
    init: Init = Field("xavier", description="as mlp.init")
    seq_len: int | None = Field(None, ge=1, description="steps per row; default: the image's height, or one "
                                "step per token for text sequences")


class Transformer(Section):
    """A pre-norm Transformer encoder over a row read as a sequence (models/transformer.py)."""

    d_model: int = Field(64, ge=1, description="width of each step's vector; a multiple of heads")
    heads: int = Field(4, ge=1, description="attention heads")
    layers: int = Field(2, ge=1, description="encoder layers")
    ff_mult: int = Field(4, ge=1, description="feed-forward width, as a multiple of d_model")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout probability, in training only")
    activation: Literal["gelu", "relu"] = Field("gelu", description="of the feed-forward block: gelu or relu")
    init: Init = Field("xavier", description="as mlp.init")
    seq_len: int | None = Field(None, ge=1, description="as rnn.seq_len")


class Optimizer(Section):
    """torch's own AdamW or SGD, through DeepSpeed."""

    name: Literal["adamw", "sgd"] = Field("adamw", description="adamw or sgd")
    lr: float = Field(3e-3, gt=0, description="peak learning rate (after warmup)")
    weight_decay: float = Field(1e-4, ge=0, description="L2: decoupled weight decay for AdamW, an L2 term "
                                "in the gradient for SGD")
    l1: float = Field(0.0, ge=0, description="L1 penalty on the weights (not biases or norms), added to the loss")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW only")


class Schedule(Section):
    """DeepSpeed's learning-rate schedulers: linear warmup, then constant, linear decay or cosine decay."""

    name: Literal["constant", "linear", "cosine"] = Field("constant", description="after the warmup: constant, "
                                                          "linear decay to 0 or cosine decay to min_lr_ratio")
    warmup_steps: int = Field(0, ge=0, description="optimizer steps of linear warmup from 0")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine: the final lr as a fraction of the peak")


class EarlyStopping(Section):
    """Stop when the validation metric stops improving; the model kept is the best epoch's."""

    metric: Literal["val_loss", "val_accuracy", "val_f1", "val_mae", "val_rmse"] = Field(
        "val_loss", description="val_loss, or val_accuracy / val_f1 (classification), val_mae / val_rmse "
        "(regression)")
    patience: int = Field(0, ge=0, description="epochs without improvement before stopping; 0 never stops")
    min_delta: float = Field(0.0, ge=0, description="smallest change that counts as an improvement")


class Checkpointing(Section):
    """DeepSpeed checkpoints, from which a rerun resumes exactly."""

    every_steps: int = Field(0, ge=0, description="also checkpoint every N optimizer steps within an epoch; "
                             "0: at the end of each epoch only")
    keep_last: int = Field(2, ge=1, description="complete checkpoints kept besides the best one")
    reshard: bool = Field(False, description="an unfinished run written by another number of processes "
                          "continues with this many from where it stopped, instead of stopping with an error "
                          "(ZeRO stages 0-2; not bit-exact: the global batch follows the count; "
                          "tasks/training/reshard.py)")


class WarmStart(Section):
    """Transfer learning: the run starts from a parent's weights (tasks/training/init.py), not at random."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)  # `from` is a Python keyword

    from_: str | None = Field(None, alias="from", description="the parent: a registered version (digits@prod, "
                              "digits@v0.0.3), or a safetensors file written by train; null trains from scratch")
    unassigned: Literal["refuse", "scratch"] = Field("refuse", description="a stage (digits@prod) that holds "
                                                    "no version yet: refuse, or train from scratch (the first "
                                                    "run of a continual loop)")
    head: Literal["keep", "reset"] = Field("keep", description="keep: the parent's output layer too (the same "
                                           "outputs); reset: the child's own fresh one (another class count)")
    freeze: tuple[str, ...] | Literal["backbone"] = Field((), description="parameters left as the parent had "
                                                          "them: backbone (all but the head), or glob patterns "
                                                          "of module or parameter names (features.0, encoder.*)")
    unfreeze_at_epoch: int | None = Field(None, ge=1, description="gradual unfreezing: the frozen parameters "
                                          "train from this epoch on; null keeps them frozen (fp32, ZeRO stage 0)")
    backbone_lr_ratio: float = Field(1.0, gt=0, le=1, description="the backbone's learning rate as a fraction "
                                     "of the head's (optimizer.lr, as scheduled); 1.0: one rate")
    leak: Literal["refuse", "warn"] = Field("refuse", description="a child's test row the parent trained on: "
                                            "refuse the data (clean), or warn and go on")
    frozen_norm: Literal["train", "eval"] = Field("train", description="BatchNorm layers whose parameters are all "
                                                  "frozen: train (their running statistics follow the child's "
                                                  "batches) or eval (the parent's statistics, used and kept, "
                                                  "until they unfreeze)")

    @model_validator(mode="after")
    def _needs_a_parent(self) -> WarmStart:
        if self.from_ is None:
            used = [k for k, v in (("head", self.head != "keep"), ("freeze", self.freeze != ()),
                                   ("unfreeze_at_epoch", self.unfreeze_at_epoch is not None),
                                   ("backbone_lr_ratio", self.backbone_lr_ratio != 1.0),
                                   ("frozen_norm", self.frozen_norm != "train"),
                                   ("unassigned", self.unassigned != "refuse")) if v]
            if used:
                raise ValueError(f"train.init.{', train.init.'.join(used)} need(s) a parent: set train.init.from")
        if self.unfreeze_at_epoch is not None and not self.freeze:
            raise ValueError("train.init.unfreeze_at_epoch unfreezes nothing: train.init.freeze is empty")
        if self.frozen_norm == "eval" and not self.freeze:
            raise ValueError("train.init.frozen_norm eval holds the frozen BatchNorm layers, and train.init.freeze "
                             "is empty: name what to freeze, or frozen_norm train")
        return self


class Train(Section):
    """Training with DeepSpeed; the DeepSpeed config is derived from these."""

    model: Literal["mlp", "cnn", "rnn", "transformer"] = Field("cnn", description="the model trained; its "
                                                               "section below (models/)")
    mlp: MLP = MLP()
    cnn: CNN = CNN()
    rnn: RNN = RNN()
    transformer: Transformer = Transformer()
    loss: Literal["cross_entropy", "mse", "mae"] = Field("cross_entropy", description="mse and mae train a "
                                                         "regression on a numeric label (ingest.task: regression)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross_entropy only")
    epochs: int = Field(8, ge=0, description="passes over the training split (early stopping may end sooner); "
                        "0 with train.init.from: the model is the warm start itself, its metrics the parent's")
    batch_size: int = Field(32, ge=1, description="per process (DeepSpeed micro batch)")
    grad_accum: int = Field(1, ge=1, description="micro batches per optimizer step")
    optimizer: Optimizer = Optimizer()
    schedule: Schedule = Schedule()
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    zero_stage: int = Field(0, ge=0, le=3, description="0: plain data parallel, every rank holding the whole "
                            "optimizer state; 1, 2, 3 also shard the optimizer state, the gradients, the weights")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="fp32; bf16 (a GPU, or CPU ranks "
                                                       "without BatchNorm); fp16 (a GPU; dynamic loss scaling)")
    early_stopping: EarlyStopping = EarlyStopping()
    checkpoint: Checkpointing = Checkpointing()
    init: WarmStart = WarmStart()
    deepspeed_config: Path | None = Field(None, description="a DeepSpeed JSON file whose keys override the "
                                          "config derived from these params")
    deterministic: bool = Field(False, description="deterministic kernels only (slower on a GPU)")
    num_procs: int = Field(2, ge=1, description="CPU processes when there is no GPU (per node with a hostfile)")
    master_port: int = Field(29500, ge=1024, le=65535, description="TCP port of the processes' rendezvous")
    hostfile: Path | None = Field(None, description="several machines: DeepSpeed's hostfile ('host slots=N' per "
                                  "line); with NODE_RANK set, each node starts its own launcher (no ssh)")
    master_addr: str = Field("127.0.0.1", description="address of node 0 when several machines train together")
    seed: int = Field(0, description="initial weights, data order and dropout")
    verbose: bool = Field(False, description="DeepSpeed's own start-up lines: its launcher's INFO log (world "
                          "info, CUDA_VISIBLE_DEVICES, each process spawned), the accelerator detection's "
                          "notice, the shared-memory op's build line and deepspeed.initialize's INFO log. "
                          "false keeps them out; DeepSpeed's warnings and errors show either way")

    @model_validator(mode="after")
    def _unfreeze_within_the_run(self) -> Train:
        if self.epochs == 0 and not self.init.from_:
            raise ValueError("train.epochs 0 trains nothing, and without train.init.from the model would be its "
                             "random initial weights: set at least 1, or a parent to start from")
        if self.epochs == 0 and self.init.head == "reset":
            raise ValueError("train.epochs 0 with train.init.head reset leaves the new head untrained (random): "
                             "set at least 1 epoch, or head keep")
        at = self.init.unfreeze_at_epoch
        if at is not None and at > self.epochs:
            raise ValueError(f"train.init.unfreeze_at_epoch {at} is after the last epoch (train.epochs "
                             f"{self.epochs}): set at most {self.epochs}, or null to keep them frozen")
        return self


class Evaluate(Section):
    """Evaluation of the trained model on the test split."""

    batch_size: int = Field(512, ge=1, description="test rows per forward pass")
