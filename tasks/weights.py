"""A model rebuilt from its safetensors file alone: the one loader of weights, and never a pickle.

    from tasks.weights import rebuild_model
    module = rebuild_model("model/model.safetensors")              # eval mode; what evaluate scores
    module = rebuild_model(path, sha256=recorded)                  # refused if the bytes changed
    module = model_from_bytes(data, "digits@v0.0.3: model/model.safetensors", sha256)   # bytes read via DVC

Train writes the model's name and config into the file's safetensors metadata; the module is
rebuilt with models.build and the state dict loaded strictly. A pickle (torch.save, or a raw
pickle renamed .safetensors) is refused without being unpickled, and so is a file whose SHA-256
differs from the one recorded at registration. Used by evaluate, register and tasks/loading.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tasks.errors import InputError

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format: a zip archive holding a pickle
PICKLE_PROTOCOL = 0x80  # a raw pickle of protocol 2 or later starts with this opcode


def _is_pickle(data: bytes) -> bool:
    return data[:4] == ZIP_MAGIC or (len(data) > 1 and data[0] == PICKLE_PROTOCOL and 2 <= data[1] <= 5)


def parse_weights(data: bytes, where: str, sha256: str | None = None) -> tuple[dict, dict]:
    """(state dict, metadata) of safetensors bytes; the hash first, and never an unpickling."""
    got = hashlib.sha256(data).hexdigest()
    if sha256 is not None and got != sha256:
        kind = " (and it is now a pickle)" if _is_pickle(data) else ""
        raise InputError(f"{where}: sha256 {got[:16]}... differs from the {sha256[:16]}... recorded at "
                         f"registration{kind}: the file was changed, so it is not loaded")
    if _is_pickle(data):
        raise InputError(f"{where}: is a pickle (torch.save) file, not safetensors; pickled model files are "
                         f"refused, never unpickled; save weights with safetensors.torch.save_file")
    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    if not (0 < n <= len(data) - 8 and data[8:9] == b"{"):
        raise InputError(f"{where}: not a safetensors file (no safetensors header in its first bytes)")
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        state = load(data)
        meta = json.loads(data[8:8 + n]).get("__metadata__") or {}
    except (SafetensorError, ValueError) as e:
        raise InputError(f"{where}: not a readable safetensors file ({e})") from None
    return state, meta


def model_from_bytes(data: bytes, where: str, sha256: str | None = None):
    """The module that safetensors bytes hold, in eval mode; `where` names them in every error."""
    from models import build

    state, meta = parse_weights(data, where, sha256)
    if "model" not in meta or "config" not in meta:
        raise InputError(f"{where}: safetensors metadata lacks 'model'/'config'; not written by train")
    try:
        module = build(meta["model"], json.loads(meta["config"]))
        module.load_state_dict(state, strict=True)
    except (ValueError, TypeError, RuntimeError) as e:
        raise InputError(f"{where}: weights do not fit model {meta['model']!r} ({e})") from None
    return module.eval()


def rebuild_model(path: Path | str, sha256: str | None = None):
    """The module of a local safetensors file written by train (model name and config in its metadata)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read the weights ({e.strerror or e})") from None
    return model_from_bytes(data, str(path), sha256)
