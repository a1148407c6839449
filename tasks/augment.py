"""augment: write the train/val/test split files; augment the training split.

    python -m tasks.augment           # what `dvc repro augment` runs

Images (when the table carries an image shape) get small random rotations,
shifts and Gaussian noise; other tables get noise only. Only the training
split is augmented, and the same seed gives byte-identical files.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from tasks.errors import InputError, run_main
from tasks.params import Augment, load_params
from tasks.tables import LABEL, SPLIT, SPLITS, feature_names, image_shape_of, read_model_table, write_table


def augment_images(x: torch.Tensor, shape: tuple[int, int], params: Augment, gen: torch.Generator) -> torch.Tensor:
    """Rotate, shift and add noise to a batch of flattened images. x: (N, H*W)."""
    n, (h, w) = x.shape[0], shape
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(params.rotation_degrees)
    # affine_grid works in [-1, 1] coordinates, so a shift of p pixels is 2p/size
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * params.shift_pixels
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle), -torch.sin(angle)
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle), torch.cos(angle)
    theta[:, 0, 2], theta[:, 1, 2] = shift[:, 0] * 2 / w, shift[:, 1] * 2 / h
    images = x.view(n, 1, h, w)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return moved.view(n, h * w)


def augment_rows(x: np.ndarray, shape: tuple[int, int] | None, params: Augment) -> np.ndarray:
    """`params.copies` augmented copies of every row, reproducible from params.seed."""
    gen = torch.Generator().manual_seed(params.seed)
    base = torch.from_numpy(x)
    out = []
    for _ in range(params.copies):
        batch = augment_images(base, shape, params, gen) if shape else base.clone()
        batch += torch.randn(batch.shape, generator=gen) * params.noise_std
        out.append(batch.numpy())
    return np.concatenate(out) if out else np.empty((0, x.shape[1]), np.float32)


def augment(params: Augment, clean_path: Path, out_dir: Path) -> dict:
    table = read_model_table(clean_path)
    features, shape = feature_names(table.schema), image_shape_of(table.schema)
    counts = {}
    for split in SPLITS:
        part = table.filter(pc.equal(table[SPLIT], split))
        if part.num_rows == 0:
            raise InputError(f"{clean_path}: the {split!r} split has no rows")
        if split == "train" and params.copies:
            x = np.column_stack([part[c].to_numpy() for c in features])
            extra = augment_rows(x, shape, params)
            y = np.tile(part[LABEL].to_numpy(), params.copies)
            cols = [pa.array(extra[:, j]) for j in range(len(features))]
            cols += [pa.array(y), pa.array(np.full(len(y), "train", dtype=object), pa.string())]
            part = pa.concat_tables([part, pa.Table.from_arrays(cols, schema=table.schema)])
        write_table(part, Path(out_dir) / f"{split}.parquet")
        counts[split] = part.num_rows
    return {"rows": counts, "image_shape": list(shape) if shape else None}


def main() -> None:
    def body():
        p = load_params()
        s = augment(p.augment, p.paths.clean, p.paths.splits)
        print(f"augment: wrote {s['rows']} rows to {p.paths.splits} "
              f"({p.augment.copies} augmented copies of each training row)")

    run_main(body)


if __name__ == "__main__":
    main()
