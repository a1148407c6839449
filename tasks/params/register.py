"""The register stage's section: the model's name, the promotion policy, the model card's words.

    from tasks.params import Register, Card

The policy is checked before a stage moves, by the register stage and by
`python -m tasks.registry promote` alike.
"""

from __future__ import annotations

from pydantic import Field

from tasks.params.base import Section


class Card(Section):
    """What the model card says beyond the numbers, about the data of one source."""

    source: str | None = Field(None, description="the ingest.source these words were written for; a version "
                               "trained on another source gets a card without them (saying so); None: any source")
    intended_use: str = Field("", description="what the model is for, in a sentence or two")
    limitations: tuple[str, ...] = Field((), description="where it should not be trusted; the card adds "
                                         "the weakest classes and the input schema itself")


class Register(Section):
    """Registration with GTO and the promotion policy, checked before `stage` moves (by register and by
    `python -m tasks.registry promote`)."""

    name: str = Field("digits", pattern=r"^[a-z0-9][a-z0-9-]*$", description="the artifact in dvc.yaml's "
                      "`artifacts:`, and the name in its GTO tags (digits@v0.0.3); a model of other data (another "
                      "task, label set or input schema) needs a name of its own: it takes no stage from this one")
    metric: str = Field("accuracy", description="key in the metrics file that decides promotion")
    higher_is_better: bool | None = Field(None, description="which way `metric` points; None: from its name "
                                          "(loss, error, mae, mse, rmse are lower-is-better; tasks/metrics.py)")
    min_improvement: float = Field(0.0, ge=0, description="over the version in `stage`, in the metric's units")
    require_contract: bool = Field(True, description="the data version must have passed the data contract")
    require_reproducible: bool = Field(False, description="code committed, and the evaluation rerun on the "
                                       "registered weights gives the recorded metric back")
    max_forgetting: float | None = Field(None, ge=0, description="the forgetting gate: the most accuracy, in "
                                         "points (0-100), a version may lose on any past test set (a data "
                                         "version's, reports/continual.json) against the version in `stage`; "
                                         "null: no gate")
    stage: str = Field("prod", pattern=r"^[a-z0-9][a-z0-9-]*$", description="the stage a version takes when "
                       "the policy allows it")
    card: Card = Card()
