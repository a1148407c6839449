"""What the loop minimises and how an epoch is judged: the loss, the L1 term, validation, improvement.

    loss = loss_fn(engine(x), y, params) + params.optimizer.l1 * l1_penalty(engine.module)
    metrics = validate(engine, x_val, y_val, dtype, params)   # {"val_loss": ..., "val_accuracy": ...}
    improved(metrics["val_loss"], best, "val_loss", min_delta)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tasks.metrics import improvement
from tasks.params import Train


def l1_penalty(model: torch.nn.Module) -> torch.Tensor:
    """Sum of |w| over weight matrices, kernels and embeddings (not biases or norms' scales)."""
    return sum(p.abs().sum() for name, p in model.named_parameters() if p.dim() > 1 and name.endswith("weight"))


def loss_fn(out: torch.Tensor, y: torch.Tensor, params: Train) -> torch.Tensor:
    """Cross-entropy over class logits, or MSE / MAE of the one output against the standardised target."""
    if params.loss == "cross_entropy":
        return F.cross_entropy(out, y, label_smoothing=params.label_smoothing)
    return (F.mse_loss if params.loss == "mse" else F.l1_loss)(out.squeeze(-1), y)


@torch.no_grad()
def validate(engine, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype, params: Train) -> dict:
    """The validation split's loss and metrics (macro F1 by scikit-learn), in eval mode."""
    from sklearn.metrics import f1_score

    engine.eval()
    out = torch.cat([engine(xb.to(engine.device, dtype)).float().cpu() for xb in x.split(1024)])
    engine.train()
    if params.loss != "cross_entropy":  # regression, in standardised target units
        err = out.squeeze(-1) - y
        return {"val_loss": loss_fn(out, y, params).item(), "val_mae": err.abs().mean().item(),
                "val_rmse": err.pow(2).mean().sqrt().item()}
    pred = out.argmax(1)
    return {"val_loss": F.cross_entropy(out, y).item(), "val_accuracy": (pred == y).float().mean().item(),
            "val_f1": float(f1_score(y.numpy(), pred.numpy(), average="macro", zero_division=0))}


def improved(value: float, best: float | None, metric: str, min_delta: float) -> bool:
    """Whether `value` beats the best so far by more than min_delta, in the metric's direction
    (tasks/metrics.py: the rule the registry's promotion policy uses too)."""
    return best is None or improvement(value, best, metric) > min_delta
