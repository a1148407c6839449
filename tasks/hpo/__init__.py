"""Hyperparameter search: an Optuna study whose trials are DVC experiments, run by Prefect (flows/hpo.py).

space.py checks and samples the `hpo:` space; study.py opens the study (journal
file or a database), with its sampler and pruner, and reconciles trials a killed
search left running; trial.py runs one trial as `dvc exp run` in a checkout of
its own; report.py is the trial's side inside training (reports and pruning).
"""
