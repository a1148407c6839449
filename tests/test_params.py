"""params.yaml: the shipped file loads; bad keys and types are named."""

import pytest
import yaml
from pydantic import ValidationError

from tasks.errors import InputError
from tasks.params import load_params
from tests.conftest import ROOT


def write(tmp_path, params):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def shipped():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_shipped_params_load():
    p = load_params(ROOT / "params.yaml")
    assert p.train.model in ("mlp", "cnn")
    assert p.ingest.source.startswith("pkg:sklearn")


def test_unknown_key_is_named(tmp_path):
    params = shipped()
    params["train"]["epochz"] = 3
    with pytest.raises(InputError, match=r"train\.epochz: unknown key"):
        load_params(write(tmp_path, params))


def test_every_problem_reported_at_once(tmp_path):
    params = shipped()
    params["train"]["epochs"] = "many"
    params["clean"]["scaling"] = "zscore"
    del params["register"]
    with pytest.raises(InputError) as err:
        load_params(write(tmp_path, params))
    msg = str(err.value)
    assert "3 problem(s)" in msg
    assert "train.epochs" in msg and "clean.scaling" in msg and "register: missing key" in msg


def test_params_are_frozen():
    p = load_params(ROOT / "params.yaml")
    with pytest.raises(ValidationError, match="frozen"):
        p.train.epochs = 1


def test_cnn_needs_an_image_shape(tmp_path):
    params = shipped()
    params["ingest"]["image_shape"] = None
    params["train"]["model"] = "cnn"
    with pytest.raises(InputError, match="image_shape"):
        load_params(write(tmp_path, params))


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed")
    with pytest.raises(InputError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")


def test_loss_must_fit_the_task(tmp_path):
    params = shipped()
    params["train"]["loss"] = "mse"  # the digits are classes
    with pytest.raises(InputError, match=r"train\.loss 'mse' does not fit ingest\.task 'classification'"):
        load_params(write(tmp_path, params))
    params["ingest"] |= {"task": "regression", "image_shape": None}
    params["train"] |= {"model": "mlp", "early_stopping": {"metric": "val_accuracy", "patience": 2}}
    with pytest.raises(InputError, match=r"'val_accuracy' is a classification metric"):
        load_params(write(tmp_path, params))
    params["train"]["early_stopping"]["metric"] = "val_mae"
    assert load_params(write(tmp_path, params)).ingest.task == "regression"


def test_early_stopping_metric_is_a_known_one(tmp_path):
    params = shipped()
    params["train"]["early_stopping"]["metric"] = "val_acc"
    with pytest.raises(InputError, match=r"train\.early_stopping\.metric: Input should be 'val_loss'"):
        load_params(write(tmp_path, params))
    params["train"]["early_stopping"]["metric"] = "val_mae"  # a regression metric, on classes
    with pytest.raises(InputError, match=r"'val_mae' is a regression metric"):
        load_params(write(tmp_path, params))
