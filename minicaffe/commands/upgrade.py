"""``minicaffe upgrade OLD.prototxt [-o NEW.prototxt]``: V0/V1 nets and old solvers to the
current format (written atomically; to stdout without -o). A binary .caffemodel is upgraded to
a binary .caffemodel (as Caffe's upgrade_net_proto_binary), weights included; ``--text`` writes
it as text instead."""

from __future__ import annotations

import sys

HELP = "upgrade a V0/V1 net (or an old solver) prototxt to the current format"


def add_arguments(parser) -> None:
    parser.add_argument("input", help="net or solver prototxt, or a binary .caffemodel")
    parser.add_argument("-o", "--output", help="where to write (default: stdout)")
    parser.add_argument(
        "--text",
        action="store_true",
        help="write a binary .caffemodel's upgrade as text (default: binary, with -o)",
    )
    parser.add_argument(
        "--solver",
        action="store_true",
        help="treat the input as a solver (default: guessed from its fields)",
    )


def _is_solver(path: str) -> bool:
    from minicaffe.errors import PrototxtError
    from minicaffe.proto import caffe_pb2
    from minicaffe.prototxt import read_text

    try:
        read_text(path, caffe_pb2.SolverParameter)
        return True
    except PrototxtError:
        return False


def run(args) -> int:
    from minicaffe.prototxt import (
        atomic_write_bytes,
        atomic_write_text,
        binary_kind,
        read_net_param,
        read_solver_param,
        to_text,
    )
    from minicaffe.upgrade import upgrade_net, upgrade_solver

    try:
        with open(args.input, "rb") as fh:
            kind = binary_kind(fh.read(4096))
    except OSError:
        kind = None
    binary = kind in ("caffemodel", "hdf5") or args.input.endswith(".caffemodel")
    if binary and not args.text and not args.output:
        print("minicaffe upgrade: error: a binary .caffemodel upgrades to a binary file: give "
              "-o NEW.caffemodel (or --text to print it as text)", file=sys.stderr)
        return 2
    is_solver = args.solver or (not binary and _is_solver(args.input))
    if is_solver:
        old = read_solver_param(args.input, upgrade=False)
        new, notes = upgrade_solver(old, args.input)
    else:
        old = read_net_param(args.input, upgrade=False)
        new, notes = upgrade_net(old, args.input)
    for note in notes:
        print(f"upgrade: {note}", file=sys.stderr)
    if not notes:
        print("upgrade: already in the current format", file=sys.stderr)
    if binary and not args.text:
        atomic_write_bytes(args.output, new.SerializeToString())
        return 0
    text = to_text(new)
    if args.output:
        atomic_write_text(args.output, text)
    else:
        sys.stdout.write(text)
    return 0
