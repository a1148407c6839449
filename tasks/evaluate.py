"""evaluate: test-split metrics, confusion matrix and training curves.

    python -m tasks.evaluate          # what `dvc repro evaluate` runs

Writes the headline figures (accuracy, macro precision, recall and F1, test
rows; MAE, RMSE and R² for a regression) as DVC metrics; the per-class
precision, recall, F1 and support as a table of their own (paths.per_class, a
row per class, drawn by `dvc plots show`), so `dvc metrics show` stays a few
columns wide; the actual/predicted pairs as a DVC confusion plot; and PNG
figures (confusion matrix, training curves) for people and the Prefect UI. The
model is rebuilt from its safetensors file alone (tasks/weights.py).

    read_metrics(p.paths.metrics, p.paths.per_class)   # both back as one dict, per_class by class name
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, accuracy_score, precision_recall_fscore_support  # noqa: E402

from tasks.continual.scoring import evaluate_continual, no_classes  # noqa: E402
from tasks.data.tables import LABEL, feature_names, read_json, read_model_table, write_json  # noqa: E402
from tasks.errors import run_main  # noqa: E402
from tasks.files import split_path  # noqa: E402
from tasks.params import Evaluate, load_params  # noqa: E402
from tasks.weights import rebuild_model  # noqa: E402

CURVES_PNG, CONFUSION_PNG = "training_curves.png", "confusion_matrix.png"  # in paths.figures


@torch.no_grad()
def predict_classes(model: torch.nn.Module, x: np.ndarray, batch_size: int) -> np.ndarray:
    """The class index the model scores highest for each row of `x`, `batch_size` rows at a time."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return torch.cat([model(b).argmax(1) for b in t.split(batch_size)]).numpy()


