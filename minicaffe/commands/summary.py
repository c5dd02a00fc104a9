"""``minicaffe summary NET.prototxt [--phase TRAIN|TEST]``: a table of a net's layers."""

from __future__ import annotations

HELP = "print a table of a net's layers, shapes and parameter counts"


def add_arguments(parser) -> None:
    parser.add_argument("model", help="net prototxt")
    parser.add_argument("-phase", "--phase", default="TEST", type=str.upper,
                        choices=["TRAIN", "TEST"])
    parser.add_argument("-level", "--level", type=int, default=0)
    parser.add_argument("-stage", "--stage", action="append", default=None, metavar="A,B",
                        help="NetState stages, comma-separated as in the other commands "
                        "(may be repeated)")
    parser.add_argument("-weights", "--weights", help="a .caffemodel to load (checks shapes)")


def run(args) -> int:
    from minicaffe import Net
    from minicaffe.commands.train import flag_stages
    from minicaffe.summary import net_summary

    stages = [s for value in args.stage or [None] for s in flag_stages(value)]
    net = Net(
        args.model, phase=args.phase, level=args.level, stages=stages, weights=args.weights
    )
    print(net_summary(net))
    return 0
