"""loading a model's weights (tasks/weights.py): safetensors only, hashes checked first, pickles refused
without being unpickled."""

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from models import build
from tasks.data.tables import sha256_file
from tasks.errors import InputError
from tasks.weights import rebuild_model

CONFIG = {"n_features": 4, "n_outputs": 3, "hidden": [8], "dropout": 0.0, "activation": "relu", "norm": "none",
          "init": "he"}


class Payload:
    """Unpickling this touches a file: the proof that a loader ran pickle on it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def weights(path: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    module = build("mlp", CONFIG).eval()
    save_file(module.state_dict(), str(path), metadata={"model": "mlp", "config": json.dumps(CONFIG)})
    return module


def test_weights_rebuild_the_same_module(tmp_path):
    module = weights(tmp_path / "m.safetensors")
    loaded = rebuild_model(tmp_path / "m.safetensors", sha256_file(tmp_path / "m.safetensors"))
    x = torch.randn(5, 4)
    assert torch.equal(loaded(x), module(x))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_pickle_named_like_a_model_is_refused_without_unpickling(tmp_path, how):
    marker, path = tmp_path / "unpickled", tmp_path / "model.safetensors"
    obj = {"w": torch.zeros(3), "payload": Payload(marker)}
    if how == "torch.save":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=4))
    with pytest.raises(InputError, match=r"model.safetensors: is a pickle \(torch.save\) file, not safetensors"):
        rebuild_model(path)
    assert not marker.exists()
    if how == "pickle":  # the payload is live: unpickling it would have left the marker
        pickle.loads(path.read_bytes())
        assert marker.exists()


def test_changed_bytes_are_refused_against_the_recorded_hash(tmp_path):
    path = tmp_path / "model.safetensors"
    weights(path)
    recorded = sha256_file(path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x55  # a weight's byte: still a valid safetensors file, but not the registered one
    path.write_bytes(bytes(data))
    rebuild_model(path)  # without a recorded hash nothing would notice ...
    with pytest.raises(InputError, match="differs from the .* recorded at registration"):
        rebuild_model(path, recorded)  # ... with it, the file is refused


def test_a_file_that_is_not_safetensors_is_named(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"hello, this is not a model at all")
    with pytest.raises(InputError, match="junk.safetensors: not a safetensors file"):
        rebuild_model(tmp_path / "junk.safetensors")
    with pytest.raises(InputError, match="missing.safetensors: cannot read the weights"):
        rebuild_model(tmp_path / "missing.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(InputError, match="lacks 'model'/'config'"):
        rebuild_model(tmp_path / "bare.safetensors")
