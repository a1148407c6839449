"""training.run's model file: the same weights and metadata give the same bytes, and loaders read them."""

from __future__ import annotations

import hashlib
import json

import torch
from safetensors.torch import load_file

from tasks.params import Train
from tasks.training import run as runs
from tasks.weights import parse_weights

STATE = {"layers.1.weight": torch.arange(6.0).reshape(2, 3), "layers.0.bias": torch.ones(4),
         "norm.num_batches_tracked": torch.tensor(7.0)}


def test_the_same_weights_and_metadata_give_the_same_bytes(tmp_path):
    """safetensors keeps metadata in a hash map: its key order (and so the file) changed from save to save."""
    meta = runs.model_metadata(Train(model="mlp"), {"n_outputs": 10, "hidden": [128, 64], "n_features": 64},
                               "f1e2", tmp_path / "f1e2-w2", "step00000040")
    digests = set()
    for i in range(8):  # each save with the keys inserted in another order
        order = list(meta.items())[i % len(meta):] + list(meta.items())[:i % len(meta)]
        path = tmp_path / f"m{i}.safetensors"
        runs.save_model_file(STATE, path, dict(order))
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    state, read = parse_weights(path.read_bytes(), str(path))
    assert read == meta and all(torch.equal(state[k], v) for k, v in STATE.items())
    assert all(torch.equal(load_file(str(path))[k], v) for k, v in STATE.items())  # safetensors' own reader
    header = path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")]
    assert list(json.loads(header)["__metadata__"]) == sorted(meta)


def test_the_metadata_holds_no_path_and_a_canonical_config(tmp_path):
    a = runs.model_metadata(Train(model="mlp"), {"b": 1, "a": [1, 2]}, "k", tmp_path / "k-w2", "step1")
    b = runs.model_metadata(Train(model="mlp"), {"a": [1, 2], "b": 1}, "k", tmp_path / "elsewhere" / "k-w2", "step1")
    assert a == b == {"model": "mlp", "config": '{"a":[1,2],"b":1}', "fingerprint": "k", "run": "k-w2",
                      "checkpoint": "step1"}
