"""Images, a messy table and text, each through the whole pipeline by params only; data versions.

Slow (DVC and DeepSpeed on 2 CPU ranks): `pytest -m slow tests/e2e/test_data_kinds.py`.
"""

from __future__ import annotations

import json
import sys

import pytest

from tasks.data.tables import read_table
from tests.conftest import copy_repo, run, set_params

pytestmark = pytest.mark.slow

KINDS = {
    # the digits as PNG files, one folder per class, through the CNN
    "images": ("images", "data/sources/digits_png", 0.90, {
        "contract.columns": {"label": {"type": "category", "allowed": [str(d) for d in range(10)]}},
        "train.epochs": 5}),
    # numbers, a categorical column, 4% blank cells, repeated rows, string labels, through the MLP
    "table": ("table", "data/sources/wine.csv", 0.85, {
        "ingest.header": True, "ingest.label_column": "cultivar", "ingest.image_shape": None,
        "contract": {"columns": {"cultivar": {"type": "category"}, "colour": {"allowed": ["pale", "medium", "deep"]}},
                     "min_rows": 100, "max_null_ratio": 0.1, "min_class_rows": 20, "max_class_ratio": 3.0},
        "clean.per_column": True, "clean.outliers": [0.01, 0.99], "augment.table": {"noise_std": 0.05,
                                                                                   "mixup_alpha": 0.2},
        "train.model": "mlp", "train.batch_size": 16, "train.epochs": 25}),
    # standard-library docstrings labelled by area (4 classes): tokenizer + bag of words through the MLP
    "text": ("text", "data/sources/docs.csv", 0.60, {
        "ingest.header": True, "ingest.label_column": "area", "ingest.text_column": "text",
        "ingest.image_shape": None, "contract": {"min_rows": 100, "min_class_rows": 50, "max_null_ratio": 0.0},
        "train.model": "mlp", "train.epochs": 15}),
    # the same texts as token-id sequences through the Transformer encoder
    "text-transformer": ("text", "data/sources/docs.csv", 0.45, {
        "ingest.header": True, "ingest.label_column": "area", "ingest.text_column": "text",
        "ingest.image_shape": None, "contract": {"min_rows": 100, "min_class_rows": 50, "max_null_ratio": 0.0},
        "augment.text": {"representation": "sequence", "max_tokens": 48, "vocab_size": 1000},
        "train.model": "transformer", "train.transformer": {"d_model": 32, "heads": 4, "layers": 2},
        "train.epochs": 15}),
    # a numeric target (disease progression), MSE through the MLP, early stopping on the validation loss;
    # the threshold is on R² (1 is perfect, 0 predicts the mean)
    "regression": ("regression", "data/sources/diabetes.csv", 0.30, {
        "ingest.header": True, "ingest.label_column": "progression", "ingest.task": "regression",
        "ingest.image_shape": None, "contract": {"columns": {}, "min_rows": 100, "max_class_ratio": None},
        "augment.table": {"noise_std": 0.05, "mixup_alpha": 0.2},
        "train.model": "mlp", "train.loss": "mse", "train.batch_size": 16, "train.epochs": 40,
        "train.early_stopping": {"metric": "val_loss", "patience": 10}, "register.metric": "r2"}),
    # the digit images read row by row by a GRU
    "images-rnn": ("images", "data/sources/digits_png", 0.85, {
        "contract.columns": {"label": {"type": "category", "allowed": [str(d) for d in range(10)]}},
        "train.model": "rnn", "train.rnn": {"cell": "gru", "hidden": 64}, "train.epochs": 5}),
}


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_of_data_trains_by_changing_params_only(tmp_path, kind):
    maker, source, min_accuracy, changes = KINDS[kind]
    port = {"images": 29710, "table": 29720, "text": 29730, "text-transformer": 29755, "images-rnn": 29765,
            "regression": 29785}[kind]
    repo = copy_repo(tmp_path / kind, master_port=port)
    run([sys.executable, "-m", "tasks.data.example_data", maker, source], repo)
    set_params(repo, {"ingest.source": source, **changes})
    out = run(["dvc", "repro"], repo).stdout
    assert "ingest: data version" in out and "Running stage 'register'" in out
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert metrics["r2" if kind == "regression" else "accuracy"] >= min_accuracy, metrics
    contract = json.loads((repo / "reports/contract.json").read_text())
    assert contract["ok"] and contract["violations"] == []
    if kind.startswith("text"):
        assert (repo / "data/splits/tokenizer.json").exists()
    if kind == "table":
        report = json.loads((repo / "reports/clean.json").read_text())
        assert report["duplicates_dropped"] == 5 and report["missing_values_filled"] > 50


