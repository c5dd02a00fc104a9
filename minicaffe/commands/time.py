"""``minicaffe time NET.prototxt``: per-layer forward/backward timings, as ``caffe time`` does.

Builds the net (phase TRAIN unless ``--phase TEST``), runs one forward and backward pass to warm
up, then ``--iterations`` passes that time every layer's forward and, in reverse order, every
layer's backward. Prints the average milliseconds per layer and the averages of the forward pass,
the backward pass and the two together. Random filler weights are used unless ``--weights`` is
given; the inputs keep whatever the input layers hold (zeros for Input layers).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

HELP = "benchmark a model: average forward/backward milliseconds per layer"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prototxt", nargs="?", metavar="MODEL", help="the net prototxt (or -model)")
    p.add_argument("-model", "--model", metavar="FILE", help="the net prototxt")
    p.add_argument(
        "-iterations", "--iterations", type=int, default=50, help="timed passes (default 50)"
    )
    p.add_argument(
        "-phase",
        "--phase",
        default="TRAIN",
        type=str.upper,
        choices=["TRAIN", "TEST"],
        help="net phase (default TRAIN)",
    )
    p.add_argument("-gpu", "--gpu", metavar="N", help="run on GPU N (default: the CPU)")
    p.add_argument("-weights", "--weights", metavar="A.caffemodel[,B]", help="weights to load")
    p.add_argument("-level", "--level", type=int, default=0, help="net state level")
    p.add_argument("-stage", "--stage", default=None, metavar="A,B", help="net state stages")


def _usage(message: str) -> int:
    print(f"minicaffe time: error: {message}", file=sys.stderr)
    return 2


def _synchronizer(net):
    """A function that waits for the GPU (so a layer's time is its own), or a no-op."""
    if not net.device.is_gpu:
        return lambda: None
    from minicaffe.backend import get_cupy

    cp = get_cupy()
    return lambda: cp.cuda.Device(net.device.id).synchronize()


def time_net(net, iterations: int):
    """(forward ms per layer, backward ms per layer, total forward ms, total backward ms,
    wall ms of all iterations), each per-layer value averaged over ``iterations``."""
    sync = _synchronizer(net)
    n = len(net.layers)
    net.forward_from_to()
    net.backward_from_to()
    sync()
    fwd, bwd = [0.0] * n, [0.0] * n
    clock = time.perf_counter
    start = clock()
    for _ in range(iterations):
        for i in range(n):
            t = clock()
            net.forward_layer(i)
            sync()
            fwd[i] += clock() - t
        for i in range(n - 1, -1, -1):
            t = clock()
            net.backward_layer(i)
            sync()
            bwd[i] += clock() - t
    wall = clock() - start
    scale = 1000.0 / iterations
    return (
        [f * scale for f in fwd],
        [b * scale for b in bwd],
        sum(fwd) * scale,
        sum(bwd) * scale,
        wall * 1000.0,
    )


def format_table(net, fwd, bwd, total_f, total_b, wall, iterations: int) -> str:
    names = list(net._layer_names)
    types = [layer.type for layer in net.layers]
    wn = max([5] + [len(s) for s in names])
    wt = max([4] + [len(s) for s in types])
    lines = [
        f"Average time per layer over {iterations} iterations (phase "
        f"{'TRAIN' if net.phase == 0 else 'TEST'}, {net.device}):",
        f"{'layer':<{wn}}  {'type':<{wt}}  {'forward ms':>10}  {'backward ms':>11}",
    ]
    for name, typ, f, b in zip(names, types, fwd, bwd):
        lines.append(f"{name:<{wn}}  {typ:<{wt}}  {f:10.4f}  {b:11.4f}")
    lines += [
        f"Average Forward pass: {total_f:.4f} ms.",
        f"Average Backward pass: {total_b:.4f} ms.",
        f"Average Forward-Backward: {wall / iterations:.4f} ms.",
        f"Total Time: {wall:.4f} ms.",
    ]
    return "\n".join(lines)


def run(args) -> int:
    from minicaffe.commands.train import choose_device, flag_stages, parse_gpu_ids
    from minicaffe.net import Net
    from minicaffe.proto import caffe_pb2

    model = args.model or args.prototxt
    if args.model and args.prototxt and args.model != args.prototxt:
        return _usage(f"two models given ({args.prototxt} and --model {args.model})")
    if not model:
        return _usage("need a model definition to time: minicaffe time net.prototxt")
    if args.iterations < 1:
        return _usage(f"--iterations must be >= 1; received {args.iterations}")
    if args.gpu is not None:
        try:
            parse_gpu_ids(args.gpu)
        except ValueError as exc:
            return _usage(str(exc))
    device = choose_device(args.gpu, caffe_pb2.SolverParameter(), logging.getLogger("minicaffe"),
                           "time")
    stages = flag_stages(args.stage)
    net = Net(model, phase=args.phase, level=args.level, stages=stages, device=device)
    if args.weights:
        for path in args.weights.split(","):
            net.copy_from(path)
    fwd, bwd, total_f, total_b, wall = time_net(net, args.iterations)
    print(format_table(net, fwd, bwd, total_f, total_b, wall, args.iterations))
    return 0
