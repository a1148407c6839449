"""augment: write the train/val/test split files; augment the training split.

    python -m tasks.augment           # what `dvc repro augment` runs

What a training row gets depends on the data:
- images (the table carries an image shape): rotation, shift, horizontal and
  vertical flips and Gaussian noise, each applied with its own probability;
- tables: Gaussian noise on the numeric columns, and mixup of two rows of the
  same class (so the label stays exact);
- text: a BPE tokenizer (Hugging Face tokenizers) is trained on the
  training split only and saved as `tokenizer.json` beside the split files;
  every split becomes bag-of-words features (log counts over the vocabulary),
  and augmented copies drop each token with probability `token_dropout`.

Only the training split is augmented, and the same seed gives byte-identical
files. Continual learning (`continual.strategy`): naive, replay, ewc and lwf
train on the newest experience's rows only (clean's rows.parquet says which
data version each row first appeared in; joint keeps every training row), and
the replay buffer (tasks/buffer.py) is written as one more split, `replay`,
with `replay.json`: each buffer row's experience and the newest one.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from tasks.continual.buffer import read as read_buffer
from tasks.data import inherit
from tasks.data.contract import check_model_table
from tasks.data.tables import (
    LABEL,
    SPLIT,
    SPLITS,
    feature_names,
    image_shape_of,
    model_schema,
    read_json,
    read_model_table,
    text_column_of,
    write_json,
    write_table,
)
from tasks.errors import InputError, run_main
from tasks.files import REPLAY_RECORD, TOKENIZER_FILE, split_path
from tasks.params import Augment, ImageAug, TableAug, TextAug, load_params
from tasks.params.continual import NEW_ROWS_ONLY

SPECIAL_TOKENS = ["[PAD]", "[UNK]"]  # [PAD] is id 0, what token_sequences pads with


def augment_images(x: torch.Tensor, shape: tuple[int, int], p: ImageAug, gen: torch.Generator) -> torch.Tensor:
    """Rotate, shift, flip and add noise to flattened images, each with its probability. x: (N, H*W)."""
    n, (h, w) = x.shape[0], shape

    def chosen(prob: float) -> torch.Tensor:  # which rows get this transform
        return (torch.rand(n, generator=gen) < prob).float()

    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(p.rotation_degrees) * chosen(p.p_rotate)
    # affine_grid works in [-1, 1] coordinates, so a shift of s pixels is 2s/size
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * p.shift_pixels * chosen(p.p_shift)[:, None]
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle), -torch.sin(angle)
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle), torch.cos(angle)
    theta[:, 0, 2], theta[:, 1, 2] = shift[:, 0] * 2 / w, shift[:, 1] * 2 / h
    images = x.view(n, 1, h, w)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    hflip, vflip = chosen(p.p_hflip).bool(), chosen(p.p_vflip).bool()
    out = torch.where(hflip[:, None, None, None], out.flip(-1), out)
    out = torch.where(vflip[:, None, None, None], out.flip(-2), out)
    noise = torch.randn(out.shape, generator=gen) * p.noise_std * chosen(p.p_noise)[:, None, None, None]
    return (out + noise).reshape(n, h * w)


def augment_table(x: np.ndarray, y: np.ndarray, n_numeric: int, p: TableAug, rng: np.random.Generator,
                  regression: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mixup, then noise on the numeric columns. A class mixes within itself (labels stay exact); a
    regression mixes any two rows, and their targets in the same proportion."""
    out, y = x.copy(), y.copy()
    if p.mixup_alpha > 0:
        partner = rng.permutation(len(y)) if regression else np.arange(len(y))
        for c in ([] if regression else np.unique(y)):
            rows = np.flatnonzero(y == c)
            partner[rows] = rng.permutation(rows)
        lam = rng.beta(p.mixup_alpha, p.mixup_alpha, size=(len(y), 1)).astype(np.float32)
        out = lam * out + (1 - lam) * out[partner]
        if regression:
            y = (lam[:, 0] * y + (1 - lam[:, 0]) * y[partner]).astype(y.dtype)
    out[:, :n_numeric] += rng.normal(0, p.noise_std, size=(len(y), n_numeric)).astype(np.float32)
    return out, y


