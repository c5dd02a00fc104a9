"""The layer registry: type string -> Layer class, engine resolution, and layer creation.

``@register_layer("Type")`` registers a class. Every module in ``minicaffe/layers`` and
``minicaffe/data`` is imported on first use, so adding a layer means adding one file.

Engines: a layer's parameter message may carry ``engine`` (DEFAULT=0, CAFFE=1, CUDNN=2).
DEFAULT runs on the net's device, CAFFE on the NumPy engine (CPU), CUDNN on the CuPy engine (GPU);
without a usable GPU a CUDNN layer runs on NumPy (the Net warns once, naming the layers).
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import threading

from minicaffe.backend import CPU_DEVICE, Device, gpu_available, gpu_device
from minicaffe.errors import UnknownLayerError

_REGISTRY: dict[str, type] = {}
_discovered = False
_lock = threading.RLock()

ENGINE_DEFAULT, ENGINE_CAFFE, ENGINE_CUDNN = 0, 1, 2
_PACKAGES = ("minicaffe.layers", "minicaffe.data")


def register_layer(type_name: str):
    """Class decorator registering a Layer subclass under Caffe's ``type`` string."""

    def decorate(cls):
        existing = _REGISTRY.get(type_name)
        if (
            existing is not None
            and existing is not cls
            and (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__)
        ):
            raise ValueError(
                f"layer type {type_name!r} is registered twice: by "
                f"{existing.__module__}.{existing.__qualname__} and "
                f"{cls.__module__}.{cls.__qualname__}"
            )
        cls.type_name = type_name
        _REGISTRY[type_name] = cls
        return cls

    return decorate


def discover() -> None:
    """Import every layer module once (idempotent)."""
    global _discovered
    with _lock:
        if _discovered:
            return
        _discovered = True
        for package_name in _PACKAGES:
            try:
                package = importlib.import_module(package_name)
            except ModuleNotFoundError:
                continue
            for info in pkgutil.iter_modules(package.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{package_name}.{info.name}")


def layer_type_list() -> list[str]:
    """Every registered layer type, sorted (pycaffe's ``caffe.layer_type_list()``)."""
    discover()
    return sorted(_REGISTRY)


def get_layer_class(type_name: str, layer_name: str = ""):
    discover()
    cls = _REGISTRY.get(type_name)
    if cls is None:
        known = sorted(_REGISTRY)
        close = difflib.get_close_matches(type_name, known, n=3, cutoff=0.5)
        lower = [k for k in known if k.lower() == type_name.lower()]
        hint = lower or close
        where = f"layer '{layer_name}': " if layer_name else ""
        msg = f"{where}unknown layer type {type_name!r}"
        if hint:
            msg += f"; did you mean {' or '.join(repr(h) for h in hint)}?"
        msg += f" Known types: {', '.join(known)}"
        raise UnknownLayerError(msg)
    return cls


def layer_engine(layer_param) -> int:
    """The engine requested by any ``*_param`` message of the layer (DEFAULT when none)."""
    for field, value in layer_param.ListFields():
        if field.message_type is not None and hasattr(value, "HasField"):  # singular message
            if "engine" in field.message_type.fields_by_name and value.HasField("engine"):
                return int(value.engine)
    return ENGINE_DEFAULT


def resolve_device(layer_param, net_device: Device) -> tuple[Device, bool]:
    """The device a layer runs on, and whether a CUDNN request fell back to the CPU.

    A layer class with ``host_only = True`` (Python layers, file writers) always runs on the CPU.
    """
    cls = _REGISTRY.get(layer_param.type)
    if cls is not None and getattr(cls, "host_only", False):
        return CPU_DEVICE, False
    engine = layer_engine(layer_param)
    if engine == ENGINE_CAFFE:
        return CPU_DEVICE, False
    if engine == ENGINE_CUDNN:
        if gpu_available():
            return (net_device if net_device.is_gpu else gpu_device(0)), False
        return CPU_DEVICE, True
    return net_device, False


def create_layer(layer_param, *, phase: int, device: Device, dtype):
    cls = get_layer_class(layer_param.type, layer_param.name)
    return cls(layer_param, phase=phase, device=device, dtype=dtype)
