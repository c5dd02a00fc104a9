"""Convert the CIFAR-10 binary batches you have into what cifar10_quick reads.

    python examples/cifar10/convert_cifar10.py CIFAR_DIR [--out-dir DIR]

CIFAR_DIR holds the BINARY version of CIFAR-10 ("CIFAR-10 binary version (suitable for C
programs)": data_batch_1.bin .. data_batch_5.bin and test_batch.bin). Each record there is one
label byte followed by 3,072 pixel bytes: the 32x32 red, green and blue planes. The Python
version of the dataset is a set of pickle files, which minicaffe does not read (unpickling runs
code from the file); use the binary version. Nothing is downloaded.

Writes, as Caffe's convert_cifar_data and compute_image_mean do:
* cifar10_train_lmdb (50,000 records, keys ``%05d``) and cifar10_test_lmdb (10,000): Datum
  3 x 32 x 32 uint8 with the planes kept in the file's order (R, G, B, as Caffe's converter
  keeps them) and the label;
* mean.binaryproto: the mean training image (legacy num/channels/height/width dims).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RECORD = 1 + 3 * 32 * 32
TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST_FILES = ["test_batch.bin"]


def read_batches(folder: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,)) from CIFAR-10 binary batch files."""
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.exists():
            hint = ""
            if (folder / name.replace(".bin", "")).exists():
                hint = (
                    " (found the Python/pickle version; download the binary version of "
                    "CIFAR-10 instead)"
                )
            raise SystemExit(f"convert_cifar10: '{path}' not found{hint}")
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size % RECORD:
            raise SystemExit(
                f"convert_cifar10: '{path}' has {raw.size} bytes, not a multiple "
                f"of the {RECORD}-byte CIFAR-10 record"
            )
        rec = raw.reshape(-1, RECORD)
        if rec[:, 0].max(initial=0) > 9:
            raise SystemExit(f"convert_cifar10: '{path}' has labels above 9; is it CIFAR-100?")
        labels.append(rec[:, 0])
        images.append(rec[:, 1:].reshape(-1, 3, 32, 32))
    return np.concatenate(images), np.concatenate(labels)


def write_lmdb(db: Path, images: np.ndarray, labels: np.ndarray) -> None:
    import lmdb

    from minicaffe.proto import caffe_pb2

    if db.exists():
        raise SystemExit(f"convert_cifar10: '{db}' exists; remove it first")
    env = lmdb.open(str(db), map_size=max(1 << 26, 4 * images.nbytes))
    with env.begin(write=True) as txn:
        for i in range(len(images)):  # one record per image
            datum = caffe_pb2.Datum(
                channels=3, height=32, width=32, data=images[i].tobytes(), label=int(labels[i])
            )
            txn.put(f"{i:05d}".encode(), datum.SerializeToString())
    env.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cifar_dir", help="folder with data_batch_*.bin and test_batch.bin")
    parser.add_argument("--out-dir", default=str(HERE), help="default: examples/cifar10")
    args = parser.parse_args(argv)
    from minicaffe.prototxt import write_binaryproto

    src, out = Path(args.cifar_dir), Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_x, train_y = read_batches(src, TRAIN_FILES)
    test_x, test_y = read_batches(src, TEST_FILES)
    write_lmdb(out / "cifar10_train_lmdb", train_x, train_y)
    write_lmdb(out / "cifar10_test_lmdb", test_x, test_y)
    mean = train_x.mean(axis=0, dtype=np.float64).astype(np.float32)
    write_binaryproto(out / "mean.binaryproto", mean, legacy=True)
    print(
        f"train: {len(train_x)} images, test: {len(test_x)} images -> {out}; mean per "
        f"channel {np.round(mean.mean(axis=(1, 2)), 3).tolist()}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
