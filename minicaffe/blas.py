"""GEMM with an accumulating ``beta`` and strided operands, straight from NumPy's OpenBLAS.

``np.matmul`` already hands 2-D operands whose rows are strided (a leading dimension larger
than the row) to BLAS without copying, but it cannot add into its output: ``C = A B + C``
needs a temporary and a second pass over C. The working-layout convolution sums one GEMM per
kernel row into the same output (see ``chwn.ChwnRowConvPlan``), so that pass would be paid
``kh - 1`` times per layer. :func:`gemm` calls ``cblas_?gemm`` of the OpenBLAS that NumPy
itself loaded (through ctypes: no build step; ctypes releases the GIL for the call) and falls
back to ``np.matmul`` plus an add where that library or a suitable operand is not available
(another BLAS, another platform, or ``MINICAFFE_CBLAS=0``).
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

# CBLAS enumerations
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


class _Cblas:
    """The ``cblas_sgemm``/``cblas_dgemm`` entry points of the loaded OpenBLAS, or none."""

    def __init__(self):
        self.checked = False
        self.funcs: dict = {}
        self.vector: dict = {}

    def _find(self) -> None:
        self.checked = True
        if os.environ.get("MINICAFFE_CBLAS", "1") == "0":
            return
        for lib in loaded_openblas():
            # scipy-openblas (NumPy's wheels): scipy_cblas_sgemm64_ with 64-bit integers; a
            # plain OpenBLAS: cblas_sgemm, whose integer width its build config tells
            for prefix, suffix in (("scipy_", "64_"), ("", "64_"), ("scipy_", ""), ("", "")):
                names = {
                    dt: f"{prefix}cblas_{c}gemm{suffix}" for dt, c in (("f4", "s"), ("f8", "d"))
                }
                if not all(hasattr(lib, n) for n in names.values()):
                    continue
                wide = bool(suffix) or self._ilp64(lib, prefix)
                integer = ctypes.c_int64 if wide else ctypes.c_int32
                ptr = ctypes.c_void_p
                for dt, name in names.items():
                    fn = getattr(lib, name)
                    real = ctypes.c_float if dt == "f4" else ctypes.c_double
                    fn.argtypes = [ctypes.c_int] * 3 + [integer] * 3 + [
                        real, ptr, integer, ptr, integer, real, ptr, integer
                    ]
                    fn.restype = None
                    self.funcs[np.dtype(dt)] = fn
                    # y = a x + b y and y += a x (the routines Caffe's CPU solvers call)
                    c = name[len(prefix) + 6]
                    for op, args in (("axpby", 2), ("axpy", 1)):
                        vec = getattr(lib, f"{prefix}cblas_{c}{op}{suffix}", None)
                        if vec is None:
                            continue
                        vec.argtypes = [integer, real, ptr, integer] + (
                            [real, ptr, integer] if args == 2 else [ptr, integer]
                        )
                        vec.restype = None
                        self.vector[(op, np.dtype(dt))] = vec
                return

    @staticmethod
    def _ilp64(lib, prefix: str) -> bool:
        config = getattr(lib, f"{prefix}openblas_get_config", None)
        if config is None:
            return False
        config.restype = ctypes.c_char_p
        return b"USE64BITINT" in (config() or b"")

    def get(self, dtype, op: str = "gemm"):
        """The ``cblas_?<op>`` for ``dtype`` (gemm, axpby or axpy), or None."""
        if not self.checked:
            self._find()
        return self.funcs.get(dtype) if op == "gemm" else self.vector.get((op, dtype))


_cblas = _Cblas()


def loaded_openblas() -> list:
    """ctypes handles of the OpenBLAS libraries this process has loaded (NumPy's), found in
    /proc/self/maps; empty where that file does not exist."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and "/" in ln})
    except OSError:
        return []
    libs = []
    for path in paths:
        try:
            libs.append(ctypes.CDLL(path))
        except OSError:
            continue
    return libs


def _vector_routine(op: str, x, y):
    """The cblas ``op`` for contiguous NumPy arrays ``x``, ``y`` of one float dtype and size."""
    if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
        return None
    if x.dtype != y.dtype or x.size != y.size or not x.size:
        return None
    if not (x.flags.c_contiguous and y.flags.c_contiguous and y.flags.writeable):
        return None
    return _cblas.get(y.dtype, op)


def axpby(alpha: float, x, beta: float, y) -> bool:
    """``y = alpha * x + beta * y`` in place through OpenBLAS's ``cblas_?axpby`` (the routine
    Caffe's CPU solvers call; one pass) when it applies: contiguous NumPy arrays of one float
    dtype and size. Returns False, with nothing done, otherwise (the caller's own path)."""
    fn = _vector_routine("axpby", x, y)
    if fn is None:
        return False
    fn(y.size, alpha, x.ctypes.data, 1, beta, y.ctypes.data, 1)
    return True


def axpy(alpha: float, x, y) -> bool:
    """``y += alpha * x`` in place through ``cblas_?axpy`` when it applies (as :func:`axpby`);
    False, with nothing done, otherwise."""
    fn = _vector_routine("axpy", x, y)
    if fn is None:
        return False
    fn(y.size, alpha, x.ctypes.data, 1, y.ctypes.data, 1)
    return True


def available(dtype=np.float32) -> bool:
    """Whether :func:`gemm` calls BLAS directly for ``dtype`` (else it falls back)."""
    return _cblas.get(np.dtype(dtype)) is not None


def _operand(a, size: int):
    """(transpose flag, leading dimension) of a 2-D operand with one unit stride, or None."""
    s0, s1 = a.strides
    rows, cols = a.shape
    if s1 == size and s0 % size == 0 and s0 // size >= max(1, cols):
        return _NO_TRANS, s0 // size
    if s0 == size and s1 % size == 0 and s1 // size >= max(1, rows):
        return _TRANS, s1 // size
    return None


def gemm(a: np.ndarray, b: np.ndarray, c: np.ndarray, beta: float = 0.0, alpha: float = 1.0):
    """``c = alpha * a @ b + beta * c`` in place (2-D NumPy arrays of one float dtype; each may
    be a strided view whose rows or columns are contiguous). With ``beta == 0`` the old
    contents of ``c`` are ignored (NaN included), as BLAS does."""
    m, k = a.shape
    n = b.shape[1]
    if b.shape[0] != k or c.shape != (m, n):
        raise ValueError(f"gemm: shapes {a.shape} @ {b.shape} -> {c.shape} do not match")
    fn = _cblas.get(c.dtype) if a.dtype == b.dtype == c.dtype else None
    size = c.dtype.itemsize
    if fn is not None and m and n and k:
        fa, fb = _operand(a, size), _operand(b, size)
        s0, s1 = c.strides
        if fa and fb and s1 == size and s0 % size == 0 and s0 // size >= n:
            fn(_ROW_MAJOR, fa[0], fb[0], m, n, k, alpha, a.ctypes.data, fa[1],
               b.ctypes.data, fb[1], beta, c.ctypes.data, s0 // size)
            return c
    if beta == 0:
        np.matmul(a, b, out=c)
        if alpha != 1:
            c *= alpha
        return c
    prod = np.matmul(a, b)
    if alpha != 1:
        prod *= alpha
    if beta != 1:
        c *= beta
    c += prod
    return c