def plot_curves(history: list[dict], path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    if not history:  # train.epochs 0: a warm start evaluated as loaded
        for ax in (ax_loss, ax_acc):
            ax.text(0.5, 0.5, "no epoch trained (train.epochs 0)", ha="center", va="center")
            ax.set_axis_off()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend()
    metric = "val_accuracy" if "val_accuracy" in history[0] else "val_mae"
    ax_acc.plot(epochs, [h[metric] for h in history], color="tab:green")
    ax_acc.set(xlabel="epoch", ylabel=metric[4:], title=f"Validation {metric[4:]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def evaluate_regression(model, x: np.ndarray, y: np.ndarray, t: dict, params: Evaluate, confusion_path: Path,
                        figures: Path) -> dict:
    """MAE, RMSE and R² in the target's own units; the confusion plot is one of deciles: which tenth of the
    test targets each prediction falls in, against the tenth the actual value is in."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    c, s = t["target"]["center"], t["target"]["scale"]
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    pred = torch.cat([model(b).squeeze(-1) for b in xt.split(params.batch_size)]).numpy() * s + c
    actual = y.astype(np.float64) * s + c
    metrics = {"mae": float(mean_absolute_error(actual, pred)),
               "rmse": float(mean_squared_error(actual, pred) ** 0.5), "r2": float(r2_score(actual, pred)),
               "test_rows": int(len(y))}
    edges = np.quantile(actual, np.linspace(0, 1, 11)[1:-1])
    tenth = lambda v: [f"d{k + 1:02d}" for k in np.searchsorted(edges, v)]  # noqa: E731
    write_json(confusion_path, [{"actual": a, "predicted": b} for a, b in zip(tenth(actual), tenth(pred))])
    figures.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(actual, pred, s=8, alpha=0.6)
    lo, hi = float(min(actual.min(), pred.min())), float(max(actual.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], color="gray", linewidth=1)
    ax.set(xlabel="actual", ylabel="predicted", title=f"Test predictions (R² {metrics['r2']:.3f})")
    fig.tight_layout()
    fig.savefig(figures / CONFUSION_PNG, dpi=110)
    plt.close(fig)
    return metrics


def per_class_rows(classes: list[str], y: np.ndarray, pred: np.ndarray) -> list[dict]:
    """One row per class (every class clean saw, in its order): precision, recall, F1 and test support."""
    p, r, f1, support = precision_recall_fscore_support(y, pred, labels=list(range(len(classes))), zero_division=0)
    return [{"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i]),
             "support": int(support[i])} for i, c in enumerate(classes)]


def by_class(rows: list[dict]) -> dict:
    """The per-class table as {class: {precision, recall, f1, support}}."""
    return {r["class"]: {k: v for k, v in r.items() if k != "class"} for r in rows}


def read_metrics(metrics_path: Path, per_class_path: Path) -> dict:
    """The headline metrics with the per-class table as `per_class` (absent for a regression): what the model
    card and the Prefect table show. A run from before the split kept `per_class` in the metrics file itself."""
    metrics = read_json(metrics_path, "evaluation metrics")
    rows = read_json(per_class_path, "per-class metrics") if Path(per_class_path).exists() else []
    return metrics | {"per_class": by_class(rows)} if rows else metrics


def class_metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    """Accuracy, and macro precision, recall and F1 over the classes tested or predicted (sklearn's default
    set: clean.classes may name classes no data version has brought yet)."""
    seen = sorted(set(y.tolist()) | set(pred.tolist()))
    pm, rm, fm, _ = precision_recall_fscore_support(y, pred, labels=seen, average="macro", zero_division=0)
    return {"accuracy": float(accuracy_score(y, pred)), "precision_macro": float(pm), "recall_macro": float(rm),
            "f1_macro": float(fm), "test_rows": int(len(y))}


def parent_on_test(parent: Path, x: np.ndarray, y: np.ndarray, n_classes: int, batch_size: int) -> dict | None:
    """The parent's test metrics on this test split (a warm start with the same outputs): what the promotion
    policy compares a child with, like with like, rather than the parent's figures on its own older data."""
    from tasks.data.inherit import FILES

    weights = parent / FILES["weights"]
    if not weights.exists():
        return None
    model = rebuild_model(weights)
    if model(torch.zeros(1, x.shape[1])).shape[-1] != n_classes:  # head reset: other outputs
        return None
    return class_metrics(y, predict_classes(model, x, batch_size))


def evaluate(params: Evaluate, model_path: Path, test_path: Path, transform_path: Path,
             history_path: Path, metrics_path: Path, confusion_path: Path, figures: Path,
             per_class_path: Path | None = None, continual: tuple[Path, Path, Path] | None = None) -> dict:
    """The test metrics (the headline figures, and for classes `per_class` as read_metrics gives it); the
    per-class table goes to per_class_path when given (the register stage's rerun needs only the figures).
    With `continual` (rows.parquet, the parent folder, paths.continual), the accuracy on every data
    version's test set too (tasks/continual/scoring.py), as `continual`."""
    model = rebuild_model(model_path)
    table = read_model_table(test_path)
    t = read_json(transform_path, "clean transform")
    x = np.column_stack([table[c].to_numpy() for c in feature_names(table.schema)])
    y = table[LABEL].to_numpy()
    if t.get("task") == "regression":
        metrics = evaluate_regression(model, x, y, t, params, confusion_path, figures)
        write_json(metrics_path, metrics)
        if continual:  # accuracy per data version: classes only; the declared outputs exist, empty
            no_classes(continual[2])
        if per_class_path:  # no classes: an empty table, so the declared output exists
            write_json(per_class_path, [])
        plot_curves(read_json(history_path, "training history"), figures / CURVES_PNG)
        return metrics
    classes = [str(c) for c in t["classes"]]
    pred = predict_classes(model, x, params.batch_size)

    labels = list(range(len(classes)))
    metrics = class_metrics(y, pred)
    write_json(metrics_path, metrics)
    rows = per_class_rows(classes, y, pred)
    if per_class_path:
        write_json(per_class_path, rows)
    write_json(confusion_path, [{"actual": classes[a], "predicted": classes[b]} for a, b in zip(y, pred)])

    figures.mkdir(parents=True, exist_ok=True)
    disp = ConfusionMatrixDisplay.from_predictions(y, pred, labels=labels, display_labels=classes, colorbar=False)
    disp.ax_.set_title(f"Test confusion matrix (accuracy {metrics['accuracy']:.3f})")
    disp.figure_.savefig(figures / CONFUSION_PNG, dpi=110)
    plt.close(disp.figure_)
    plot_curves(read_json(history_path, "training history"), figures / CURVES_PNG)
    extra = {}
    if continual:
        rows_path, parent, folder = continual
        before = parent_on_test(parent, x, y, len(classes), params.batch_size)
        extra = {"continual": evaluate_continual(pred, y, rows_path, parent, folder, figures, before)}
    return metrics | {"per_class": by_class(rows)} | extra


def main() -> None:
    def body():
        p = load_params()
        m = evaluate(p.evaluate, p.paths.model, split_path(p.paths.splits, "test"), p.paths.transform,
                     p.paths.train_history, p.paths.metrics, p.paths.confusion, p.paths.figures, p.paths.per_class,
                     (p.paths.rows, p.paths.parent, p.paths.continual))
        shown = ["accuracy", "f1_macro"] if "accuracy" in m else ["mae", "rmse", "r2"]
        print(f"evaluate: test {', '.join(f'{k} {m[k]:.4f}' for k in shown)} on {m['test_rows']} rows "
              f"-> {p.paths.metrics}")
        c = m.get("continual")
        if c and c["data_versions"] > 1:
            print(f"evaluate: {c['data_versions']} data versions' test sets: average accuracy "
                  f"{c['average_accuracy']:.4f}, backward transfer {c['backward_transfer']:+.4f}, largest "
                  f"forgetting {c['max_forgetting']:.4f} -> {p.paths.continual}" if c["backward_transfer"] is not None
                  else f"evaluate: {c['data_versions']} data versions' test sets: average accuracy "
                  f"{c['average_accuracy']:.4f} (the parent records no earlier rows) -> {p.paths.continual}")

    run_main(body)


if __name__ == "__main__":
    main()