def train_tokenizer(texts: list[str], p: TextAug):
    """A BPE tokenizer learned from the training split's texts.

    BPE, not WordPiece: WordPiece training in tokenizers orders its vocabulary
    differently from one process to the next, so its files were not reproducible.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=p.vocab_size, min_frequency=p.min_frequency, special_tokens=SPECIAL_TOKENS, show_progress=False))
    return tok


def bag_of_words(ids: list[list[int]], vocab: int, dropout: float = 0.0,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """log(1 + count) of every token id per text; with dropout, each token is dropped with that p."""
    out = np.zeros((len(ids), vocab), np.float32)
    for i, row in enumerate(ids):
        row = np.asarray(row, np.int64)
        if dropout and len(row):
            row = row[rng.random(len(row)) >= dropout]
        np.add.at(out[i], row, 1.0)
    return np.log1p(out)


def token_sequences(ids: list[list[int]], length: int, dropout: float = 0.0,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """Each text's token ids in order, cut or padded with 0 ([PAD]) to `length`, as float32 (exact for
    ids below 2**24); with dropout, each token is dropped with that p before cutting."""
    out = np.zeros((len(ids), length), np.float32)
    for i, row in enumerate(ids):
        row = np.asarray(row, np.int64)
        if dropout and len(row):
            row = row[rng.random(len(row)) >= dropout]
        out[i, :min(len(row), length)] = row[:length]
    return out


def _matrix(table: pa.Table, names: list[str]) -> np.ndarray:
    if not names:
        return np.empty((table.num_rows, 0), np.float32)
    return np.column_stack([table[c].to_numpy() for c in names]).astype(np.float32)


def _split_parts(table: pa.Table, clean_path: Path) -> dict[str, pa.Table]:
    """The clean table's rows of each split, in SPLITS order; every split must have some."""
    parts = {s: table.filter(pc.equal(table[SPLIT], s)) for s in SPLITS}
    for s, part in parts.items():
        if part.num_rows == 0:
            raise InputError(f"{clean_path}: the {s!r} split has no rows")
    return parts


def _write_split(x: np.ndarray, y: np.ndarray, name: str, schema: pa.Schema, out_dir: Path) -> None:
    cols = [pa.array(x[:, j]) for j in range(x.shape[1])]
    cols += [pa.array(y), pa.array(np.full(len(y), name, dtype=object), pa.string())]
    write_table(pa.Table.from_arrays(cols, schema=schema), split_path(out_dir, name))


