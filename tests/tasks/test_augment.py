"""augment: split files, training rows only, byte-identical per seed."""

import numpy as np
import pyarrow.parquet as pq
import torch

from tasks.augment import augment, augment_images
from tasks.params import Augment
from tasks.tables import read_model_table, sha256_file


def test_only_the_training_split_grows(staged, tmp_path):
    clean = read_model_table(staged["clean"])
    counts = {s: clean["split"].to_pylist().count(s) for s in ("train", "val", "test")}
    out = augment(Augment(copies=2), staged["clean"], tmp_path / "splits")
    assert out["rows"] == {"train": 3 * counts["train"], "val": counts["val"], "test": counts["test"]}
    val = pq.read_table(tmp_path / "splits" / "val.parquet")
    assert val.equals(clean.filter(np.array(clean["split"].to_pylist()) == "val"))


def test_same_seed_gives_byte_identical_files(staged, tmp_path):
    augment(Augment(seed=7), staged["clean"], tmp_path / "a")
    augment(Augment(seed=7), staged["clean"], tmp_path / "b")
    augment(Augment(seed=8), staged["clean"], tmp_path / "c")
    assert sha256_file(tmp_path / "a/train.parquet") == sha256_file(tmp_path / "b/train.parquet")
    assert sha256_file(tmp_path / "a/train.parquet") != sha256_file(tmp_path / "c/train.parquet")


def test_augmented_images_stay_close_to_their_originals():
    gen = torch.Generator().manual_seed(0)
    img = torch.zeros(1, 64)
    img[0, 27:29] = 1.0  # a short stroke in the middle of an 8x8 image
    moved = augment_images(img, (8, 8), Augment(rotation_degrees=10, shift_pixels=0.5), gen)
    assert moved.shape == img.shape
    assert not torch.equal(moved, img)
    assert abs(moved.sum() - img.sum()) < 0.6  # mass is moved, not created
    none = augment_images(img, (8, 8), Augment(rotation_degrees=0, shift_pixels=0), gen)
    torch.testing.assert_close(none, img, atol=1e-6, rtol=0)
