"""The model registry: versions and stages as GTO git tags on DVC artifacts, policy, lineage both ways.

    python -m tasks.registry list [NAME]                  # versions, stages, metric, commit
    python -m tasks.registry show digits@prod             # metrics, lineage, decisions, model card
    python -m tasks.registry promote digits@v0.0.3        # checked against register's policy in params.yaml
    python -m tasks.registry rollback digits              # the previous production version back
    python -m tasks.registry lineage digits@prod          # what made it: data hashes from its dvc.lock, ...,
                                                          #   and its parents back to the first from scratch
    python -m tasks.registry children digits@v0.0.3       # the versions fine-tuned from it
    python -m tasks.registry trained-on 1f2e3d4c          # versions trained on that data hash / data version

    from tasks import registry
    registry.resolve("digits@prod")                       # Version(name, version, commit)
    registry.stage_holder("digits", "prod")               # the version assigned the stage last (of those in it)

A model spec is NAME@VERSION (digits@v0.0.3), NAME@STAGE (digits@prod) or NAME@latest. Loading and
prediction are in tasks/loading.py and tasks/predict.py; the register stage (tasks/register.py)
makes the versions. The package:

    versions.py   specs, versions and stages (GTO tags), resolving a spec, a version's lineage record
    policy.py     the promotion policy (decide), promote, rollback, the decisions in git notes
    compare.py    like with like (task, label set, input schema; meaningful test metrics) and a
                  version's identity (weights, preprocessing, splits): one model, one version
    lineage.py    lineage queries both ways (lineage, trained_on) and parent to child (chain, children;
                  derived_from, what register records of the parent stage's parent.json)
    dvc_files.py  reading dvc.lock and dvc.yaml's artifacts (here, at a commit)
    git.py        git plumbing: the runner, the fallback identity, commits of named paths, tags, notes, the lock
    cli.py        the command line above

Every promotion decision, refusals included, is appended as a JSON line to the version commit's
git note (`git notes --ref=registry show <commit>`). Everything that writes tags or commits takes
one lock in .git/, so concurrent registrations get distinct versions and lose no tag.
"""

from tasks.registry.cli import main
from tasks.registry.lineage import chain, children, lineage, trained_on
from tasks.registry.policy import NOTES_REF, decide, decisions, promote, record_decision, rollback
from tasks.registry.versions import (
    Version,
    artifact_names,
    move_stage,
    parse_spec,
    read_lineage,
    resolve,
    stage_events,
    stage_holder,
    stage_holders,
    stage_stack,
    version_paths,
    versions,
)

__all__ = ["NOTES_REF", "Version", "artifact_names", "chain", "children", "decide", "decisions", "lineage", "main",
           "move_stage", "parse_spec", "promote", "read_lineage", "record_decision", "resolve", "rollback",
           "stage_events", "stage_holder", "stage_holders", "stage_stack", "trained_on", "version_paths", "versions"]
