"""training.loss: improvement in the metric's direction (the rule the registry's policy shares)."""

from tasks.metrics import higher_is_better, improvement
from tasks.training.loss import improved


def test_improved_follows_the_metrics_direction_and_min_delta():
    assert improved(0.5, None, "val_loss", 0.0)  # the first epoch always counts
    assert improved(0.4, 0.5, "val_loss", 0.05) and not improved(0.46, 0.5, "val_loss", 0.05)
    assert improved(0.9, 0.8, "val_accuracy", 0.0) and not improved(0.8, 0.9, "val_accuracy", 0.0)
    assert improved(1.0, 2.0, "val_rmse", 0.0) and improved(0.7, 0.6, "val_f1", 0.0)


def test_one_rule_for_which_way_a_metric_points():
    assert [higher_is_better(m) for m in ("accuracy", "f1_macro", "val_loss", "mae", "test_rmse")] == [
        True, True, False, False, False]
    assert higher_is_better("brier", declared=False) is False  # a metric of the user's own, declared
    assert improvement(0.91, 0.90, "accuracy") > 0 > improvement(0.91, 0.90, "rmse")
