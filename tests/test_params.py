"""params.yaml: the shipped file and configs load; bad keys and types are named; one default per key."""

import subprocess
import sys
from typing import Iterator

import pytest
import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from tasks.errors import EXIT_INPUT, InputError
from tasks.params import Params, Train, load_params
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


def test_the_command_checks_a_params_file(tmp_path):
    """`python -m tasks.params [FILE]`, as the README says: the resolved params, or every problem and exit 2."""
    ok = subprocess.run([sys.executable, "-m", "tasks.params"], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and "params.yaml: ok" in ok.stderr
    assert yaml.safe_load(ok.stdout)["train"]["epochs"] == load_params(ROOT / "params.yaml").train.epochs
    params = shipped()
    params["clean"]["batch_rowz"] = 1
    bad = subprocess.run([sys.executable, "-m", "tasks.params", str(write(tmp_path, params))], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == EXIT_INPUT and "clean.batch_rowz: unknown key" in bad.stderr


@pytest.mark.parametrize("name", ["parent", "Created", "rev/"])
def test_a_path_dvc_exp_show_names_itself_is_refused(tmp_path, name):
    """A dep at `parent` gave `dvc exp show --only-changed` two columns of one name (KeyError 'parent')."""
    params = shipped()
    params["paths"]["parent"] = name
    with pytest.raises(InputError, match=r"paths\.parent: .*a column `dvc exp show` names itself"):
        load_params(write(tmp_path, params))


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



def test_the_searched_metric_fits_the_task_before_any_trial(tmp_path):
    # else every trial's rank 0 failed on a metric training never writes (and a second rank waited)
    params = shipped()
    params["hpo"]["metric"] = "val_rmse"
    with pytest.raises(InputError, match=r"hpo\.metric 'val_rmse' is a regression metric"):
        load_params(write(tmp_path, params))


# Keys whose default in the code is not params.yaml's value, on purpose, and why. Each describes the shipped
# data set or model, where the code's default is what suits a source of the user's. Required keys (paths,
# ingest.source) have no default to compare; like every key, they must be written in params.yaml.
NOT_THE_DEFAULT = {
    "ingest.header": "the shipped digits CSV has no header row; most CSV files have one",
    "ingest.image_shape": "the shipped digits are 8x8 images; a source of the user's is a table until it says so",
    "contract.columns": "the shipped data's own columns",
    "register.card": "the model card's words about the shipped model",
}


def leaf_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """(dotted key, field) of every leaf of a params model, its nested sections walked into."""
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from leaf_fields(field.annotation, key + ".")
        else:
            yield key, field


def written(tree: dict, key: str) -> bool:
    """Whether the dotted `key` is written in the YAML mapping `tree`."""
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def loaded(params: Params, key: str):
    """The value of the dotted `key` in loaded params (a key spelled by its alias, as train.init.from, too)."""
    for part in key.split("."):
        names = {f.alias: n for n, f in type(params).model_fields.items() if f.alias}
        params = getattr(params, names.get(part, part))
    return params


def exempt(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in NOT_THE_DEFAULT)


def test_every_key_a_stage_reads_is_written_in_params_yaml():
    """DVC tracks params.yaml's values only: a key left to the code's default would rerun nothing."""
    raw = shipped()
    missing = [f"{key} (the code's default: {field.get_default(call_default_factory=True)!r})"
               for key, field in leaf_fields(Params) if not written(raw, key)]
    assert not missing, "missing from params.yaml:\n  " + "\n  ".join(missing)


def test_the_code_defaults_are_params_yaml_values():
    """One default per key: the typed params' default is the value params.yaml runs with."""
    p, raw = load_params(ROOT / "params.yaml"), shipped()
    differ = []
    for key, field in leaf_fields(Params):
        if field.is_required() or exempt(key) or not written(raw, key):  # a missing key fails the test above
            continue
        default, value = field.get_default(call_default_factory=True), loaded(p, key)
        if default != value:
            differ.append(f"{key}: the code's default is {default!r}, params.yaml has {value!r}")
    assert not differ, "the code's defaults and params.yaml disagree:\n  " + "\n  ".join(differ)


def test_every_key_is_described():
    """A reader of tasks/params/ (or of Params.model_json_schema()) learns what each key does."""
    assert [key for key, field in leaf_fields(Params) if not field.description] == []


def test_the_exemptions_name_keys_that_exist():
    keys = [key for key, _ in leaf_fields(Params)]
    assert all(any(k == e or k.startswith(e + ".") for k in keys) for e in NOT_THE_DEFAULT)
    assert all(not field.is_required() for key, field in leaf_fields(Params) if exempt(key))


CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*") if p.is_file() and p.suffix != ".md")


def test_configs_folder_holds_configs():
    assert CONFIGS, "configs/ holds no config: the test below would check nothing"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_loads(path):
    """A DeepSpeed JSON merges over the derived config and passes DeepSpeed's own validation; a YAML file
    is a whole params file."""
    if path.suffix == ".json":
        from deepspeed.runtime.config import DeepSpeedConfig

        from tasks.training.engine import ds_config

        config = ds_config(Train(deepspeed_config=path), world_size=1, total_steps=10)  # 1: no process group
        assert DeepSpeedConfig(config).train_batch_size == Train().batch_size
    elif path.suffix in (".yaml", ".yml"):
        load_params(path)
    else:
        pytest.fail(f"{path}: no test knows how to load a {path.suffix} config; add one here")


def test_a_warm_start_is_checked_whole(tmp_path):
    """train.init: off by default; its other keys need a parent; unfreezing needs something frozen, in the run."""
    assert load_params(ROOT / "params.yaml").train.init.from_ is None
    params = shipped()
    params["train"]["init"] |= {"freeze": "backbone", "backbone_lr_ratio": 0.1}
    with pytest.raises(InputError, match=r"train\.init\.freeze, train\.init\.backbone_lr_ratio need\(s\) a parent"):
        load_params(write(tmp_path, params))
    params["train"]["init"] |= {"from": "digits@prod", "unfreeze_at_epoch": 99}
    with pytest.raises(InputError, match=r"unfreeze_at_epoch 99 is after the last epoch \(train\.epochs 8\)"):
        load_params(write(tmp_path, params))
    params["train"]["init"] |= {"unfreeze_at_epoch": 3, "freeze": ["features.*", "head.2"]}
    init = load_params(write(tmp_path, params)).train.init
    assert init.from_ == "digits@prod" and init.freeze == ("features.*", "head.2") and init.unfreeze_at_epoch == 3
    params["train"]["init"] |= {"backbone_lr_ratio": 0.0, "head": "drop"}
    with pytest.raises(InputError) as err:
        load_params(write(tmp_path, params))
    assert "train.init.backbone_lr_ratio" in str(err.value) and "train.init.head" in str(err.value)


def test_zero_epochs_only_evaluate_a_warm_start_with_its_own_head(tmp_path):
    params = shipped()
    params["train"]["epochs"] = 0
    with pytest.raises(InputError, match=r"train\.epochs 0 trains nothing.*train\.init\.from"):
        load_params(write(tmp_path, params))
    params["train"]["init"] |= {"from": "digits@prod", "head": "reset"}
    with pytest.raises(InputError, match=r"head reset leaves the new head untrained"):
        load_params(write(tmp_path, params))
    params["train"]["init"]["head"] = "keep"
    assert load_params(write(tmp_path, params)).train.epochs == 0
