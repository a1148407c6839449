"""predict: raw CSV rows or image files, the fitted transform, the model, Parquet in batches.

The model here is a small MLP over a real transform fitted by ingest + clean on a tiny 2x2 'image'
table; loading it from the registry is tested end to end in tests/e2e/test_registry.py.
"""

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from models import build
from tasks.data.tables import read_json
from tasks.errors import InputError
from tasks.files import TOKENIZER_FILE, split_path
from tasks.loading import Loaded, Preprocessing
from tasks.params import Split
from tasks.predict import image_batches, main, predict_files
from tasks.registry import Version
from tests.tasks.conftest import paths, run_clean, run_ingest

ROWS = 60


@pytest.fixture
def pixels(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(ROWS) % 3
    return rng.integers(0, 16, (ROWS, 4)) + labels[:, None] * 12, labels


def write_csv(path, pixels, labels=None, header=True):
    lines = [",".join([f"x{j}" for j in range(4)] + (["label"] if labels is not None else []))] if header else []
    for i, row in enumerate(pixels):
        lines.append(",".join(map(str, row)) + (f",{labels[i]}" if labels is not None else ""))
    path.write_text("\n".join(lines) + "\n")
    return path


def model_for(tmp_path, pixels, kind="images", header=True) -> Loaded:
    """A model and the preprocessing that ingest + clean fitted on the table (as load_model returns them)."""
    src = write_csv(tmp_path / "train.csv", *pixels)
    manifest = run_ingest(src, tmp_path, image_shape=(2, 2))
    run_clean(tmp_path, per_column=False, split=Split(val_fraction=0.2, test_fraction=0.2, seed=1))
    torch.manual_seed(0)
    module = build("mlp", {"n_features": 4, "n_outputs": 3, "hidden": (8,), "dropout": 0.0, "norm": "none"}).eval()
    ingest = {"source": str(src), "format": "auto", "header": header, "delimiter": ",", "encoding": "utf8",
              "label_column": "label", "image_shape": [2, 2]}
    prep = Preprocessing(transform=read_json(paths(tmp_path)["transform"], "transform"), ingest=ingest, text={},
                         columns=manifest["schema"], kind=kind)
    return Loaded(module=module, preprocessing=prep, version=Version("tiny", "v0.0.1", "0" * 40), lineage={})


def write_pngs(folder, pixels):
    folder.mkdir()
    for i, row in enumerate(pixels):
        Image.fromarray(row.reshape(2, 2).astype(np.uint8), mode="L").save(folder / f"{i:03d}.png")
    return folder


def test_images_and_csv_rows_of_the_same_pixels_predict_alike_in_batches(tmp_path, pixels):
    m = model_for(tmp_path, pixels)
    csv = write_csv(tmp_path / "new.csv", pixels[0])  # no label column: raw features only
    s = predict_files(m, [csv], tmp_path / "from_csv.parquet", batch_rows=7)
    assert s["rows"] == ROWS
    assert pq.ParquetFile(tmp_path / "from_csv.parquet").metadata.num_row_groups == math.ceil(ROWS / 7)
    predict_files(m, [write_pngs(tmp_path / "pngs", pixels[0])], tmp_path / "from_png.parquet", batch_rows=16)
    a, b = pq.read_table(tmp_path / "from_csv.parquet"), pq.read_table(tmp_path / "from_png.parquet")
    assert a["row"].to_pylist() == list(range(ROWS)) and b["row"].to_pylist() == list(range(ROWS))
    assert a["prediction"].to_pylist() == b["prediction"].to_pylist()
    assert np.allclose(a["probability"].to_numpy(), b["probability"].to_numpy())
    assert set(a["prediction"].to_pylist()) <= {"0", "1", "2"}
    assert b["source"][5].as_py().endswith("pngs/005.png")
    # the same as the module on the transformed rows, computed here by hand
    t = m.preprocessing.transform
    x = (pixels[0] - t["numeric"][0]["center"]) / t["numeric"][0]["scale"]
    expected = m.module(torch.tensor(x, dtype=torch.float32)).argmax(1).numpy().astype(str)
    assert a["prediction"].to_pylist() == expected.tolist()


def test_a_headerless_csv_reads_like_the_source_with_or_without_labels(tmp_path, pixels):
    m = model_for(tmp_path, pixels, header=False)
    predict_files(m, [write_csv(tmp_path / "a.csv", *pixels, header=False)], tmp_path / "a.parquet")
    predict_files(m, [write_csv(tmp_path / "b.csv", pixels[0], header=False)], tmp_path / "b.parquet")
    assert pq.read_table(tmp_path / "a.parquet")["prediction"] == pq.read_table(tmp_path / "b.parquet")["prediction"]
    (tmp_path / "d.csv").write_text("1,2,3,4\n5,6,x,8\n")  # no header: the column named as ingest named it
    with pytest.raises(InputError, match=r"d.csv: line 2, column 'x2': 'x' is not a valid"):
        predict_files(m, [tmp_path / "d.csv"], tmp_path / "d.parquet")
    (tmp_path / "c.csv").write_text("1,2,3\n")
    with pytest.raises(InputError, match=r"c.csv: 3 columns in the first line; .* give 4 or 5"):
        predict_files(m, [tmp_path / "c.csv"], tmp_path / "c.parquet")


def test_bad_inputs_are_named_and_write_nothing(tmp_path, pixels):
    m = model_for(tmp_path, pixels)
    out = tmp_path / "out.parquet"
    (tmp_path / "nox2.csv").write_text("x0,x1,x3\n1,2,3\n")
    with pytest.raises(InputError, match=r"nox2.csv: missing column\(s\) \['x2'\]"):
        predict_files(m, [tmp_path / "nox2.csv"], out)
    # a bad value: its column by name and the file's line (1-based, the header line 1), wherever the batch starts
    (tmp_path / "words.csv").write_text("x0,x1,x2,x3\n" + "1,2,3,4\n" * 50 + '1,2,"3,\n3",4\n1,2,3,4\n1,two,3,4\n')
    with pytest.raises(InputError, match=r"words.csv: line 55, column 'x1': 'two' is not a valid int64"):
        predict_files(m, [tmp_path / "words.csv"], out, batch_rows=7)
    (tmp_path / "words.jsonl").write_text('{"x0": 1, "x1": 2, "x2": 3, "x3": 4}\n' * 3 + '\n{"x0": 1, "x1": "two"}\n')
    with pytest.raises(InputError, match=r"words.jsonl: line 5, column 'x1': a string where earlier lines have a num"):
        predict_files(m, [tmp_path / "words.jsonl"], out)
    (tmp_path / "short.csv").write_text("x0,x1,x2,x3\n1,2,3,4\n1,2,3\n")
    with pytest.raises(InputError, match=r"short.csv: line 3: 3 values where the header has 4 \(x0, x1, x2, x3\)"):
        predict_files(m, [tmp_path / "short.csv"], out)
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((3, 3), np.uint8), mode="L").save(tmp_path / "imgs" / "big.png")
    Image.fromarray(np.zeros((2, 2, 3), np.uint8), mode="RGB").save(tmp_path / "imgs" / "rgb.png")
    with pytest.raises(InputError, match=r"2 bad image file\(s\):\n  - .*big.png: 3x3 L, expected 2x2 L"):
        predict_files(m, [tmp_path / "imgs"], out)
    with pytest.raises(InputError, match="missing.csv: input not found"):
        predict_files(m, [tmp_path / "missing.csv"], out)
    with pytest.raises(InputError, match="name it \\*.parquet"):
        predict_files(m, [tmp_path / "nox2.csv"], tmp_path / "out.csv")
    assert not out.exists()
    (tmp_path / "t").mkdir()
    table_model = model_for(tmp_path / "t", pixels, kind="table")
    with pytest.raises(InputError, match="images given, but the model was trained on a table source"):
        predict_files(table_model, [tmp_path / "imgs" / "big.png"], out)


