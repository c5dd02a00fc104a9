"""Convert the MNIST idx files you have into what examples/mnist's LeNet reads.

    python examples/mnist/convert_mnist.py MNIST_DIR [--format lmdb|hdf5] [--out-dir DIR]

MNIST_DIR holds the four files from the MNIST distribution (optionally gzipped):
train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte.
Nothing is downloaded.

* ``lmdb`` (default; what Caffe's create_mnist.sh makes): mnist_train_lmdb / mnist_test_lmdb,
  one Datum per image (1 x 28 x 28 uint8, the label), keys ``%08d`` of the image index. Read by
  lenet_train_test.prototxt (the Data layer scales by 1/256).
* ``hdf5``: mnist_train_hdf5/ and mnist_test_hdf5/ with data.h5 (``data`` (N, 1, 28, 28) float32
  already scaled to [0, 1), ``label`` (N,)) and list.txt; read by lenet_train_test_hdf5.prototxt.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
SPLITS = {"train": "train", "test": "t10k"}


def _open(path: Path):
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.exists():
            return (
                gzip.open(candidate, "rb") if candidate.suffix == ".gz" else open(candidate, "rb")
            )
    raise SystemExit(f"convert_mnist: '{path}' (or '{path}.gz') not found")


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An idx file as a uint8 array: (N, rows, cols) for images, (N,) for labels."""
    with _open(path) as fh:
        raw = fh.read()
    ndim = 3 if magic == IMAGE_MAGIC else 1
    header = np.frombuffer(raw[: 4 * (1 + ndim)], dtype=">u4")
    if len(header) < 1 + ndim or header[0] != magic:
        found = int(header[0]) if len(header) else None
        raise SystemExit(
            f"convert_mnist: '{path}' is not an MNIST idx file (magic number "
            f"{found}, expected {magic})"
        )
    shape = tuple(int(d) for d in header[1:])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 * (1 + ndim))
    if body.size != int(np.prod(shape)):
        raise SystemExit(
            f"convert_mnist: '{path}' holds {body.size} values; its header says {shape}"
        )
    return body.reshape(shape)


def load_split(mnist_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = SPLITS[split]
    images = read_idx(mnist_dir / f"{prefix}-images-idx3-ubyte", IMAGE_MAGIC)
    labels = read_idx(mnist_dir / f"{prefix}-labels-idx1-ubyte", LABEL_MAGIC)
    if len(images) != len(labels):
        raise SystemExit(f"convert_mnist: {len(images)} {split} images but {len(labels)} labels")
    return images, labels


def write_lmdb(db: Path, images: np.ndarray, labels: np.ndarray) -> None:
    import lmdb

    from minicaffe.proto import caffe_pb2

    if db.exists():
        raise SystemExit(f"convert_mnist: '{db}' exists; remove it first")
    n, rows, cols = images.shape
    env = lmdb.open(str(db), map_size=max(1 << 26, 4 * images.nbytes))
    with env.begin(write=True) as txn:
        for i in range(n):  # one record per image
            datum = caffe_pb2.Datum(
                channels=1, height=rows, width=cols, data=images[i].tobytes(), label=int(labels[i])
            )
            txn.put(f"{i:08d}".encode(), datum.SerializeToString())
    env.close()


def write_hdf5(folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / "data.h5", "w") as f:
        f.create_dataset("data", data=images[:, None].astype(np.float32) * np.float32(0.00390625))
        f.create_dataset("label", data=labels.astype(np.float32))
    try:
        entry = str((folder / "data.h5").resolve().relative_to(ROOT))
    except ValueError:
        entry = str((folder / "data.h5").resolve())
    (folder / "list.txt").write_text(entry + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mnist_dir", help="folder with the four MNIST idx files")
    parser.add_argument("--format", choices=["lmdb", "hdf5"], default="lmdb")
    parser.add_argument("--out-dir", default=str(HERE), help="default: examples/mnist")
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    for split in SPLITS:
        images, labels = load_split(Path(args.mnist_dir), split)
        if args.format == "lmdb":
            write_lmdb(out / f"mnist_{split}_lmdb", images, labels)
        else:
            write_hdf5(out / f"mnist_{split}_hdf5", images, labels)
        print(
            f"{split}: {len(images)} images -> {out / f'mnist_{split}_{args.format}'}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
