"""One module per ``minicaffe`` sub-command.

Each module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
:mod:`minicaffe.cli` imports a module only when its command runs.
"""


def add_backend_argument(parser) -> None:
    """Caffe's ``--backend`` flag of the database tools (LMDB is the one supported)."""
    parser.add_argument(
        "--backend",
        "-backend",
        default="lmdb",
        type=str.lower,
        choices=["lmdb", "leveldb"],
        help="only lmdb is supported",
    )


def check_backend(args) -> None:
    """DataError for a backend other than LMDB, saying what to do instead."""
    if args.backend != "lmdb":
        from minicaffe.data.data import LEVELDB_HELP
        from minicaffe.errors import DataError

        raise DataError(f"backend '{args.backend}': {LEVELDB_HELP}")
