"""``minicaffe convert-imageset [flags] ROOT LIST DB``: images + labels -> an LMDB of Datum.

The database is what Caffe's convert_imageset writes and Caffe's Data layer reads: one record
per listed image, key ``%08d_<path as listed>`` (the index in the possibly shuffled list), value
a serialized Datum holding uint8 C x H x W pixels in BGR order (or, with --encoded, the image
file's bytes with ``encoded: true``) and the label.
"""

from __future__ import annotations

import os
import sys

from minicaffe.commands import add_backend_argument, check_backend

HELP = "build an LMDB of Caffe Datum records from a list of images and labels"
DESCRIPTION = (
    "Convert images to an LMDB of Datum records that Caffe's (and minicaffe's) Data layer reads. "
    "LIST has one '<path relative to ROOT> <integer label>' per line (split at the last space). "
    "Caffe's single-dash flag spellings (-shuffle, -resize_height=32, -backend=lmdb) work too."
)

_COMMIT_EVERY = 1000


def add_arguments(parser) -> None:
    parser.add_argument(
        "root",
        metavar="ROOT",
        help="folder prefixed to every listed path (given as is, so end it with '/')",
    )
    parser.add_argument("list_file", metavar="LIST", help="text file: '<path> <label>' per line")
    parser.add_argument("db", metavar="DB", help="LMDB directory to create (must not exist)")
    parser.add_argument(
        "--gray",
        "-gray",
        action="store_true",
        help="decode images as one grey channel (default: 3 channels, BGR)",
    )
    parser.add_argument(
        "--shuffle", "-shuffle", action="store_true", help="shuffle the list before writing"
    )
    parser.add_argument(
        "--seed",
        "-seed",
        type=int,
        default=None,
        help="random seed of --shuffle (default: a fresh one, as Caffe)",
    )
    add_backend_argument(parser)
    parser.add_argument(
        "--resize_height",
        "--resize-height",
        "-resize_height",
        type=int,
        default=0,
        help="resize to this height (with --resize_width)",
    )
    parser.add_argument(
        "--resize_width",
        "--resize-width",
        "-resize_width",
        type=int,
        default=0,
        help="resize to this width (with --resize_height)",
    )
    parser.add_argument(
        "--check_size",
        "--check-size",
        "-check_size",
        action="store_true",
        help="fail when images differ in size",
    )
    parser.add_argument(
        "--encoded",
        "-encoded",
        action="store_true",
        help="store encoded images (the file's bytes when no resize is asked)",
    )
    parser.add_argument(
        "--encode_type",
        "--encode-type",
        "-encode_type",
        default="",
        help="re-encode as this format (png, jpg, ...); implies --encoded",
    )


def run(args) -> int:
    import lmdb
    import numpy as np

    from minicaffe.data.image_data import parse_image_list
    from minicaffe.data.image_io import array_to_datum, encode_image, image_format, read_image
    from minicaffe.errors import DataError
    from minicaffe.proto import caffe_pb2

    check_backend(args)
    if (args.resize_height > 0) != (args.resize_width > 0):
        raise DataError(
            "--resize_height and --resize_width must be given together; received "
            f"{args.resize_height} and {args.resize_width}"
        )
    if os.path.exists(args.db):
        raise DataError(f"'{args.db}' already exists; remove it or choose another DB name")
    entries = parse_image_list(args.list_file, "convert-imageset")
    if args.shuffle:
        order = np.random.default_rng(args.seed).permutation(len(entries))
        entries = [entries[i] for i in order]
    print(f"A total of {len(entries)} images.", file=sys.stderr)
    color = not args.gray
    height, width = args.resize_height, args.resize_width
    enc = args.encode_type.lower()
    encoded = args.encoded or bool(enc)

    os.makedirs(args.db)
    env = lmdb.open(args.db, map_size=1 << 30, subdir=True)
    written = skipped = 0
    first_size = None
    batch: list[tuple[bytes, bytes]] = []

    def commit() -> None:
        nonlocal env
        while True:
            try:
                with env.begin(write=True) as txn:
                    for k, v in batch:
                        txn.put(k, v)
                break
            except lmdb.MapFullError:  # grow the map and retry the whole transaction
                env.set_mapsize(env.info()["map_size"] * 2)
        batch.clear()

    try:
        for line_id, (name, label, line_no) in enumerate(entries):
            path = args.root + name
            try:
                img = read_image(
                    path,
                    height=height,
                    width=width,
                    color=color,
                    where=f"'{args.list_file}' line {line_no}",
                )
            except DataError as exc:
                print(f"convert-imageset: skipping: {exc}", file=sys.stderr)
                skipped += 1
                continue
            if args.check_size:
                if first_size is None:
                    first_size = img.shape
                elif img.shape != first_size:
                    raise DataError(
                        f"'{path}' ('{args.list_file}' line {line_no}) is "
                        f"{img.shape} (C, H, W) but the first image is {first_size} "
                        "(--check_size)"
                    )
            if encoded:
                fmt = enc or image_format(name)
                if not enc and not fmt:
                    raise DataError(
                        f"cannot guess the encoding of '{path}' from its name; give --encode_type"
                    )
                if (
                    not height
                    and fmt == image_format(name)
                    and _native_channels(path) == (3 if color else 1)
                ):
                    with open(path, "rb") as fh:
                        payload = fh.read()
                else:
                    payload = encode_image(img, fmt)
                datum = caffe_pb2.Datum(data=payload, label=label, encoded=True)
            else:
                datum = array_to_datum(img, label)
            key = f"{line_id:08d}_{name}".encode()
            batch.append((key, datum.SerializeToString()))
            written += 1
            if len(batch) >= _COMMIT_EVERY:
                commit()
                print(f"Processed {written} files.", file=sys.stderr)
        if batch:
            commit()
    finally:
        env.close()
    print(
        f"Processed {written} files" + (f" ({skipped} skipped)." if skipped else "."),
        file=sys.stderr,
    )
    if written == 0:
        raise DataError(f"no image of '{args.list_file}' could be read; '{args.db}' is empty")
    return 0


def _native_channels(path: str) -> int:
    from PIL import Image

    with Image.open(path) as img:
        return 1 if img.mode in ("1", "L", "I", "I;16", "F", "LA", "La") else 3