def test_data_versions_reruns_and_stable_splits(tmp_path):
    """Unchanged data reruns nothing; new rows make a new version; the old one stays retrievable."""
    repo = copy_repo(tmp_path / "versions", master_port=29740)
    run([sys.executable, "-m", "tasks.data.example_data", "table", "data/sources/wine.csv"], repo)
    set_params(repo, {"ingest.source": "data/sources/wine.csv", **KINDS["table"][3]})
    run(["dvc", "repro", "augment"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "data v1"], repo)
    v1 = json.loads((repo / "data/raw/manifest.json").read_text())["version"]
    raw_v1 = (repo / "data/raw/table.parquet").read_bytes()
    clean_v1 = read_table(repo / "data/clean/table.arrow")

    out = run(["dvc", "repro", "--force", "--single-item", "ingest"], repo).stdout  # re-read the same data
    assert "Running stage 'ingest'" in out
    out = run(["dvc", "repro", "augment"], repo).stdout
    assert "Running stage 'clean'" not in out and "Running stage 'augment'" not in out  # the same version
    assert json.loads((repo / "data/raw/manifest.json").read_text())["version"] == v1

    rows = (repo / "data/sources/wine.csv").read_text().splitlines()
    extra = [",".join(str(round(float(c) * 1.01, 3)) if c.replace(".", "").isdigit() else c
                      for c in line.split(",")) for line in rows[1:41]]
    (repo / "data/sources/wine.csv").write_text("\n".join(rows + extra) + "\n")
    out = run(["dvc", "repro", "augment"], repo).stdout
    assert "Running stage 'clean'" in out
    v2 = json.loads((repo / "data/raw/manifest.json").read_text())["version"]
    assert v2 != v1
    # every row of v1 keeps its split in v2 (rows are identified by their content)
    clean_v2 = read_table(repo / "data/clean/table.arrow")
    n1 = clean_v1.num_rows
    assert clean_v2["split"].to_pylist()[:n1] == clean_v1["split"].to_pylist()
    # the previous version comes back through DVC, from the commit that recorded it
    import dvc.api

    assert dvc.api.read("data/raw/table.parquet", repo=str(repo), rev="HEAD", mode="rb") == raw_v1
    report = json.loads((repo / "reports/contract.json").read_text())
    assert report["drift"]["against"] == v1


def test_contract_violation_fails_the_flow_and_shows_the_report(tmp_path, prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.pipeline import pipeline

    repo = copy_repo(tmp_path / "contract", master_port=29750)
    lines = ["a,b,label"] + [f"{i},{'x' if i % 9 == 0 else i},{i % 2}" for i in range(60)]
    (repo / "data/sources/bad.csv").write_text("\n".join(lines) + "\n")
    set_params(repo, {"ingest.source": "data/sources/bad.csv", "ingest.header": True, "ingest.image_shape": None,
                      "train.model": "mlp"})
    state = pipeline(repo=str(repo), return_state=True)
    assert state.is_failed()
    assert "column 'b': mixed types" in str(state.result(raise_on_failure=False))
    report = json.loads((repo / "reports/contract.failed.json").read_text())
    assert not report["ok"] and {v["column"] for v in report["violations"]} >= {"b", "label"}
    assert not (repo / "data/raw/table.parquet").exists()  # nothing was snapshotted, nothing trained
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    (card,) = [a for a in artifacts if a.key == "data-report"]
    assert "failed" in card.data and "mixed types" in card.data
