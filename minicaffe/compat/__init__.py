"""The ``caffe`` name: lets pycaffe scripts and Python-layer modules ``import caffe`` unchanged.

Opt-in, so that a real pycaffe installed beside minicaffe is never shadowed by surprise:

* ``python -m minicaffe.run script.py [args]`` runs a script with the alias installed;
* ``minicaffe.install_caffe_alias()`` installs it in the running interpreter.

Once installed, ``import caffe`` gives a module exposing pycaffe's top-level names backed by
minicaffe (``caffe.Net``, ``caffe.SGDSolver``, ``caffe.Layer``, ``caffe.TRAIN``,
``caffe.set_mode_cpu`` ...), and the submodules ``caffe.io``, ``caffe.net_spec``, ``caffe.draw``,
``caffe.classifier``, ``caffe.detector``, ``caffe.coord_map``, ``caffe.proto`` /
``caffe.proto.caffe_pb2`` are minicaffe's own modules (the same objects, not copies).
``from caffe import layers as L, params as P`` gives NetSpec's ``L`` and ``P``.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
import types

from minicaffe.errors import MinicaffeError

# caffe submodule -> minicaffe module providing it
SUBMODULES = {
    "caffe.io": "minicaffe.io",
    "caffe.net_spec": "minicaffe.net_spec",
    "caffe.draw": "minicaffe.draw",
    "caffe.classifier": "minicaffe.classifier",
    "caffe.detector": "minicaffe.detector",
    "caffe.coord_map": "minicaffe.compat.coord_map",
    "caffe.proto": "minicaffe.proto",
    "caffe.proto.caffe_pb2": "minicaffe.proto.caffe_pb2",
}

# top-level caffe names that live elsewhere than minicaffe's namespace
_FROM = {
    "layers": ("minicaffe.net_spec", "layers"),
    "params": ("minicaffe.net_spec", "params"),
    "NetSpec": ("minicaffe.net_spec", "NetSpec"),
    "to_proto": ("minicaffe.net_spec", "to_proto"),
    "Classifier": ("minicaffe.classifier", "Classifier"),
    "Detector": ("minicaffe.detector", "Detector"),
}


# ---------------------------------------------------------------- pycaffe odds and ends


def init_log(*args, **kwargs) -> None:
    """pycaffe's glog initialisation: here, minicaffe's logger at INFO level."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def log(message: str) -> None:
    logging.getLogger("minicaffe").info("%s", message)


def solver_count() -> int:
    return 1


def set_solver_count(count: int) -> None:
    if int(count) != 1:
        raise MinicaffeError(
            f"minicaffe trains in one process; multi-GPU solver_count {count} is not supported"
        )


def solver_rank() -> int:
    return 0


def set_solver_rank(rank: int) -> None:
    if int(rank) != 0:
        raise MinicaffeError(f"minicaffe trains in one process; solver rank {rank} is not valid")


def set_multiprocess(multiprocess: bool) -> None:
    """No effect: minicaffe runs one process."""


def has_nccl() -> bool:
    return False


class NCCL:
    """pycaffe's multi-GPU communicator; minicaffe has none."""

    def __init__(self, *args, **kwargs):
        raise MinicaffeError("NCCL multi-GPU training is not available in minicaffe")


class Timer:
    """pycaffe's Timer: start(), stop(), ms (elapsed milliseconds)."""

    def __init__(self):
        self._start = None
        self._elapsed = 0.0

    def start(self) -> None:
        self._start = time.perf_counter()

    def stop(self) -> None:
        if self._start is not None:
            self._elapsed = time.perf_counter() - self._start
            self._start = None

    @property
    def ms(self) -> float:
        return self._elapsed * 1000.0


_EXTRAS = {
    f.__name__: f
    for f in (
        init_log,
        log,
        solver_count,
        set_solver_count,
        solver_rank,
        set_solver_rank,
        set_multiprocess,
        has_nccl,
        NCCL,
        Timer,
    )
}


# ---------------------------------------------------------------- the shim module


def _caffe_getattr(name: str):
    import minicaffe

    if name.startswith("__"):
        raise AttributeError(f"module 'caffe' has no attribute {name!r}")
    if name in _FROM:
        module, attr = _FROM[name]
        return getattr(importlib.import_module(module), attr)
    sub = SUBMODULES.get(f"caffe.{name}")
    if sub is not None:
        return importlib.import_module(sub)
    if name in _EXTRAS:
        return _EXTRAS[name]
    try:
        return getattr(minicaffe, name)
    except AttributeError:
        raise AttributeError(
            f"module 'caffe' (minicaffe's alias) has no attribute {name!r}; "
            "minicaffe does not provide this pycaffe name"
        ) from None


def _make_shim() -> types.ModuleType:
    import minicaffe

    shim = types.ModuleType(
        "caffe", "pycaffe's names, provided by minicaffe (see minicaffe.compat)"
    )
    shim.__path__ = []  # a package: `import caffe.io` looks in sys.modules (filled below)
    shim.__minicaffe_alias__ = True
    shim.__version__ = minicaffe.__version__
    shim.__getattr__ = _caffe_getattr
    public = set(getattr(minicaffe, "__all__", ())) | set(_FROM) | set(_EXTRAS)
    public |= {k.split(".")[1] for k in SUBMODULES}
    shim.__dir__ = lambda: sorted(public)
    shim.__all__ = sorted(n for n in public if n not in ("io", "proto", "coord_map"))
    return shim


def is_installed() -> bool:
    return bool(getattr(sys.modules.get("caffe"), "__minicaffe_alias__", False))


def install_caffe_alias(*, force: bool = False) -> types.ModuleType:
    """Make ``import caffe`` (and its submodules) resolve to minicaffe; returns the module.

    Idempotent. If a different ``caffe`` module was already imported, this raises unless
    ``force`` (then the alias replaces it for later imports).
    """
    current = sys.modules.get("caffe")
    if current is not None and getattr(current, "__minicaffe_alias__", False):
        return current
    if current is not None and not force:
        raise MinicaffeError(
            f"a different 'caffe' module is already imported "
            f"({getattr(current, '__file__', current)!r}); call "
            "install_caffe_alias(force=True) to replace it with minicaffe"
        )
    shim = _make_shim()
    modules = {"caffe": shim}
    for alias, target in SUBMODULES.items():
        modules[alias] = importlib.import_module(target)
    for name in [n for n in sys.modules if n == "caffe" or n.startswith("caffe.")]:
        del sys.modules[name]
    sys.modules.update(modules)
    shim.proto = modules["caffe.proto"]
    return shim


def uninstall_caffe_alias() -> None:
    """Remove the alias (modules that already imported ``caffe`` keep their reference)."""
    if not is_installed():
        return
    for name in [n for n in sys.modules if n == "caffe" or n.startswith("caffe.")]:
        del sys.modules[name]


__all__ = ["SUBMODULES", "install_caffe_alias", "is_installed", "uninstall_caffe_alias"]
