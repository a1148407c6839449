"""What the search shows at its end: the best trial, the optimisation history and the parameters'
importances, as PNGs (Optuna's matplotlib plots) in one markdown artifact.

    publish_best(repo, h, study)      # -> the folder the figures went to (.dvc/tmp/hpo/<study>/)
    optuna-dashboard <storage>        # the same study, live in a browser (README, "Hyperparameter search")
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402

from flows.artifacts import png_markdown  # noqa: E402
from tasks.params import Hpo  # noqa: E402


def _figure(plot, study, path: Path) -> Path | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            ax = plot(study)
    except (ValueError, RuntimeError):  # importances need two complete trials with differing params
        return None
    fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
    fig.set_size_inches(7, 4)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def publish_best(repo: Path, h: Hpo, study: optuna.Study) -> Path:
    folder = repo / ".dvc" / "tmp" / "hpo" / h.study
    folder.mkdir(parents=True, exist_ok=True)
    vis = optuna.visualization.matplotlib
    history = _figure(vis.plot_optimization_history, study, folder / "history.png")
    importances = _figure(vis.plot_param_importances, study, folder / "importances.png")
    best = study.best_trial
    states = [t.state.name.lower() for t in study.trials]
    md = (f"# Study {h.study}: best trial {best.number}\n\n"
          f"- {h.metric} **{best.value:.5f}** ({study.direction.name.lower()}d), experiment "
          f"`{best.user_attrs.get('experiment')}`\n"
          f"- sampler {h.sampler}, pruner {h.pruner.kind}; trials: "
          + ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))) + "\n\n"
          "| param | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in best.params.items()) + "\n")
    for path, title in ((history, "Optimisation history"), (importances, "Parameter importances")):
        if path:
            md += png_markdown(path, title)
    create_markdown_artifact(key="hpo-best", markdown=md, description=f"best of study {h.study}: trial {best.number}")
    return folder
