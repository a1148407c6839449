"""Which way a metric points: the one rule early stopping and the registry's promotion policy share.

    higher_is_better("val_accuracy")   # True
    higher_is_better("rmse")           # False
    improvement(0.91, 0.90, "accuracy")  # +0.01: positive is better, whatever the metric

A metric is an error (lower is better) when its name says loss or error:
`loss`, `mae`, `mse`, `rmse` (with or without a `val_`/`test_` prefix). Every
other metric this pipeline writes (accuracy, precision, recall, f1, r2) is
better higher.
"""

from __future__ import annotations

LOWER_IS_BETTER = ("loss", "mae", "mse", "rmse", "error")


def higher_is_better(metric: str, declared: bool | None = None) -> bool:
    """`declared` when the user said (register.higher_is_better, for a metric of their own); otherwise True
    unless the metric's name marks it as an error or a loss."""
    if declared is not None:
        return declared
    return not any(part in metric.lower() for part in LOWER_IS_BETTER)


def improvement(value: float, reference: float, metric: str, declared: bool | None = None) -> float:
    """How much better `value` is than `reference` in the metric's units: positive when better."""
    return value - reference if higher_is_better(metric, declared) else reference - value
