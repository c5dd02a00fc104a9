"""``minicaffe draw NET.prototxt OUT.{dot,png,svg,...} [--rankdir LR] [--phase TRAIN|TEST|ALL]``.

Writes the net's graph. DOT text needs nothing installed; other formats run Graphviz's ``dot``.
"""

from __future__ import annotations

HELP = "draw a net's graph (DOT always; PNG/SVG with Graphviz installed)"
DESCRIPTION = (
    "Draw a net as a graph of layers and blobs. The output format follows the file "
    "extension: .dot is written directly; .png, .svg, .pdf ... need Graphviz's dot."
)


def add_arguments(parser) -> None:
    parser.add_argument("model", help="net prototxt")
    parser.add_argument("output", help="output file: .dot, .png, .svg, .pdf, ...")
    parser.add_argument(
        "--rankdir",
        default="LR",
        type=str.upper,
        choices=["LR", "TB", "BT", "RL"],
        help="graph direction (default LR: left to right)",
    )
    parser.add_argument(
        "--phase",
        default="ALL",
        type=str.upper,
        choices=["TRAIN", "TEST", "ALL"],
        help="draw only the layers of this phase (default ALL: every layer)",
    )
    parser.add_argument(
        "--display-lrm",
        "--display_lrm",
        dest="display_lrm",
        action="store_true",
        help="show lr_mult of learnable layers",
    )


def run(args) -> int:
    from minicaffe import draw
    from minicaffe.proto import caffe_pb2
    from minicaffe.prototxt import read_net_param

    net = read_net_param(args.model)
    phase = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST, "ALL": None}[args.phase]
    draw.draw_net_to_file(
        net, args.output, rankdir=args.rankdir, phase=phase, display_lrm=args.display_lrm
    )
    print(f"wrote {args.output}")
    return 0
