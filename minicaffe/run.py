"""Run a pycaffe script unchanged on minicaffe: ``python -m minicaffe.run script.py [args]``.

The script runs as ``python script.py [args]`` would (``__name__ == "__main__"``, ``sys.argv``,
the script's folder first on ``sys.path``), with minicaffe's ``caffe`` alias installed, so
``import caffe``, ``from caffe.proto import caffe_pb2``, ``from caffe import layers as L`` and
Python-layer modules that ``import caffe`` all get minicaffe. ``python -m minicaffe.run -m
package.module [args]`` runs a module the same way.
"""

from __future__ import annotations

import os
import runpy
import sys

USAGE = """usage: python -m minicaffe.run SCRIPT.py [ARGS ...]
       python -m minicaffe.run -m MODULE [ARGS ...]

Run a pycaffe script with `import caffe` resolving to minicaffe."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    from minicaffe.compat import install_caffe_alias

    install_caffe_alias()
    if argv[0] == "-m":
        if len(argv) < 2:
            print(USAGE, file=sys.stderr)
            return 2
        sys.argv = [argv[1]] + argv[2:]
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return 0
    script = argv[0]
    if not os.path.isfile(script):
        print(f"python -m minicaffe.run: can't open file {script!r}: no such file", file=sys.stderr)
        return 2
    sys.argv = argv
    folder = os.path.dirname(os.path.abspath(script))
    # `python -m` put the working directory first; a script run directly sees its own folder.
    if sys.path and sys.path[0] in ("", os.getcwd()):
        sys.path[0] = folder
    else:
        sys.path.insert(0, folder)
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
