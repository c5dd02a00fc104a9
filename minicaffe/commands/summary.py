"""``minicaffe summary NET.prototxt [--phase TRAIN|TEST]``: a table of a net's layers."""

from __future__ import annotations

HELP = "print a table of a net's layers, shapes and parameter counts"


def add_arguments(parser) -> None:
    parser.add_argument("model", help="net prototxt")
    parser.add_argument("--phase", default="TEST", type=str.upper, choices=["TRAIN", "TEST"])
    parser.add_argument("--level", type=int, default=0)
    parser.add_argument("--stage", action="append", default=[], help="NetState stage (repeat)")
    parser.add_argument("--weights", help="a .caffemodel to load (checks shapes)")


def run(args) -> int:
    from minicaffe import Net
    from minicaffe.summary import net_summary

    net = Net(
        args.model, phase=args.phase, level=args.level, stages=args.stage, weights=args.weights
    )
    print(net_summary(net))
    return 0
