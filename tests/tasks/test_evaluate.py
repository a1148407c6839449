"""evaluate: metrics, confusion pairs and figures from a safetensors model."""

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from models import build
from tasks.augment import augment
from tasks.data.tables import read_model_table
from tasks.errors import InputError
from tasks.evaluate import evaluate, read_metrics
from tasks.params import Augment, Evaluate
from tasks.weights import rebuild_model

MLP = {"n_features": 4, "n_outputs": 3, "hidden": [16], "dropout": 0.0}


def fit_tiny_model(train_path, model_path):
    """Plain torch stands in for DeepSpeed here: the subject is evaluation."""
    t = read_model_table(train_path)
    x = torch.tensor([[t[c][i].as_py() for c in ("a", "b", "c", "d")] for i in range(t.num_rows)])
    y = torch.tensor(t["label"].to_pylist())
    torch.manual_seed(0)
    model = build("mlp", MLP)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_file(model.state_dict(), str(model_path), metadata={"model": "mlp", "config": json.dumps(MLP)})


def test_metrics_plots_and_figures(staged, tmp_path):
    augment(Augment(copies=0), staged["clean"], staged["transform"], tmp_path / "splits")
    fit_tiny_model(tmp_path / "splits/train.parquet", tmp_path / "model.safetensors")
    history = tmp_path / "history.json"
    history.write_text(json.dumps([{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "val_accuracy": 0.5},
                                   {"epoch": 2, "train_loss": 0.5, "val_loss": 0.6, "val_accuracy": 0.8}]))
    m = evaluate(Evaluate(), tmp_path / "model.safetensors", tmp_path / "splits/test.parquet",
                 staged["transform"], history, tmp_path / "metrics.json", tmp_path / "confusion.json",
                 tmp_path / "figures", tmp_path / "per_class.json")
    headline = json.loads((tmp_path / "metrics.json").read_text())
    # `dvc metrics show` fits a terminal: a few flat numbers, what register and the flow read among them
    assert len(headline) <= 12 and all(isinstance(v, (int, float)) for v in headline.values()), headline
    assert {"accuracy", "f1_macro", "precision_macro", "recall_macro", "test_rows"} <= set(headline)
    assert m["accuracy"] > 0.6  # three well separated classes
    rows = json.loads((tmp_path / "per_class.json").read_text())  # the table `dvc plots show` draws
    assert [r["class"] for r in rows] == ["0", "1", "2"]
    assert all(set(r) == {"class", "precision", "recall", "f1", "support"} for r in rows)
    assert sum(r["support"] for r in rows) == m["test_rows"]
    # read back as one dict, as the model card and the Prefect table take it; evaluate returns the same
    assert read_metrics(tmp_path / "metrics.json", tmp_path / "per_class.json") == m == headline | {
        "per_class": {r["class"]: {k: r[k] for k in ("precision", "recall", "f1", "support")} for r in rows}}
    pairs = json.loads((tmp_path / "confusion.json").read_text())
    assert len(pairs) == m["test_rows"]
    assert sum(p["actual"] == p["predicted"] for p in pairs) / len(pairs) == pytest.approx(m["accuracy"])
    for name in ("confusion_matrix.png", "training_curves.png"):
        assert (tmp_path / "figures" / name).read_bytes()[:4] == b"\x89PNG"


def test_pickled_model_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(InputError, match=r"model.safetensors: is a pickle \(torch.save\) file, not safetensors"):
        evaluate(Evaluate(), path, *(tmp_path / n for n in ("t.parquet", "t.json", "h.json", "m.json", "c.json", "f")))


def test_safetensors_without_our_metadata_is_refused(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "m.safetensors"))
    with pytest.raises(InputError, match="lacks 'model'/'config'"):
        rebuild_model(tmp_path / "m.safetensors")


def test_weights_of_another_architecture_are_refused(tmp_path):
    other = build("mlp", MLP | {"hidden": [8]})
    save_file(other.state_dict(), str(tmp_path / "m.safetensors"), metadata={"model": "mlp", "config": json.dumps(MLP)})
    with pytest.raises(InputError, match="weights do not fit model 'mlp'"):
        rebuild_model(tmp_path / "m.safetensors")
