"""Continual learning: a model fine-tuned on each new data version, scored on the test set of every earlier one.

    from tasks.continual import summary, forgetting_refusals
    summary(R, versions)        # ACC, BWT, each past test set's forgetting (R[i][j]: after version i, test set j)
    forgetting_refusals(candidate_accuracies, holder_accuracies, allowed_points, "digits@v0.0.3")

The package (issue 17; groundwork so far):

    metrics.py   the accuracy matrix checked, GEM's average accuracy and backward transfer, forgetting as in
                 Chaudhry et al. 2018, and the promotion gate's forgetting check (not wired into register yet)
"""

from tasks.continual.metrics import (
    average_accuracy,
    backward_transfer,
    check_matrix,
    forgetting,
    forgetting_refusals,
    summary,
)

__all__ = ["average_accuracy", "backward_transfer", "check_matrix", "forgetting", "forgetting_refusals", "summary"]
