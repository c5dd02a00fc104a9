"""Python: a layer whose class comes from a user module, as pycaffe's ``type: "Python"``.

    layer { name: "loss" type: "Python" bottom: "a" bottom: "b" top: "loss" loss_weight: 1
            python_param { module: "pyloss" layer: "EuclideanLossLayer" param_str: "..." } }

The class named by ``python_param.layer`` is looked up in ``python_param.module`` and must
subclass :class:`minicaffe.Layer` (which is pycaffe's ``caffe.Layer`` under the ``caffe`` alias,
see :mod:`minicaffe.compat`). It is driven exactly as pycaffe drives it: ``self.param_str`` and
``self.phase`` are set before ``setup(bottom, top)``; then ``reshape(bottom, top)`` and
``forward(bottom, top)`` per pass and ``backward(top, propagate_down, bottom)``. Blobs offer
pycaffe's API (``data``, ``diff``, ``shape``, ``count``, ``num``, ``channels``, ``height``,
``width``, ``reshape(*shape)``) and ``self.blobs.add_blob(*shape)`` creates a learnable blob.

Python layers always run on the NumPy engine (``host_only``): on a GPU net the Net copies their
bottoms to the host and their tops back, so user code sees NumPy arrays as it expects.

Module search: ``sys.path`` first, then the folder of the prototxt being built and the current
working directory (pycaffe users often keep the layer module beside the prototxt).
``share_in_parallel`` (deprecated in Caffe, multi-GPU only) has no effect here.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import sys
import threading
import types

import numpy as np

from minicaffe.backend import CPU_DEVICE
from minicaffe.blob import Blob
from minicaffe.errors import LayerError
from minicaffe.layer import Layer
from minicaffe.registry import register_layer

log = logging.getLogger("minicaffe")

_local = threading.local()


class PythonLayerError(LayerError, ImportError):
    """A Python layer whose module or class cannot be used (also an ImportError)."""


class BlobVec(list):
    """``self.blobs`` of a Python layer: a list of Blobs with pycaffe's ``add_blob(*shape)``."""

    def __init__(self, items=(), *, layer: Layer | None = None):
        super().__init__(items)
        self._layer = layer

    def add_blob(self, *shape) -> Blob:
        layer = self._layer
        xp = layer.xp if layer is not None else np
        dtype = layer.dtype if layer is not None else np.float32
        blob = Blob(*shape, xp=xp, dtype=dtype)
        self.append(blob)
        return blob


@contextlib.contextmanager
def module_search_dirs(dirs):
    """Extra folders (after ``sys.path``) where Python layer modules are looked for.

    The Net enters this while it builds, with the prototxt's folder.
    """
    dirs = [os.path.abspath(os.fspath(d)) for d in dirs if d]
    saved = getattr(_local, "dirs", [])
    _local.dirs = saved + [d for d in dirs if d not in saved]
    try:
        yield
    finally:
        _local.dirs = saved


def _search_dirs() -> list[str]:
    extra = list(getattr(_local, "dirs", []))
    cwd = os.getcwd()
    if cwd not in extra:
        extra.append(cwd)
    return extra


def _caffe_alias_available() -> bool:
    """True when ``import caffe`` would give minicaffe's alias (or nothing else is installed)."""
    mod = sys.modules.get("caffe")
    if mod is not None:
        return bool(getattr(mod, "__minicaffe_alias__", False))
    try:
        return importlib.util.find_spec("caffe") is None
    except (ImportError, ValueError):
        return False


def _import_module(module: str, where: str, searched: list[str]):
    added = [d for d in _search_dirs() if d not in sys.path]
    searched.extend(list(sys.path) + added)
    sys.path.extend(added)
    try:
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # A layer module written for pycaffe does `import caffe`: when no other caffe is
            # installed, minicaffe's alias is what the user wants.
            if exc.name in ("caffe", "caffe.proto") and _caffe_alias_available():
                from minicaffe.compat import install_caffe_alias

                install_caffe_alias()
                log.info(
                    "%s: module %r imports caffe; using minicaffe's caffe alias", where, module
                )
                return importlib.import_module(module)
            raise
    finally:
        for d in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(d)


