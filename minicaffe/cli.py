"""The ``minicaffe`` command-line tool: Caffe's commands and flags, plus a few more.

Errors from minicaffe become one line on stderr and exit code 1 (2 for usage errors); ``--debug``
shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# command name -> module under minicaffe.commands (imported lazily)
COMMANDS: dict[str, str] = {
    "train": "train",
    "test": "test",
    "time": "time",
    "device_query": "device_query",
    "summary": "summary",
    "upgrade": "upgrade",
    "draw": "draw",
    "parse-log": "parse_log",
    "plot": "plot",
    "convert-imageset": "convert_imageset",
    "compute-image-mean": "compute_image_mean",
}
ALIASES = {
    "convert_imageset": "convert-imageset",
    "compute_image_mean": "compute-image-mean",
    "parse_log": "parse-log",
    "device-query": "device_query",
}

_HELP_FALLBACK = {
    "train": "train or fine-tune a model",
    "test": "score a model",
    "time": "benchmark a model's layers",
    "device_query": "show GPU diagnostics",
    "summary": "print a table of a net's layers",
    "upgrade": "upgrade a V0/V1 prototxt",
    "draw": "draw a net graph",
    "parse-log": "parse a training log into CSV",
    "plot": "plot training curves from a log",
    "convert-imageset": "build an LMDB of Datum from an image list",
    "compute-image-mean": "compute the mean image of a Datum LMDB",
}


# flags of the tool itself, accepted after the command too (``minicaffe train x --debug``)
_GLOBAL_FLAGS = ("--debug", "--verbose")


def _load(name: str):
    return importlib.import_module(f"minicaffe.commands.{COMMANDS[name]}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minicaffe",
        description="Run and train Caffe models (prototxt + caffemodel) on NumPy or CuPy.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more (INFO level)")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if command is not None and name != command:
            sub.add_parser(name, help=_HELP_FALLBACK.get(name, ""), add_help=False)
            continue
        try:
            module = _load(name)
        except ModuleNotFoundError:
            continue
        p = sub.add_parser(
            name,
            help=getattr(module, "HELP", _HELP_FALLBACK.get(name, "")),
            description=getattr(module, "DESCRIPTION", None),
        )
        module.add_arguments(p)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)``, except that flags the command does not know are reported
    by the command's own parser (its usage, not the tool's) with the closest known flag."""
    import difflib

    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    sub = None
    if args.command:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub = action.choices.get(args.command)
    target = sub or parser
    known = [o for a in target._actions for o in a.option_strings]
    hints = {}
    for arg in extra:
        flag = arg.split("=", 1)[0]
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.75)
        if flag.startswith("-") and close:
            hints[flag] = f"did you mean {close[0]}?"
    message = f"unrecognized arguments: {' '.join(extra)}"
    if len(hints) == 1 and len(extra) == 1:
        message += f" ({next(iter(hints.values()))})"
    elif hints:
        message += f" ({'; '.join(f'{k}: {v}' for k, v in hints.items())})"
    target.error(message)


def main(argv: list[str] | None = None) -> int:
    from minicaffe.errors import MinicaffeError

    argv = list(sys.argv[1:] if argv is None else argv)
    # Caffe spells some commands with underscores; accept both.
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in ALIASES:
        argv[argv.index(command)] = command = ALIASES[command]
    if command is not None:  # the global flags may also come after the command
        at = argv.index(command)
        moved = [a for a in argv[at + 1 :] if a in _GLOBAL_FLAGS]
        if moved:
            argv = moved + argv[: at + 1] + [
                a for a in argv[at + 1 :] if a not in _GLOBAL_FLAGS]
    parser = build_parser(command if command in COMMANDS else None)
    args = _parse(parser, argv)
    if args.version:
        from minicaffe import __version__

        print(f"minicaffe {__version__}")
        return 0
    if not args.command:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    import numpy as np

    try:
        # floating-point warnings would only repeat what the NaN guard and the outputs say
        with np.errstate(all="ignore"):
            return int(_load(args.command).run(args) or 0)
    except BrokenPipeError:  # the reader went away (``minicaffe summary net | head``)
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except MinicaffeError as exc:
        if args.debug:
            raise
        print(f"minicaffe {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"minicaffe {args.command}: interrupted", file=sys.stderr)
        return 130
    except MemoryError as exc:  # an allocation outside the blobs (a layer's own buffers)
        if args.debug:
            raise
        print(f"minicaffe {args.command}: error: out of memory: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        if args.debug:
            raise
        print(f"minicaffe {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
