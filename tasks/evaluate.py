"""evaluate: test-split metrics, confusion matrix and training curves.

    python -m tasks.evaluate          # what `dvc repro evaluate` runs

Writes accuracy, precision, recall and F1 (macro and per class) as DVC
metrics; the actual/predicted pairs as a DVC confusion plot; and PNG figures
(confusion matrix, training curves) for people and the Prefect UI.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors import SafetensorError  # noqa: E402
from safetensors.torch import load_file, safe_open  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, accuracy_score, precision_recall_fscore_support  # noqa: E402

from tasks.errors import InputError, run_main  # noqa: E402
from tasks.params import Evaluate, load_params  # noqa: E402
from tasks.tables import LABEL, feature_names, read_json, read_model_table, write_json  # noqa: E402

CURVES_PNG, CONFUSION_PNG = "training_curves.png", "confusion_matrix.png"  # in paths.figures


def load_model(path: Path) -> torch.nn.Module:
    """Rebuild a model from a safetensors file alone (its metadata holds the config)."""
    import json

    from models import build

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except FileNotFoundError:
        raise InputError(f"{path}: model file not found") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{path}: not a safetensors model file ({e})") from None
    if "model" not in meta or "config" not in meta:
        raise InputError(f"{path}: safetensors metadata lacks 'model'/'config'; not written by train")
    model = build(meta["model"], json.loads(meta["config"]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise InputError(f"{path}: weights do not fit model {meta['model']!r} ({e})") from None
    return model.eval()


@torch.no_grad()
def predict(model: torch.nn.Module, x: np.ndarray, batch_size: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return torch.cat([model(b).argmax(1) for b in t.split(batch_size)]).numpy()


def plot_curves(history: list[dict], path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [h["val_accuracy"] for h in history], color="tab:green")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Validation accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate(params: Evaluate, model_path: Path, test_path: Path, transform_path: Path,
             history_path: Path, metrics_path: Path, confusion_path: Path, figures: Path) -> dict:
    model = load_model(model_path)
    table = read_model_table(test_path)
    classes = [str(c) for c in read_json(transform_path, "clean transform")["classes"]]
    x = np.column_stack([table[c].to_numpy() for c in feature_names(table.schema)])
    y = table[LABEL].to_numpy()
    pred = predict(model, x, params.batch_size)

    labels = list(range(len(classes)))
    p, r, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    pm, rm, fm, _ = precision_recall_fscore_support(y, pred, labels=labels, average="macro", zero_division=0)
    metrics = {
        "accuracy": float(accuracy_score(y, pred)),
        "precision_macro": float(pm), "recall_macro": float(rm), "f1_macro": float(fm),
        "test_rows": int(len(y)),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i]),
                          "support": int(support[i])} for i, c in enumerate(classes)},
    }
    write_json(metrics_path, metrics)
    write_json(confusion_path, [{"actual": classes[a], "predicted": classes[b]} for a, b in zip(y, pred)])

    figures.mkdir(parents=True, exist_ok=True)
    disp = ConfusionMatrixDisplay.from_predictions(y, pred, labels=labels, display_labels=classes, colorbar=False)
    disp.ax_.set_title(f"Test confusion matrix (accuracy {metrics['accuracy']:.3f})")
    disp.figure_.savefig(figures / CONFUSION_PNG, dpi=110)
    plt.close(disp.figure_)
    plot_curves(read_json(history_path, "training history"), figures / CURVES_PNG)
    return metrics


def main() -> None:
    def body():
        p = load_params()
        m = evaluate(p.evaluate, p.paths.model, p.paths.splits / "test.parquet", p.paths.transform,
                     p.paths.train_history, p.paths.metrics, p.paths.confusion, p.paths.figures)
        print(f"evaluate: test accuracy {m['accuracy']:.4f}, macro F1 {m['f1_macro']:.4f} "
              f"on {m['test_rows']} rows -> {p.paths.metrics}")

    run_main(body)


if __name__ == "__main__":
    main()
