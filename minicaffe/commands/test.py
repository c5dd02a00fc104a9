"""``minicaffe test``: score a trained model, as ``caffe test`` does.

Builds the net in phase TEST (``--level``/``--stage`` select layers), loads ``--weights``, runs
``--iterations`` forward passes and reports the mean of every net output element (and of the
loss), with per-batch lines in Caffe's log format on stderr or in ``--log``.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HELP = "score a model: mean net outputs over --iterations batches"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prototxt", nargs="?", metavar="MODEL", help="the net prototxt (or -model)")
    p.add_argument("-model", "--model", metavar="FILE", help="the net prototxt")
    p.add_argument(
        "-weights",
        "--weights",
        metavar="A.caffemodel[,B.caffemodel]",
        help="trained weights (required)",
    )
    p.add_argument(
        "-iterations", "--iterations", type=int, default=50, help="number of batches (default 50)"
    )
    p.add_argument("-gpu", "--gpu", metavar="N", help="run on GPU N (default: the CPU)")
    p.add_argument(
        "-phase",
        "--phase",
        default="TEST",
        choices=["TRAIN", "TEST", "train", "test"],
        help="net phase (default TEST)",
    )
    p.add_argument("-level", "--level", type=int, default=0, help="net state level")
    p.add_argument("-stage", "--stage", default=None, metavar="A,B", help="net state stages")
    p.add_argument("--log", metavar="FILE", help="also write the log lines to FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the final means")


def _usage(message: str) -> int:
    print(f"minicaffe test: error: {message}", file=sys.stderr)
    return 2


def run(args) -> int:
    from minicaffe.backend import to_numpy
    from minicaffe.commands.train import choose_device, flag_stages, listed, parse_gpu_ids
    from minicaffe.logs import training_log
    from minicaffe.net import Net
    from minicaffe.proto import caffe_pb2
    from minicaffe.solver import _fmt

    model = args.model or args.prototxt
    if args.model and args.prototxt and args.model != args.prototxt:
        return _usage(f"two models given ({args.prototxt} and --model {args.model})")
    if not model:
        return _usage("need a model definition to score: --model net.prototxt")
    if not args.weights:
        return _usage("need model weights to score: --weights model.caffemodel")
    if args.iterations < 1:
        return _usage(f"--iterations must be >= 1; received {args.iterations}")
    if args.gpu is not None:
        try:
            parse_gpu_ids(args.gpu)
        except ValueError as exc:
            return _usage(str(exc))
    if args.log and os.path.isdir(args.log):
        return _usage(f"--log {args.log} is a folder; give a file name")
    tty = sys.stderr.isatty()
    console = "none" if args.quiet or tty else "glog"
    stages = flag_stages(args.stage)
    with training_log(args.log, console=console) as log:
        device = choose_device(args.gpu, caffe_pb2.SolverParameter(), log, "test")
        net = Net(model, phase=args.phase.upper(), level=args.level, stages=stages, device=device)
        for path in args.weights.split(","):
            report = net.copy_from(path)
            if report.not_in_file:  # scores from filler values: say so whatever the console
                print(f"minicaffe test: warning: {path} holds no weights for "
                      f"{len(report.not_in_file)} layers with parameters"
                      f"{listed(report.not_in_file)}; they keep their initial values",
                      file=sys.stderr)
        log.info("Running for %d iterations.", args.iterations)
        bar = None
        if tty and not args.quiet:
            from tqdm import tqdm

            bar = tqdm(total=args.iterations, unit="batch", file=sys.stderr, leave=False)
        sums = None
        loss = np.float32(0)
        try:
            for i in range(args.iterations):
                loss = loss + np.float32(float(net.forward_prefilled()))
                values = [
                    to_numpy(net.blobs[name].data).ravel().astype(np.float32)
                    for name in net.outputs
                ]
                for name, vals in zip(net.outputs, values):
                    for v in vals:
                        log.info("Batch %d, %s = %s", i, name, _fmt(v))
                if sums is None:
                    sums = [v.copy() for v in values]
                else:
                    for acc, v in zip(sums, values):
                        acc += v
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        loss = loss / np.float32(args.iterations)
        log.info("Loss: %s", _fmt(loss))
        lines = []
        for name, acc in zip(net.outputs, sums or []):
            weight = net.blob_loss_weights.get(name, 0.0)
            for v in acc / np.float32(args.iterations):
                extra = (
                    f" (* {_fmt(weight)} = {_fmt(np.float32(weight) * v)} loss)" if weight else ""
                )
                lines.append(f"{name} = {_fmt(v)}{extra}")
                log.info("%s", lines[-1])
    print(f"Loss: {_fmt(loss)}")
    for line in lines:
        print(line)
    return 0
