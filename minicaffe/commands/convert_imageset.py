"""``minicaffe convert-imageset [flags] ROOT LIST DB``: images + labels -> an LMDB of Datum.

The database is what Caffe's convert_imageset writes and Caffe's Data layer reads: one record
per listed image, key ``%08d_<path as listed>`` (the index in the possibly shuffled list; the
path's bytes as they stand in the list file, which need not be UTF-8), value a serialized Datum
holding uint8 C x H x W pixels in BGR order (or, with --encoded, the image file's bytes with
``encoded: true``) and the label.

The database is built in a temporary folder beside DB (``DB.tmp-XXXXXXXX``) that becomes DB only
when every image is written; a failed or interrupted run removes it, so DB is never left half
written.
"""

from __future__ import annotations

import os
import secrets
import shutil
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
        help="re-encode as this format (png, jpg, tif, bmp, ppm, ...); implies --encoded",
    )


def run(args) -> int:
    import lmdb
    import numpy as np

    from minicaffe.data.image_io import encode_formats, encoding_problem, normalize_format
    from minicaffe.errors import DataError, FileWriteError

    check_backend(args)
    if (args.resize_height > 0) != (args.resize_width > 0):
        raise DataError(
            "--resize_height and --resize_width must be given together; received "
            f"{args.resize_height} and {args.resize_width}"
        )
    target = args.db.rstrip(os.sep) or args.db
    if os.path.lexists(target):
        raise DataError(f"'{args.db}' already exists; remove it or choose another DB name")
    enc = normalize_format(args.encode_type)
    if enc:
        if enc not in encode_formats():
            raise DataError(
                f"--encode_type '{args.encode_type}' is not an encoding minicaffe can write; "
                f"choices: {', '.join(encode_formats())}"
            )
        problem = encoding_problem(enc, 1 if args.gray else 3)
        if problem:
            fix = "leave out --gray" if args.gray else "add --gray"
            raise DataError(f"--encode_type {enc}: {problem}; {fix} or choose another type")
    from minicaffe.data.image_data import parse_image_list

    entries = parse_image_list(args.list_file)
    if not entries:
        raise DataError(f"list file '{args.list_file}' lists no images; no DB was written")
    if args.shuffle:
        order = np.random.default_rng(args.seed).permutation(len(entries))
        entries = [entries[i] for i in order]
    print(f"A total of {len(entries)} images.", file=sys.stderr)

    tmp, made = _make_temp_dir(target)
    env = None
    try:
        try:
            env = lmdb.open(tmp, map_size=1 << 30, subdir=True)
            written, skipped = _write_records(env, entries, args, enc)
            env.close()
            env = None
        except lmdb.Error as exc:
            raise FileWriteError(target, f"LMDB error: {exc}") from None
        if written == 0:
            hint = ""
            if args.root and not args.root.endswith(os.sep) and os.path.isdir(args.root):
                hint = f" (ROOT is prefixed as given: did you mean '{args.root}{os.sep}'?)"
            raise DataError(
                f"no image of '{args.list_file}' could be read{hint}; no DB was written"
            )
        if os.path.lexists(target):
            raise DataError(
                f"'{args.db}' was created by something else during the conversion; "
                "the new DB is discarded"
            )
        try:
            os.rename(tmp, target)
        except OSError as exc:
            raise FileWriteError(target, exc.strerror or str(exc), exc.errno) from None
    except BaseException:  # any failure, Ctrl-C included: leave nothing behind
        if env is not None:
            env.close()
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_folders(made)
        raise
    print(
        f"Processed {written} files" + (f" ({skipped} skipped)." if skipped else "."),
        file=sys.stderr,
    )
    return 0