def load_layer_class(layer_param):
    """The user class for a ``type: "Python"`` LayerParameter; PythonLayerError if unusable."""
    p = layer_param.python_param
    where = f"layer '{layer_param.name}' (Python)"
    if not p.module or not p.layer:
        raise PythonLayerError(
            f"{where}: python_param.module and python_param.layer must both "
            f"be set; received module={p.module!r} layer={p.layer!r}"
        )
    searched: list[str] = []
    try:
        mod = _import_module(p.module, where, searched)
    except ModuleNotFoundError as exc:
        missing = exc.name or p.module
        what = (
            f"module {p.module!r} was not found"
            if missing == p.module or p.module.startswith(missing + ".")
            else f"module {p.module!r} failed to import: it needs {missing!r}, which was not found"
        )
        hint = ""
        if missing.split(".")[0] == "caffe":
            hint = (
                " (run the script with `python -m minicaffe.run script.py` or call "
                "minicaffe.install_caffe_alias() so that `import caffe` gives minicaffe)"
            )
        raise PythonLayerError(
            f"{where}: {what}{hint}; Python path searched: {_fmt_path(searched)}"
        ) from exc
    except Exception as exc:  # the user's module raised while importing
        raise PythonLayerError(
            f"{where}: importing module {p.module!r} raised "
            f"{type(exc).__name__}: {exc}; Python path searched: "
            f"{_fmt_path(searched)}"
        ) from exc
    cls = getattr(mod, p.layer, None)
    origin = getattr(mod, "__file__", None) or p.module
    if cls is None:
        names = sorted(
            n
            for n, v in vars(mod).items()
            if isinstance(v, type) and issubclass(v, Layer) and v is not Layer
        )
        raise PythonLayerError(
            f"{where}: module {p.module!r} ({origin}) has no class "
            f"{p.layer!r}; its Layer classes: {names or 'none'}; Python path "
            f"searched: {_fmt_path(searched)}"
        )
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        mro = getattr(cls, "__mro__", ())[1:]
        base = ", ".join(f"{b.__module__}.{b.__qualname__}" for b in mro)
        raise PythonLayerError(
            f"{where}: {p.module}.{p.layer} must be a class deriving from caffe.Layer "
            f"(minicaffe.Layer); its bases are: {base or type(cls).__name__}. If it imports a "
            "real pycaffe, run it under `python -m minicaffe.run` so that `caffe` is minicaffe"
        )
    missing = [m for m in ("reshape", "forward") if getattr(cls, m) is getattr(Layer, m)]
    if missing:
        raise PythonLayerError(
            f"{where}: class {p.layer} in module {p.module!r} ({origin}) does not define "
            f"{' and '.join(m + '()' for m in missing)}; a Python layer must define reshape and "
            "forward (and setup/backward as needed)"
        )
    return cls


def _fmt_path(paths: list[str]) -> str:
    seen = list(dict.fromkeys(p or "." for p in paths))
    return "[" + ", ".join(seen) + "]"


@register_layer("Python")
class PythonLayer(Layer):
    """Factory for ``type: "Python"``: constructing it returns an instance of the user's class.

    Params (python_param): module (required), layer (required, the class name),
    param_str = "" (given to the instance as ``self.param_str``), share_in_parallel = false
    (no effect). Bottoms, tops and blobs: whatever the user class defines.
    """

    host_only = True

    def __new__(cls, layer_param=None, *, phase=None, device=CPU_DEVICE, dtype=np.float32):
        if cls is not PythonLayer or layer_param is None:
            return super().__new__(cls)
        user_cls = load_layer_class(layer_param)
        obj = Layer.__new__(user_cls)
        Layer.__init__(obj, layer_param, phase=phase, device=device, dtype=dtype)
        saved = dict(obj.__dict__)
        if user_cls.__init__ is not Layer.__init__:  # a user __init__(self, param) as pycaffe's
            try:
                user_cls.__init__(obj, layer_param)
            except Exception as exc:
                raise PythonLayerError(
                    f"layer '{layer_param.name}' (Python): {user_cls.__name__}.__init__ raised "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            for key in ("layer_param", "phase", "device", "xp", "dtype"):
                obj.__dict__[key] = saved[key]
        obj.blobs = BlobVec(obj.blobs, layer=obj)
        if user_cls.backward is Layer.backward:
            obj.backward = types.MethodType(_backward_missing, obj)
        obj.param_str = layer_param.python_param.param_str
        return obj

    def reshape(self, bottom, top):  # pragma: no cover - never instantiated itself
        raise self.error("PythonLayer is a factory; it is never run")

    def forward(self, bottom, top):  # pragma: no cover
        raise self.error("PythonLayer is a factory; it is never run")


def _backward_missing(self, top, propagate_down, bottom):
    """Stands in for a user class without backward(): fine unless a gradient is needed."""
    if any(propagate_down):
        raise self.error(
            f"class {type(self).__name__} defines no backward() but the net needs "
            f"gradients for bottoms {[i for i, p in enumerate(propagate_down) if p]}"
            " (set propagate_down: false on those bottoms, or define backward)"
        )


__all__ = ["BlobVec", "PythonLayer", "PythonLayerError", "load_layer_class", "module_search_dirs"]
