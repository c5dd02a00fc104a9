"""``minicaffe parse-log``: a training log to CSV tables (as Caffe's tools/extra/parse_log.py).

Writes ``<log name>.train`` and ``<log name>.test`` into the output folder: one row per logged
iteration with NumIters, Seconds, LearningRate and every net output.
"""

from __future__ import annotations

import argparse
import os
import sys

HELP = "parse a training log into CSV tables of train and test rows"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("logfile", help="a log written by minicaffe train or caffe train")
    p.add_argument(
        "output_dir",
        nargs="?",
        default=None,
        help="folder for the CSV files (default: the log's folder)",
    )
    p.add_argument(
        "-o", "--output-dir", dest="output_dir_flag", metavar="DIR", help="same as OUTPUT_DIR"
    )
    p.add_argument("--delimiter", default=",", help="column delimiter (default ',')")


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
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, os.path.basename(args.logfile))
    write_csv(train, base + ".train", args.delimiter)
    write_csv(test, base + ".test", args.delimiter)
    print(f"{base}.train ({len(train)} rows)")
    print(f"{base}.test ({len(test)} rows)")
    return 0
