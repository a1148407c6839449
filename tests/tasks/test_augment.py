"""augment: split files, training rows only, images / tables / text, byte-identical per seed."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tasks.augment import augment, augment_images, augment_table, bag_of_words
from tasks.data import inherit
from tasks.data.tables import read_model_table, sha256_file
from tasks.errors import InputError
from tasks.files import TOKENIZER_FILE
from tasks.params import Augment, ImageAug, TableAug, TextAug
from tasks.params.continual import NEW_ROWS_ONLY
from tests.tasks.conftest import paths, run_clean, run_ingest


def test_only_the_training_split_grows(staged, tmp_path):
    clean = read_model_table(staged["clean"])
    counts = {s: clean["split"].to_pylist().count(s) for s in ("train", "val", "test")}
    out = augment(Augment(copies=2), staged["clean"], staged["transform"], tmp_path / "splits")
    assert out["rows"] == {"train": 3 * counts["train"], "val": counts["val"], "test": counts["test"]}
    val = pq.read_table(tmp_path / "splits" / "val.parquet")
    assert val.equals(clean.filter(np.array(clean["split"].to_pylist()) == "val"))


def test_same_seed_gives_byte_identical_files(staged, tmp_path):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        augment(Augment(seed=seed), staged["clean"], staged["transform"], tmp_path / name)
    assert sha256_file(tmp_path / "a/train.parquet") == sha256_file(tmp_path / "b/train.parquet")
    assert sha256_file(tmp_path / "a/train.parquet") != sha256_file(tmp_path / "c/train.parquet")


def test_augmented_images_stay_close_to_their_originals():
    gen = torch.Generator().manual_seed(0)
    img = torch.zeros(1, 64)
    img[0, 27:29] = 1.0  # a short stroke in the middle of an 8x8 image
    moved = augment_images(img, (8, 8), ImageAug(rotation_degrees=10, shift_pixels=0.5, noise_std=0), gen)
    assert moved.shape == img.shape and not torch.equal(moved, img)
    assert abs(moved.sum() - img.sum()) < 0.6  # mass is moved, not created
    none = augment_images(img, (8, 8), ImageAug(p_rotate=0, p_shift=0, p_noise=0), gen)
    torch.testing.assert_close(none, img, atol=1e-6, rtol=0)


def test_flips_follow_their_probabilities():
    gen = torch.Generator().manual_seed(0)
    img = torch.zeros(400, 4)
    img[:, 0] = 1.0  # top-left pixel of a 2x2 image
    off = dict(p_rotate=0, p_shift=0, p_noise=0)
    h = augment_images(img, (2, 2), ImageAug(p_hflip=1.0, **off), gen)
    assert (h[:, 1] == 1).all() and (h[:, 0] == 0).all()
    v = augment_images(img, (2, 2), ImageAug(p_vflip=0.5, **off), gen)
    assert 150 < int((v[:, 2] == 1).sum()) < 250  # about half moved to the bottom-left


def test_table_mixup_stays_within_a_class_and_noise_skips_one_hot_columns():
    rng = np.random.default_rng(0)
    x = np.hstack([rng.normal(size=(100, 2)), np.eye(2)[rng.integers(0, 2, 100)]]).astype(np.float32)
    y = np.repeat([0, 1], 50)
    x[:50, 0], x[50:, 0] = -10.0, 10.0  # the class shows in column 0
    out, labels = augment_table(x, y, 2, TableAug(noise_std=0.0, mixup_alpha=0.4), rng)
    assert np.allclose(out[:50, 0], -10) and np.allclose(out[50:, 0], 10)  # mixing never crosses classes
    assert not np.allclose(out[:, 1], x[:, 1]) and np.array_equal(labels, y)
    noisy, _ = augment_table(x, y, 2, TableAug(noise_std=0.5), rng)
    assert np.array_equal(noisy[:, 2:], x[:, 2:]) and not np.allclose(noisy[:, :2], x[:, :2])


def test_regression_mixup_mixes_targets_in_the_same_proportion():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    y = (2.0 * x[:, 0] - x[:, 1]).astype(np.float32)  # a target linear in the features
    out, target = augment_table(x, y, 3, TableAug(noise_std=0.0, mixup_alpha=0.4), rng, regression=True)
    assert not np.allclose(target, y)
    np.testing.assert_allclose(target, 2.0 * out[:, 0] - out[:, 1], atol=1e-5)  # still on the same line


def test_text_is_tokenized_with_a_tokenizer_trained_on_train_rows_only(tmp_path):
    words = {0: "apple banana cherry", 1: "engine piston valve"}
    rows = ["text,label"] + [f"{words[i % 2]} item{i},{i % 2}" for i in range(200)]
    (tmp_path / "s.csv").write_text("\n".join(rows) + "\n")
    run_ingest(tmp_path / "s.csv", tmp_path, text_column="text")
    run_clean(tmp_path)
    p = paths(tmp_path)
    params = Augment(text=TextAug(vocab_size=300, min_frequency=1, token_dropout=0.3))
    out = augment(params, p["clean"], p["transform"], p["splits"])
    vocab = json.loads((p["splits"] / TOKENIZER_FILE).read_text())["model"]["vocab"]
    assert "apple" in vocab and "piston" in vocab and out["tokenizer_vocab"] == len(vocab)
    train = read_model_table(p["splits"] / "train.parquet")
    clean_train = read_model_table(p["clean"])["split"].to_pylist().count("train")
    assert train.num_rows == 2 * clean_train and "text" not in train.schema.names
    a = augment(params, p["clean"], p["transform"], tmp_path / "b")
    assert a == out and sha256_file(tmp_path / "b/train.parquet") == sha256_file(p["splits"] / "train.parquet")


def test_token_dropout_drops_tokens():
    ids = [[5, 5, 6, 7] * 50]
    full = bag_of_words(ids, 8)
    dropped = bag_of_words(ids, 8, 0.5, np.random.default_rng(0))
    assert np.rint(np.expm1(full)).sum() == 200 and 60 < np.expm1(dropped).sum() < 140  # counts, log1p in float32


# --- continual.strategy: the new rows' training split and the replay split (tests/tasks/conftest.py's digits) --


def _continual(version: dict, out, strategy: str, rows=None) -> dict:
    return augment(Augment(copies=0), version["clean"], version["transform"], out, None,
                   rows or version["rows"], version["buffer"], strategy)


def test_a_new_rows_strategy_trains_on_the_newest_experience_and_replays_the_buffer(continual_lineage, tmp_path):
    v1 = continual_lineage["v1"]
    clean, rows = read_model_table(v1["clean"]), inherit.read_rows(v1["rows"])
    train = np.array(clean["split"].to_pylist()) == "train"
    new = train & (rows["experience"].to_numpy() == 1)
    out = _continual(v1, tmp_path / "naive", "naive")
    buffer = pq.read_table(v1["buffer"] / "buffer.parquet")
    assert out["rows"] == {"train": int(new.sum()), "val": clean["split"].to_pylist().count("val"),
                           "test": clean["split"].to_pylist().count("test"), "replay": buffer.num_rows}
    written = pq.read_table(tmp_path / "naive" / "train.parquet")
    assert written.drop_columns(["split"]).equals(clean.filter(new).drop_columns(["split"]))
    assert set(written["label"].to_pylist()) == {2, 3}  # v1's new rows are its new classes
    replay = pq.read_table(tmp_path / "naive" / "replay.parquet")
    assert set(replay["split"].to_pylist()) == {"replay"}
    assert replay.drop_columns(["split"]).equals(buffer.select(clean.schema.names).drop_columns(["split"]))
    assert json.loads((tmp_path / "naive" / "replay.json").read_text()) == {
        "current_experience": 1, "experience": buffer["experience"].to_pylist()}
    joint = _continual(v1, tmp_path / "joint", "joint")  # every training row, and the buffer all the same
    assert joint["rows"] | {"train": None} == out["rows"] | {"train": None} and joint["rows"]["train"] == train.sum()


def test_a_new_rows_strategy_without_a_new_training_row_is_refused(continual_lineage, tmp_path):
    """Experience 1 holds only val and test rows here: nothing new to train on, so no run is started."""
    v1 = continual_lineage["v1"]
    rows = inherit.read_rows(v1["rows"])
    split, exp = rows["split"].to_numpy(), rows["experience"].to_numpy()
    inherit.write_rows(tmp_path / "rows.parquet", rows["row"].to_numpy(), split, np.where(split == 0, 0, exp),
                       inherit.experiences_of(rows, v1["rows"]))
    for strategy in NEW_ROWS_ONLY:
        with pytest.raises(InputError, match=rf"continual\.strategy {strategy} .* no new training row "
                                             r"\(experience 1\).*continual\.strategy: joint"):
            _continual(v1, tmp_path / strategy, strategy, tmp_path / "rows.parquet")
        assert not (tmp_path / strategy).exists()
    assert _continual(v1, tmp_path / "joint", "joint", tmp_path / "rows.parquet")["rows"]["train"] > 0


def test_rows_of_another_clean_table_are_refused(continual_lineage, tmp_path):
    with pytest.raises(InputError, match="rerun clean"):
        _continual(continual_lineage["v1"], tmp_path, "naive", continual_lineage["v0"]["rows"])


def test_a_new_rows_strategy_on_the_parents_own_data_is_refused(continual_lineage, tmp_path):
    """A child of v1 cleaned from v1's data again: every row is the parent's (no experience is added, so the
    newest one is the parent's own), and a strategy that trains on the rows the parent has not seen has none."""
    from tests.tasks.conftest import as_parent, continual_version

    as_parent(continual_lineage["v1"], tmp_path / "parent")
    again = continual_version(tmp_path / "again", [0, 1, 2, 3], tmp_path / "parent")
    assert inherit.experiences_of(inherit.read_rows(again["rows"]), again["rows"]) == \
        inherit.experiences_of(inherit.read_rows(continual_lineage["v1"]["rows"]), again["rows"])
    with pytest.raises(InputError, match=r"continual\.strategy naive .* no new training row \(experience 1 is the "
                                         r"parent's own\)"):
        augment(Augment(copies=0), again["clean"], again["transform"], tmp_path / "splits", None, again["rows"],
                again["buffer"], "naive", parent=tmp_path / "parent")
    assert again["buffer_record"]["new_training_rows"] == 0  # nothing new enters the buffer either ...
    assert sha256_file(again["buffer"] / "buffer.parquet") == sha256_file(tmp_path / "parent" / "buffer.parquet")
