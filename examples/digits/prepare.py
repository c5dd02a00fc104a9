"""Prepare scikit-learn's 8x8 handwritten digits in the format examples/digits' LeNet reads.

The 1,797 digits bundled with scikit-learn (no download) are split once, with a fixed seed, into
1,437 training and 360 test images; each is upsampled from 8x8 to a 20x20 box (bilinear) centred
in a 28x28 frame, as MNIST digits are, and stored the way Caffe's MNIST example sees its input:
grey levels 0..255 scaled by 1/256 (Caffe's ``scale: 0.00390625``) into [0, 1).

Output (``data_dir``): train.h5 and test.h5 with datasets ``data`` (N, 1, 28, 28) float32 and
``label`` (N,) float32, and the HDF5Data list files train.txt / test.txt naming them (relative
to the repository root, as the prototxts expect, when data_dir lies inside it).

    python examples/digits/prepare.py [--force] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DEFAULT_DATA_DIR = HERE / "data"
N_TEST = 360
SPLIT_SEED = 0


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) with values 0..16, labels (1797,)): scikit-learn's digits.

    Read straight from the CSV file scikit-learn ships (importing scikit-learn takes longer than
    everything else here); ``sklearn.datasets.load_digits`` when that file is not where expected.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            csv = Path(folder) / "datasets" / "data" / "digits.csv.gz"
            if csv.exists():
                table = np.loadtxt(csv, delimiter=",", dtype=np.float64)
                if table.ndim == 2 and table.shape[1] == 65:
                    return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)
    from sklearn.datasets import load_digits as sklearn_load_digits

    digits = sklearn_load_digits()
    return digits.images, digits.target


def _bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) weights of bilinear resampling with pixel centres aligned (half-pixel)."""
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def digits_as_mnist(images: np.ndarray) -> np.ndarray:
    """8x8 digits with values 0..16 -> (N, 1, 28, 28) float32 in [0, 1), MNIST-like."""
    a = _bilinear_matrix(20, 8)
    box = np.einsum("ij,njk,lk->nil", a, images.astype(np.float64), a)  # (N, 20, 20)
    grey = np.clip(np.rint(box * (255.0 / 16.0)), 0, 255)
    out = np.zeros((len(images), 1, 28, 28), dtype=np.float32)
    out[:, 0, 4:24, 4:24] = grey * np.float32(0.00390625)
    return out


def _write_h5(path: Path, data: np.ndarray, label: np.ndarray) -> None:
    import h5py

    tmp = path.with_suffix(".h5.tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("data", data=data)
        f.create_dataset("label", data=label.astype(np.float32))
    os.replace(tmp, path)


def _list_entry(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path.resolve())


def prepare(
    data_dir: Path | str = DEFAULT_DATA_DIR,
    *,
    force: bool = False,
    n_train: int | None = None,
    n_test: int | None = None,
) -> dict:
    """Write the data if missing (or ``force``); returns counts, paths and the seconds taken.

    ``n_train`` / ``n_test`` keep only the first images of each split (for quick checks).
    """
    start = time.perf_counter()
    data_dir = Path(data_dir)
    lists = {split: data_dir / f"{split}.txt" for split in ("train", "test")}
    files = {split: data_dir / f"{split}.h5" for split in ("train", "test")}
    if not force and all(p.exists() for p in (*lists.values(), *files.values())):
        return {"prepared": False, "seconds": time.perf_counter() - start, "dir": str(data_dir)}
    images, target = load_digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(target))
    test_idx, train_idx = order[:N_TEST], order[N_TEST:]
    train_idx, test_idx = train_idx[:n_train], test_idx[:n_test]
    data = digits_as_mnist(images)
    data_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, idx in (("train", train_idx), ("test", test_idx)):
        _write_h5(files[split], data[idx], target[idx])
        lists[split].write_text(_list_entry(files[split]) + "\n")
        counts[split] = len(idx)
    return {
        "prepared": True,
        "seconds": time.perf_counter() - start,
        "dir": str(data_dir),
        **counts,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--force", action="store_true", help="rewrite the data even if present")
    args = parser.parse_args(argv)
    info = prepare(args.data_dir, force=args.force)
    if info["prepared"]:
        print(
            f"prepared {info['train']} training and {info['test']} test digits in "
            f"{info['dir']} ({info['seconds']:.2f} s)"
        )
    else:
        print(f"data already in {info['dir']} (use --force to rebuild)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
