"""``minicaffe plot``: training curves from a log (loss and accuracy, matplotlib).

One curve per output: train outputs, then test outputs; with several test nets each net has its
own curves (``test #0 accuracy``, ``test #1 accuracy``). Outputs whose name holds ``acc`` go to
the accuracy panel, the others to the loss panel. Outputs with several elements per row (a
per-class accuracy) are left out and named in the printed summary; ``minicaffe parse-log`` gives
them a column each.
"""

from __future__ import annotations

import argparse
import os

HELP = "plot loss and accuracy curves from a training log"

EPILOG = (
    "Each test net gets its own curves (test #0 ..., test #1 ...) when the solver has several. "
    "Outputs with several elements per test (e.g. a per-class accuracy) are left out; "
    "minicaffe parse-log writes them as columns name_0, name_1, ..."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.add_argument("logfile", help="a log written by minicaffe train or caffe train")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE.png",
        help="image file; the format follows the extension, e.g. .png, .svg, .pdf "
        "(default: the log's name with .png)",
    )
    p.add_argument(
        "--x", choices=["iters", "seconds"], default="iters", help="horizontal axis (default iters)"
    )
    p.add_argument("--log-y", action="store_true", help="loss on a logarithmic scale")


def run(args) -> int:
    from minicaffe.logs import _plot

    output = args.output or os.path.splitext(args.logfile)[0] + ".png"
    drawn, left_out = _plot(args.logfile, output, x=args.x, log_y=args.log_y)
    note = f" (left out, several values per row: {', '.join(left_out)})" if left_out else ""
    print(f"{output}: {', '.join(drawn)}{note}")
    return 0