def test_an_image_file_gives_the_same_pixels_to_predict_as_to_ingest(tmp_path):
    """One decoder for both: the bytes ingest stored for a file are the bytes predict feeds the model."""
    rng = np.random.default_rng(1)
    files = []
    for cls in ("a", "b"):
        (tmp_path / "src" / cls).mkdir(parents=True)
        for i in range(3):
            files.append(tmp_path / "src" / cls / f"{i}.png")
            Image.fromarray(rng.integers(0, 256, (3, 2), dtype=np.uint8), mode="L").save(files[-1])
    run_ingest(tmp_path / "src", tmp_path / "out", image_shape=(3, 2))
    raw = pq.read_table(paths(tmp_path / "out")["raw"])
    ingested = np.column_stack([raw[f"x{j}"].to_numpy() for j in range(6)])
    prep = Preprocessing(transform={}, ingest={"image_shape": [3, 2]}, text={}, columns={}, kind="images")
    (names, batch), = image_batches(sorted(files), prep, batch_rows=100)
    predicted = np.column_stack([batch[f"x{j}"].to_numpy() for j in range(6)])
    assert names == [str(f) for f in sorted(files)]
    assert ingested.dtype == predicted.dtype == np.uint8
    assert ingested.tobytes() == predicted.tobytes()


def test_the_command_names_a_bad_model_spec(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["digits", str(tmp_path / "x.csv"), "-o", str(tmp_path / "p.parquet"), "--repo", str(tmp_path)])
    assert exit_.value.code == 2
    assert "model spec 'digits': expected NAME@VERSION" in capsys.readouterr().err


@pytest.mark.parametrize("representation", ["bag", "sequence"])
def test_raw_text_gets_the_features_augment_gave_the_test_split(tmp_path, representation):
    from tokenizers import Tokenizer

    from tasks.augment import augment
    from tasks.data.tables import read_model_table, read_table
    from tasks.params import Augment, TextAug

    words = {0: "apple banana cherry", 1: "engine piston valve"}
    (tmp_path / "s.csv").write_text("\n".join(["text,label"] + [f"{words[i % 2]} Item{i},{i % 2}"
                                                                 for i in range(200)]) + "\n")
    manifest = run_ingest(tmp_path / "s.csv", tmp_path, text_column="text")
    run_clean(tmp_path)
    p = paths(tmp_path)
    text = TextAug(vocab_size=300, min_frequency=1, representation=representation, max_tokens=6)
    augment(Augment(text=text), p["clean"], p["transform"], p["splits"])
    prep = Preprocessing(transform=read_json(p["transform"], "transform"), ingest={"header": True},
                         text=text.model_dump(), columns=manifest["schema"],
                         tokenizer=Tokenizer.from_file(str(p["splits"] / TOKENIZER_FILE)))
    test = read_model_table(split_path(p["splits"], "test"))
    raw = read_table(p["raw"]).filter(read_table(p["clean"])["split"].to_numpy(zero_copy_only=False) == "test")
    expected = np.column_stack([test[c].to_numpy() for c in test.column_names if c not in ("label", "split")])
    assert np.array_equal(prep.features(raw), expected)
