"""``minicaffe parse-log``: a training log to CSV tables (as Caffe's tools/extra/parse_log.py).

Writes ``<log name>.train`` and ``<log name>.test`` into the output folder (made if missing): one
row per display (train) and per test (test) with NumIters, Seconds, LearningRate and every net
output. A solver with several test nets gives test rows a ``TestNet`` column (0, 1, ...). An
output with several elements, which Caffe logs as several ``#k`` lines with the same name (say
Accuracy's per-class top ``per_class``), gets one column per element in logged order:
``per_class_0``, ``per_class_1``, ... (for a per-class accuracy, the class index); Caffe's
parse_log.py keeps only the last one and minicaffe used to start a row per element.
"""

from __future__ import annotations

import argparse
import os
import sys

HELP = "parse a training log into CSV tables of train and test rows"

EPILOG = (
    "One row per display (LOG.train) and per test (LOG.test). With several test nets the test "
    "rows have a TestNet column (0, 1, ...). An output with several elements (Caffe logs each "
    "as its own 'Test net output #k: name = v' line, e.g. a per-class accuracy) gets the "
    "columns name_0, name_1, ... in logged order."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.add_argument("logfile", help="a log written by minicaffe train or caffe train")
    p.add_argument(
        "output_dir",
        nargs="?",
        default=None,
        help="folder for the CSV files, made if missing (default: the log's folder)",
    )
    p.add_argument(
        "-o", "--output-dir", dest="output_dir_flag", metavar="DIR", help="same as OUTPUT_DIR"
    )
    p.add_argument("--delimiter", default=",", help="column delimiter (default ',')")


def _output_folder(path: str) -> None:
    """Make the output folder; FileWriteError naming it when it cannot be one."""
    import errno

    from minicaffe.errors import FileWriteError

    if os.path.exists(path) and not os.path.isdir(path):
        raise FileWriteError(path, "the output folder is a file", errno.ENOTDIR)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise FileWriteError(
            path, f"the output folder cannot be made ({exc.strerror or exc})", exc.errno
        ) from None


def run(args) -> int:
    from minicaffe.errors import MinicaffeError
    from minicaffe.logs import parse_log, write_csv

    out_dir = (
        args.output_dir_flag or args.output_dir or os.path.dirname(os.path.abspath(args.logfile))
    )
    if len(args.delimiter) != 1:
        print("minicaffe parse-log: error: --delimiter must be one character", file=sys.stderr)
        return 2
    train, test = parse_log(args.logfile)
    if not train and not test:
        raise MinicaffeError(
            f"{args.logfile}: no 'Train net output' or 'Test net output' lines; "
            "is it a training log?"
        )
    _output_folder(out_dir)
    base = os.path.join(out_dir, os.path.basename(args.logfile))
    write_csv(train, base + ".train", args.delimiter)
    write_csv(test, base + ".test", args.delimiter)
    print(f"{base}.train ({len(train)} rows)")
    print(f"{base}.test ({len(test)} rows)")
    return 0