def parent_tokenizer(path: Path, params: Augment):
    """A warm start's tokenizer (the parent's vocabulary: its embedding rows mean those tokens)."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers library raises its own Exception type
        raise InputError(f"{path}: the parent's tokenizer cannot be read ({e})") from None
    if params.text.representation == "bag" and tok.get_vocab_size() != params.text.vocab_size:
        print(f"augment: the parent's tokenizer ({path}) has {tok.get_vocab_size()} tokens; "
              f"augment.text.vocab_size {params.text.vocab_size} is not used", flush=True)
    return tok


def continual_parts(parts: dict[str, pa.Table], table: pa.Table, clean_path: Path, rows_path: Path | None,
                    buffer_dir: Path | None, strategy: str,
                    parent: Path | None = None) -> tuple[dict[str, pa.Table], dict | None]:
    """The training split a continual strategy trains on (every row: joint; else the newest experience's
    rows only, those the parent has not seen: none when every row is the parent's, as its rows.parquet in
    `parent` says), and the replay split: the buffer's rows, with each one's experience for replay.json."""
    if rows_path is None:
        return parts, None
    rows = inherit.read_rows(rows_path)
    if rows.num_rows != table.num_rows:
        raise InputError(f"{rows_path}: {rows.num_rows} rows, but {clean_path} has {table.num_rows}; rerun clean")
    listed = inherit.experiences_of(rows, rows_path)
    current = len(listed) - 1
    if strategy in NEW_ROWS_ONLY:
        new = pc.equal(rows["experience"].filter(pc.equal(table[SPLIT], "train")), current)
        parts = dict(parts, train=parts["train"].filter(new))
        whose = "" if inherit.added_experience(listed, parent) else " is the parent's own"
        if parts["train"].num_rows == 0 or whose:
            raise InputError(f"{clean_path}: continual.strategy {strategy} trains on the rows the parent has not "
                             f"seen, and this data version has no new training row (experience {current}{whose}); "
                             f"ingest new data, or set continual.strategy: joint")
    buffer = read_buffer(buffer_dir) if buffer_dir is not None else None
    if buffer is None:
        return parts, {"current_experience": current, "experience": []}
    replay = buffer.select(table.schema.names).cast(table.schema)
    return dict(parts, replay=replay), {"current_experience": current,
                                        "experience": buffer["experience"].to_numpy().tolist()}


def augment(params: Augment, clean_path: Path, transform_path: Path, out_dir: Path,
            tokenizer: Path | None = None, rows_path: Path | None = None, buffer_dir: Path | None = None,
            strategy: str = "joint", parent: Path | None = None) -> dict:
    """Write split_path(out_dir, s) for each split, the training one with `params.copies` augmented copies
    of each row, and the tokenizer for text (the parent's, when `tokenizer` names one); return the row
    counts. With rows_path (clean's experiences) and buffer_dir, the training split follows
    continual.strategy (`strategy`; `parent`, the parent stage's folder, says which rows the parent had) and
    the replay split (the buffer) is written, with replay.json."""
    table = read_model_table(clean_path)
    t = read_json(transform_path, "clean transform")
    regression = t.get("task") == "regression"
    # the boundary: finite values, labels in range
    check_model_table(table, clean_path, None if regression else len(t["classes"]))
    features, shape, text = feature_names(table.schema), image_shape_of(table.schema), text_column_of(table.schema)
    parts, replay = continual_parts(_split_parts(table, clean_path), table, clean_path, rows_path, buffer_dir,
                                    strategy, parent)
    rng, gen = np.random.default_rng(params.seed), torch.Generator().manual_seed(params.seed)
    tok, vocab, names = None, 0, list(features)
    sequence = bool(text) and params.text.representation == "sequence"
    if sequence and features:
        raise InputError(f"{clean_path}: augment.text.representation: sequence feeds the text column alone to a "
                         f"sequence model, but the table also has feature(s) {features[:5]}; use bag, or leave "
                         f"those columns out of the source")
    if text:
        tok = (parent_tokenizer(tokenizer, params) if tokenizer is not None and tokenizer.exists()
               else train_tokenizer(parts["train"][text].to_pylist(), params.text))
        vocab = tok.get_vocab_size()
        names += [f"pos{i}" for i in range(params.text.max_tokens)] if sequence else [f"tok{i}" for i in range(vocab)]
        out_dir.mkdir(parents=True, exist_ok=True)
        tok.save(str(out_dir / TOKENIZER_FILE))

    def text_features(ids: list[list[int]], dropout: float = 0.0) -> np.ndarray:
        if sequence:
            return token_sequences(ids, params.text.max_tokens, dropout, rng)
        return bag_of_words(ids, vocab, dropout, rng)

    schema = model_schema(names, shape, token_vocab=vocab if sequence else 0, regression=regression)
    counts = {}
    for s, part in parts.items():
        x, y = _matrix(part, features), part[LABEL].to_numpy()
        ids = [e.ids for e in tok.encode_batch(part[text].to_pylist())] if tok else None
        blocks, targets = [np.hstack([x, text_features(ids)]) if tok else x], [y]
        for _ in range(params.copies if s == "train" else 0):
            if shape:
                extra, extra_y = augment_images(torch.from_numpy(x), shape, params.image, gen).numpy(), y
            else:
                extra, extra_y = augment_table(x, y, len(t["numeric"]), params.table, rng, regression)
            if tok:
                extra = np.hstack([extra, text_features(ids, params.text.token_dropout)])
            blocks.append(extra)
            targets.append(extra_y)
        _write_split(np.concatenate(blocks), np.concatenate(targets), s, schema, out_dir)
        counts[s] = sum(len(block) for block in targets)
    if replay is not None:
        write_json(out_dir / REPLAY_RECORD, replay)
    return {"rows": counts, "features": len(names), "image_shape": list(shape) if shape else None,
            "tokenizer_vocab": vocab or None}


def main() -> None:
    def body():
        p = load_params()
        s = augment(p.augment, p.paths.clean, p.paths.transform, p.paths.splits,
                    p.paths.parent / "tokenizer.json" if p.train.init.from_ else None, p.paths.rows, p.paths.buffer,
                    p.continual.strategy, p.paths.parent)
        print(f"augment: wrote {s['rows']} rows of {s['features']} features to {p.paths.splits} "
              f"({p.augment.copies} augmented copies of each training row"
              + (f"; tokenizer vocabulary {s['tokenizer_vocab']}" if s["tokenizer_vocab"] else "") + ")")

    run_main(body)


if __name__ == "__main__":
    main()
