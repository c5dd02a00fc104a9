"""``minicaffe compute-image-mean DB [mean.binaryproto]``: the mean image of a Datum LMDB.

Writes a BlobProto with Caffe's legacy dims num = 1, channels, height, width (what Caffe's
compute_image_mean writes and ``transform_param { mean_file }`` reads) holding, per pixel, the
mean over every record; prints the per-channel means (usable as ``mean_value``).
"""

from __future__ import annotations

import os
import sys

from minicaffe.commands import add_backend_argument, check_backend

HELP = "compute the mean image of a Datum LMDB (for transform_param mean_file)"
DESCRIPTION = (
    "Average every Datum of an LMDB (as written by convert-imageset) pixel by pixel and write the "
    "mean as a .binaryproto. Caffe's single-dash spelling -backend=lmdb works too."
)

_CHUNK = 256


def add_arguments(parser) -> None:
    parser.add_argument("db", metavar="DB", help="LMDB of Datum records")
    parser.add_argument(
        "output",
        metavar="OUTPUT",
        nargs="?",
        default=None,
        help="mean .binaryproto to write (omit to only print the means)",
    )
    add_backend_argument(parser)


def compute_mean(db: str):
    """(mean image C x H x W as float64, number of records) of the Datum LMDB ``db``."""
    import lmdb
    import numpy as np

    from minicaffe.data.data import open_lmdb_readonly, parse_datum
    from minicaffe.data.image_io import datum_to_array, shown_path
    from minicaffe.errors import DataError

    env = open_lmdb_readonly(db)
    total, count, shape, chunk = None, 0, None, []
    try:
        with env.begin(buffers=False) as txn:
            for index, (key, raw) in enumerate(txn.cursor()):
                where = f"LMDB '{db}' record {index} (key '{shown_path(key)}')"
                arr = datum_to_array(parse_datum(raw, where), where=where)
                if shape is None:
                    shape = arr.shape
                    total = np.zeros(shape, dtype=np.float64)
                elif arr.shape != shape:
                    raise DataError(
                        f"{where}: Datum is {arr.shape} (C, H, W) but the first record "
                        f"is {shape}; every record must have the same size"
                    )
                chunk.append(arr)
                if len(chunk) == _CHUNK:
                    total += np.sum(chunk, axis=0, dtype=np.float64)
                    chunk.clear()
                count += 1
    except lmdb.Error as exc:
        raise DataError(f"cannot read LMDB '{db}' (after {count} records): {exc}") from None
    finally:
        env.close()
    if chunk:
        total += np.sum(chunk, axis=0, dtype=np.float64)
    if count == 0:
        raise DataError(f"LMDB '{db}' holds no records")
    return total / count, count


def _check_output(path: str) -> None:
    """FileWriteError now, rather than after reading the whole DB, when ``path`` cannot be
    written: its folder is missing or not writable, or it is a folder."""
    from minicaffe.errors import FileWriteError

    folder = os.path.dirname(path) or "."
    if os.path.isdir(path):
        raise FileWriteError(path, "it is a folder")
    if not os.path.isdir(folder):
        raise FileWriteError(path, f"folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FileWriteError(path, f"folder '{folder}' is not writable")


def run(args) -> int:
    from minicaffe.prototxt import write_binaryproto

    check_backend(args)
    if args.output:
        _check_output(args.output)
    mean, count = compute_mean(args.db)
    print(f"Processed {count} files.", file=sys.stderr)
    if args.output:
        write_binaryproto(args.output, mean.astype("float32")[None], legacy=True)
        print(f"Write to {args.output}", file=sys.stderr)
    print(f"Number of channels: {mean.shape[0]}")
    for c, value in enumerate(mean.reshape(mean.shape[0], -1).mean(axis=1)):
        print(f"mean_value channel [{c}]: {value:.6g}")
    return 0