def _make_temp_dir(target: str) -> tuple[str, list[str]]:
    """A new empty folder beside ``target`` to build the DB in, and the missing parent folders
    of ``target`` created for it (deepest first, to remove on failure)."""
    from minicaffe.errors import FileWriteError

    parent = os.path.dirname(os.path.abspath(target))
    made = []
    folder = parent
    while not os.path.lexists(folder):
        made.append(folder)
        folder = os.path.dirname(folder)
    try:
        for folder in reversed(made):
            os.mkdir(folder)
        while True:
            tmp = f"{target}.tmp-{secrets.token_hex(4)}"
            try:
                os.mkdir(tmp)  # as os.makedirs would: mode 0o777 less the umask
                return tmp, made
            except FileExistsError:
                continue
    except OSError as exc:
        _remove_folders(made)
        raise FileWriteError(target, exc.strerror or str(exc), exc.errno) from None


def _remove_folders(made: list[str]) -> None:
    """Remove the parent folders a run created (deepest first), up to the first that is not
    empty."""
    for folder in made:
        try:
            os.rmdir(folder)
        except OSError:
            break


def _write_records(env, entries, args, enc: str) -> tuple[int, int]:
    """Read, check and store every listed image in the open LMDB ``env``; (written, skipped)."""
    import lmdb

    from minicaffe.data.image_io import (
        array_to_datum,
        encode_image,
        encoding_problem,
        image_format,
        read_image,
        read_image_file,
        same_encoding,
        shown_path,
    )
    from minicaffe.errors import DataError
    from minicaffe.proto import caffe_pb2

    color = not args.gray
    height, width = args.resize_height, args.resize_width
    encoded = args.encoded or bool(enc)
    written = skipped = 0
    first_size = None
    batch: list[tuple[bytes, bytes]] = []

    def commit() -> None:
        while True:
            try:
                with env.begin(write=True) as txn:
                    for k, v in batch:
                        txn.put(k, v)
                break
            except lmdb.MapFullError:  # grow the map and retry the whole transaction
                env.set_mapsize(env.info()["map_size"] * 2)
        batch.clear()

    for line_id, (name, label, line_no) in enumerate(entries):
        path = args.root + name
        shown = shown_path(path)
        where = f"'{shown_path(args.list_file)}' line {line_no}"
        try:
            if encoded:
                img, data, native = read_image_file(
                    path, height=height, width=width, color=color, where=where
                )
            else:
                img = read_image(path, height=height, width=width, color=color, where=where)
        except DataError as exc:
            print(f"convert-imageset: skipping: {exc}", file=sys.stderr)
            skipped += 1
            continue
        if args.check_size:
            if first_size is None:
                first_size = img.shape
            elif img.shape != first_size:
                raise DataError(
                    f"{where}: '{shown}' is {img.shape} (C, H, W) but the first image is "
                    f"{first_size} (--check_size); no DB was written"
                )
        if encoded:
            own = image_format(name)
            fmt = enc or own
            if not fmt:
                raise DataError(
                    f"{where}: cannot guess the encoding of '{shown}' from its name (no "
                    "extension); give --encode_type"
                )
            payload = None
            if not height and same_encoding(fmt, own) and native == img.shape[0]:
                payload = data  # the file as it is, as Caffe stores it
            if payload is None:
                if not enc:
                    problem = encoding_problem(fmt, img.shape[0])
                    if problem:
                        raise DataError(
                            f"{where}: '{shown}' must be re-encoded and its extension gives "
                            f"the encoding: {problem}; give --encode_type (e.g. png)"
                        )
                payload = encode_image(img, fmt, where=f"{where}: '{shown}'")
            datum = caffe_pb2.Datum(data=payload, label=label, encoded=True)
        else:
            datum = array_to_datum(img, label)
        key = b"%08d_" % line_id + os.fsencode(name)
        batch.append((key, datum.SerializeToString()))
        written += 1
        if len(batch) >= _COMMIT_EVERY:
            commit()
            print(f"Processed {written} files.", file=sys.stderr)
    if batch:
        commit()
    return written, skipped


