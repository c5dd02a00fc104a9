"""A generated segmentation dataset: discs, squares and (rarer) triangles on a noisy background.

Each 3 x 32 x 32 image holds one to three shapes of random colours, so only the geometry tells
the classes apart; 6 % of the shapes are triangles. Labels: 0 background, 1 disc, 2 square,
3 triangle, and 255 on the one-pixel band around each shape (where it meets the background or a
shape of lower class number: ambiguous pixels, like PASCAL VOC's "void" borders), which the loss
ignores (``ignore_label: 255``). Background covers most pixels and triangles few, so an
unweighted loss favours the frequent classes: the point of ``class_weight``.

    python examples/segmentation/shapes.py [--data-dir DIR]   # writes train.h5/test.h5 + lists
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DEFAULT_DATA_DIR = HERE / "data"
CLASSES = ("background", "disc", "square", "triangle")
IGNORE = 255
SIZE = 32


def make_shapes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 3, 32, 32) float32 in [0, 1), labels (n, 1, 32, 32) float32)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    img = rng.uniform(0.0, 0.35, (n, 3, 1, 1)) + rng.normal(0, 0.04, (n, 3, SIZE, SIZE))
    label = np.zeros((n, SIZE, SIZE), dtype=np.uint8)
    for p_present in (1.0, 0.7, 0.4):  # later shapes are drawn on top
        present = rng.random(n) < p_present
        kind = rng.choice([1, 2, 3], n, p=[0.5, 0.44, 0.06])
        cy, cx = rng.uniform(6, SIZE - 6, (2, n))
        r = rng.uniform(3.0, 6.5, n)
        colour = rng.uniform(0.45, 1.0, (n, 3))
        dy = yy[None] - cy[:, None, None]
        dx = xx[None] - cx[:, None, None]
        rr = r[:, None, None]
        disc = dy**2 + dx**2 <= rr**2
        square = np.maximum(np.abs(dy), np.abs(dx)) <= 0.85 * rr
        triangle = (dy >= -rr) & (dy <= 0.8 * rr) & (np.abs(dx) <= 0.65 * (dy + rr))
        mask = (
            np.select(
                [kind[:, None, None] == 1, kind[:, None, None] == 2], [disc, square], triangle
            )
            & present[:, None, None]
        )
        shade = colour[:, :, None, None] + rng.normal(0, 0.04, (n, 3, SIZE, SIZE))
        img = np.where(mask[:, None], shade, img)
        label = np.where(mask, kind[:, None, None].astype(np.uint8), label)
    # Ambiguous pixels: background touching a shape, and the seams between two shapes.
    edge = np.zeros_like(label, dtype=bool)
    edge[:, 1:, :] |= label[:, 1:, :] < label[:, :-1, :]
    edge[:, :-1, :] |= label[:, :-1, :] < label[:, 1:, :]
    edge[:, :, 1:] |= label[:, :, 1:] < label[:, :, :-1]
    edge[:, :, :-1] |= label[:, :, :-1] < label[:, :, 1:]
    label = np.where(edge, IGNORE, label)
    img = np.clip(img, 0, 255 / 256).astype(np.float32)
    return img, label[:, None].astype(np.float32)


def class_frequencies(labels: np.ndarray) -> np.ndarray:
    """Fraction of the non-ignored pixels in each class."""
    counts = np.bincount(labels[labels != IGNORE].astype(int).ravel(), minlength=len(CLASSES))
    return counts / counts.sum()


def median_frequency_weights(freq: np.ndarray) -> np.ndarray:
    """SegNet's median frequency balancing: weight_c = median(freq) / freq_c."""
    return np.median(freq) / freq


def _entry(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path.resolve())


def prepare(
    data_dir: Path | str = DEFAULT_DATA_DIR,
    *,
    n_train: int = 768,
    n_test: int = 256,
    force: bool = False,
) -> dict:
    """Write train.h5 / test.h5 (datasets data, label) and train.txt / test.txt lists."""
    import h5py

    data_dir = Path(data_dir)
    outputs = [data_dir / f for f in ("train.h5", "test.h5", "train.txt", "test.txt")]
    if not force and all(p.exists() for p in outputs):
        return {"prepared": False, "dir": str(data_dir)}
    data_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        img, lab = make_shapes(n, seed)
        tmp = data_dir / f"{split}.h5.tmp"
        with h5py.File(tmp, "w") as f:
            f.create_dataset("data", data=img)
            f.create_dataset("label", data=lab)
        os.replace(tmp, data_dir / f"{split}.h5")
        (data_dir / f"{split}.txt").write_text(_entry(data_dir / f"{split}.h5") + "\n")
        counts[split] = n
    return {"prepared": True, "dir": str(data_dir), **counts}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Generate the shapes segmentation dataset.")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    info = prepare(args.data_dir, force=args.force)
    print(info)
    with __import__("h5py").File(Path(args.data_dir) / "train.h5", "r") as f:
        freq = class_frequencies(f["label"][...])
    print("class frequencies:", dict(zip(CLASSES, np.round(freq, 4).tolist())))
    print(
        "median-frequency weights:",
        dict(zip(CLASSES, np.round(median_frequency_weights(freq), 3).tolist())),
    )
