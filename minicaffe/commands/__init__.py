"""One module per ``minicaffe`` sub-command.

Each module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
:mod:`minicaffe.cli` imports a module only when its command runs.
"""
