"""Safe loading of a registered model with its saved preprocessing.

    from tasks.loading import load_model
    m = load_model("digits@prod")                # or digits@v0.0.3, digits@latest; repo="path"
    m.module                                     # the torch module, in eval mode
    m.preprocessing.features(table)              # raw columns -> the model's float32 inputs
    m.predict(table)                             # {"prediction": ..., "probability": ...}

The weights, the fitted transform and (for text) the tokenizer are read at the version's commit
through DVC (the local cache, or the remote when they are not pulled), so a version always comes
with the preprocessing it was trained with. Each file's SHA-256 must match the one its lineage
recorded at registration; the weights must be safetensors and are rebuilt by tasks/weights.py
(the loader evaluate uses too; tasks/registry/reading.py reads and checks the files). A pickle
(torch.save) is refused without being unpickled, and so is a file whose bytes changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tasks.registry import Version, read_lineage, resolve
from tasks.registry.reading import checked, reader, recorded
from tasks.weights import model_from_bytes


@dataclass(frozen=True)
class Preprocessing:
    """What turns raw input (the source's columns, or images) into the model's inputs, as at training."""

    transform: dict  # clean's fitted transform
    ingest: dict  # the version's ingest params: how raw input is read (header, delimiter, image shape...)
    text: dict  # the version's augment.text params
    columns: dict  # the raw columns and their Arrow types, in the snapshot's order
    kind: str = "table"  # or "images"
    tokenizer: Any = None

    def required(self) -> list[str]:
        t = self.transform
        return [c["name"] for c in t["numeric"] + t["categorical"]] + ([t["text_column"]] if t.get("text_column")
                                                                         else [])

    def features(self, batch: pa.RecordBatch | pa.Table) -> np.ndarray:
        from tasks.data import transform

        arrays, text = transform.apply(batch, self.transform)
        x = (np.column_stack([a.to_numpy(zero_copy_only=False) for a in arrays]).astype(np.float32) if arrays
             else np.empty((batch.num_rows, 0), np.float32))
        if self.tokenizer is not None:
            from tasks.augment import bag_of_words, token_sequences

            ids = [e.ids for e in self.tokenizer.encode_batch(text.to_pylist())]
            extra = (token_sequences(ids, self.text["max_tokens"]) if self.text["representation"] == "sequence"
                     else bag_of_words(ids, self.tokenizer.get_vocab_size()))
            x = np.hstack([x, extra])
        return x


@dataclass(frozen=True)
class Loaded:
    """A registered version, ready: the module, its preprocessing, and where it came from."""

    module: Any
    preprocessing: Preprocessing
    version: Version
    lineage: dict = field(repr=False)

    def predict(self, batch: pa.RecordBatch | pa.Table, chunk: int = 512) -> dict[str, np.ndarray]:
        """Raw rows in, {"prediction", "probability"} out (a regression: the value in the target's units)."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(self.preprocessing.features(batch)))
        with torch.no_grad():
            out = torch.cat([self.module(b) for b in x.split(chunk)]) if len(x) else torch.empty(0, 1)
        t = self.preprocessing.transform
        if t.get("task") == "regression":
            return {"prediction": out.squeeze(-1).double().numpy() * t["target"]["scale"] + t["target"]["center"]}
        prob, idx = torch.softmax(out.float(), dim=1).max(dim=1)
        classes = np.array([str(c) for c in t["classes"]], dtype=object)
        return {"prediction": classes[idx.numpy()], "probability": prob.numpy()}


def load_model(spec: str, repo: str | Path = ".") -> Loaded:
    """A registered version (NAME@VERSION, NAME@STAGE or NAME@latest) with its saved preprocessing."""
    v = resolve(spec, repo)
    rec = read_lineage(v, repo)
    read = reader(repo, v)
    model = recorded(v, rec.get("model"), "weights")
    where = f"{v}: {model['path']}"
    module = model_from_bytes(read(model["path"], "weights"), where, model["sha256"])
    pre = rec.get("preprocessing") or {}
    fitted = recorded(v, pre.get("transform"), "transform")
    transform = json.loads(checked(read(fitted["path"], "transform"), fitted, v, "transform"))
    tokenizer = None
    if pre.get("tokenizer"):
        from tokenizers import Tokenizer

        tok = recorded(v, pre["tokenizer"], "tokenizer")
        tokenizer = Tokenizer.from_str(checked(read(tok["path"], "tokenizer"), tok, v, "tokenizer").decode())
    params, inp = rec.get("params") or {}, rec.get("input") or {}
    prep = Preprocessing(transform=transform, ingest=params.get("ingest", {}),
                         text=params.get("augment", {}).get("text", {}), columns=dict(inp.get("columns") or []),
                         kind=inp.get("kind", "table"), tokenizer=tokenizer)
    return Loaded(module=module, preprocessing=prep, version=v, lineage=rec)
