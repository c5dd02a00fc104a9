"""Devices and array modules.

minicaffe writes every layer once against an array module ``xp``: :mod:`numpy` on the CPU and
:mod:`cupy` on a GPU. This module decides which one a layer runs on, moves arrays between them,
and owns the process-wide mode (pycaffe's ``set_mode_cpu``/``set_mode_gpu``/``set_device``) and
random state (``set_random_seed``). CuPy is optional and imported only when a GPU is asked for.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from minicaffe.errors import DeviceError

CPU = "cpu"
GPU = "gpu"

_cupy: Any = None
_cupy_checked = False
_lock = threading.Lock()


def get_cupy():
    """Return the cupy module if it imports and a CUDA device answers, else None."""
    global _cupy, _cupy_checked
    with _lock:
        if not _cupy_checked:
            _cupy_checked = True
            if os.environ.get("MINICAFFE_DISABLE_GPU"):
                return None
            try:
                import cupy

                if cupy.cuda.runtime.getDeviceCount() > 0:
                    _cupy = cupy
            except Exception:  # no CuPy, no driver, or no device: all mean "no GPU"
                _cupy = None
        return _cupy


def gpu_available() -> bool:
    return get_cupy() is not None


@dataclass(frozen=True)
class Device:
    """Where a layer's arrays live: ``Device("cpu")`` or ``Device("gpu", id)``."""

    kind: str = CPU
    id: int = 0

    @property
    def is_gpu(self) -> bool:
        return self.kind == GPU

    @property
    def xp(self):
        if self.kind == CPU:
            return np
        cp = get_cupy()
        if cp is None:
            raise DeviceError(
                "a GPU device was requested but CuPy or a CUDA device is missing; "
                "install minicaffe[gpu] or run on the CPU"
            )
        return cp

    def __str__(self) -> str:
        return "CPU" if self.kind == CPU else f"GPU {self.id}"


CPU_DEVICE = Device(CPU, 0)


def gpu_device(device_id: int = 0) -> Device:
    return Device(GPU, int(device_id))


def array_module(arr) -> Any:
    """numpy or cupy, whichever owns ``arr``."""
    if isinstance(arr, np.ndarray) or np.isscalar(arr):
        return np
    cp = get_cupy()
    if cp is not None:
        return cp.get_array_module(arr)
    return np


def to_numpy(arr) -> np.ndarray:
    """A host NumPy array for ``arr`` (no copy when it already is one)."""
    if isinstance(arr, np.ndarray):
        return arr
    if hasattr(arr, "get"):
        return arr.get()
    return np.asarray(arr)


def to_xp(arr, xp, dtype=None):
    """``arr`` as an array of module ``xp`` (copying across devices only when needed)."""
    if xp is np:
        out = to_numpy(arr)
        return out if dtype is None else out.astype(dtype, copy=False)
    return xp.asarray(arr, dtype=dtype)


def copy_into(dst, src) -> None:
    """Copy ``src`` into the existing array ``dst`` (same shape), across devices without a
    temporary: host->GPU with ``cupy.ndarray.set``, GPU->host with ``get(out=...)``."""
    if isinstance(dst, np.ndarray):
        if isinstance(src, np.ndarray):
            np.copyto(dst, src)
        elif hasattr(src, "get"):
            if dst.flags.c_contiguous and src.flags.c_contiguous and src.dtype == dst.dtype:
                src.get(out=dst)
            else:
                dst[...] = src.get()
        else:
            dst[...] = src
    elif isinstance(src, np.ndarray) and hasattr(dst, "set"):
        if dst.flags.c_contiguous and src.flags.c_contiguous and src.dtype == dst.dtype:
            dst.set(src)
        else:
            dst[...] = to_xp(src, array_module(dst))
    else:
        dst[...] = src


def device_context(device: Device):
    """Context manager selecting ``device`` for CuPy allocations (no-op on the CPU)."""
    if device.is_gpu:
        return device.xp.cuda.Device(device.id)
    import contextlib

    return contextlib.nullcontext()


# ---------------------------------------------------------------- process-wide mode (pycaffe)


class _Mode:
    device: Device = CPU_DEVICE


_mode = _Mode()


def set_mode_cpu() -> None:
    _mode.device = CPU_DEVICE


def set_mode_gpu() -> None:
    _mode.device = gpu_device(_mode.device.id)


def set_device(device_id: int) -> None:
    _mode.device = Device(_mode.device.kind, int(device_id))


def default_device() -> Device:
    return _mode.device


# ---------------------------------------------------------------- random state

_rng = np.random.default_rng()


def set_random_seed(seed: int) -> None:
    """Seed every random draw minicaffe makes (fillers, dropout masks, shuffles, crops)."""
    global _rng
    _rng = np.random.default_rng(int(seed))
    cp = _cupy if _cupy_checked else None
    if cp is not None:
        cp.random.seed(int(seed) & 0xFFFFFFFF)


def rng() -> np.random.Generator:
    """The process-wide host random generator."""
    return _rng
