"""Continual learning: each new data version fine-tunes the parent, scored on the test set of every earlier one.

    buffer.py      the replay buffer: a class-balanced reservoir of every data version's training rows, built
                   from the parent's buffer and the new rows (a DVC output every registered version carries)
    strategies.py  what train adds for replay, EWC and LwF, under DeepSpeed
    scoring.py     evaluate's part: the accuracy on each data version's test set, the matrix extended, its
                   metrics, heat map and trend
    metrics.py     the matrix checked, GEM's average accuracy and backward transfer, forgetting as in
                   Chaudhry et al. 2018, and the promotion gate's forgetting check (tasks/registry/policy.py)

The modules are imported by name (no re-exports here), so a stage depends only on the ones it uses.
"""
