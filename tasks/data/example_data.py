"""Example sources of the three kinds the pipeline takes, made offline from shipped data.

    python -m tasks.data.example_data images data/sources/digits_png   # PNG folders, one per class
    python -m tasks.data.example_data table data/sources/wine.csv       # numbers, categories, gaps
    python -m tasks.data.example_data text data/sources/docs.csv        # a text column and a label
    python -m tasks.data.example_data regression data/sources/diabetes.csv  # a numeric target

- images: the UCI digits that scikit-learn ships, written as 8x8 grayscale
  PNG files (0-16 stretched to 0-255) in one folder per digit;
- table: the UCI wine table that scikit-learn ships, with a categorical column
  (the colour intensity binned into words), string labels, 4% of the cells
  blanked and a few repeated rows, as real exports have;
- text: the first paragraph of the docstrings of Python's own standard
  library, labelled by the area of the module it documents (text, files,
  network, math): real sentences, no download.
- regression: the diabetes study that scikit-learn ships (Efron et al., 2004):
  age, sex, body-mass index, blood pressure and six blood serum measurements
  of 442 patients, and a measure of disease progression one year later.
"""

from __future__ import annotations

import csv
import importlib
import importlib.resources
import inspect
import sys
from pathlib import Path

import numpy as np

TEXT_AREAS = {
    "text": ["string", "textwrap", "difflib", "re", "codecs", "unicodedata", "html", "csv"],
    "files": ["os", "shutil", "pathlib", "tempfile", "glob", "zipfile", "tarfile", "io"],
    "network": ["http.client", "urllib.request", "urllib.parse", "socket", "email.message", "smtplib",
                "ftplib", "http.server"],
    "math": ["math", "statistics", "decimal", "fractions", "random", "cmath", "numbers"],
}


def _sklearn_csv(name: str) -> list[list[str]]:
    import gzip

    path = importlib.resources.files("sklearn.datasets") / "data" / name
    data = path.read_bytes()
    text = (gzip.decompress(data) if name.endswith(".gz") else data).decode()
    return list(csv.reader(text.splitlines()))


def images(dest: Path) -> int:
    from PIL import Image

    rows = _sklearn_csv("digits.csv.gz")
    for i, row in enumerate(rows):
        pixels = (np.asarray(row[:-1], dtype=np.float64) * 255 / 16).round().astype(np.uint8).reshape(8, 8)
        folder = dest / row[-1]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
    return len(rows)


def table(dest: Path) -> int:
    rows = _sklearn_csv("wine_data.csv")[1:]  # the first line holds counts and class names
    names = ["alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium", "total_phenols", "flavanoids",
             "nonflavanoid_phenols", "proanthocyanins", "color_intensity", "hue", "od280_od315", "proline"]
    rng = np.random.default_rng(0)
    out = []
    for row in rows:
        shade = float(row[9])
        colour = "pale" if shade < 3.5 else "medium" if shade < 6 else "deep"
        cells = row[:9] + row[10:13] + [colour]
        cells = ["" if rng.random() < 0.04 else c for c in cells]
        out.append(cells + [f"cultivar_{'abc'[int(row[13])]}"])
    out += out[:5]  # exported twice
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names[:9] + names[10:] + ["colour", "cultivar"])
        w.writerows(out)
    return len(out)


def _first_paragraphs(modules: list[str]) -> set[str]:
    found = set()
    for name in modules:
        module = importlib.import_module(name)
        objs = [o for n, o in vars(module).items() if not n.startswith("_") and (inspect.isroutine(o)
                                                                                  or inspect.isclass(o))]
        for o in list(objs):
            if inspect.isclass(o):
                objs += [v for n, v in vars(o).items() if not n.startswith("_") and inspect.isroutine(v)]
        for o in objs:
            doc = inspect.getdoc(o)
            para = " ".join(doc.split("\n\n")[0].split()) if doc else ""
            if len(para) >= 30:
                found.add(para)
    return found


def text(dest: Path, per_area: int = 250) -> int:
    rows = []
    for area, modules in TEXT_AREAS.items():
        rows += [(t, area) for t in sorted(_first_paragraphs(modules))[:per_area]]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "area"])
        w.writerows(rows)
    return len(rows)


def regression(dest: Path) -> int:
    features = [row[0].split() for row in _sklearn_csv("diabetes_data_raw.csv.gz")]
    target = [float(row[0]) for row in _sklearn_csv("diabetes_target.csv.gz")]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["age", "sex", "bmi", "blood_pressure", "s1", "s2", "s3", "s4", "s5", "s6", "progression"])
        w.writerows(row + [f"{y:g}"] for row, y in zip(features, target))
    return len(target)


def main() -> None:
    makers = {"images": images, "table": table, "text": text, "regression": regression}
    if len(sys.argv) != 3 or sys.argv[1] not in makers:
        sys.exit(f"usage: python -m tasks.data.example_data {{{','.join(makers)}}} DEST")
    n = makers[sys.argv[1]](Path(sys.argv[2]))
    print(f"example_data: {n} {sys.argv[1]} rows -> {sys.argv[2]}")


if __name__ == "__main__":
    main()
