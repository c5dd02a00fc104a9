"""``minicaffe plot``: training curves from a log (loss and accuracy, matplotlib)."""

from __future__ import annotations

import argparse
import os

HELP = "plot loss and accuracy curves from a training log"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("logfile", help="a log written by minicaffe train or caffe train")
    p.add_argument(
        "-o", "--output", metavar="FILE.png", help="image file (default: the log's name with .png)"
    )
    p.add_argument(
        "--x", choices=["iters", "seconds"], default="iters", help="horizontal axis (default iters)"
    )
    p.add_argument("--log-y", action="store_true", help="loss on a logarithmic scale")


def run(args) -> int:
    from minicaffe.logs import plot_log

    output = args.output or os.path.splitext(args.logfile)[0] + ".png"
    drawn = plot_log(args.logfile, output, x=args.x, log_y=args.log_y)
    print(f"{output}: {', '.join(drawn)}")
    return 0
