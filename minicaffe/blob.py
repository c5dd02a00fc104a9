"""Blob: an N-d array of values (``data``) and of gradients (``diff``), as in Caffe.

Storage is a flat buffer per role that only grows, so reshaping to a smaller or equal count keeps
the memory (and every array view handed out before stays valid for the same shape). ``data`` and
``diff`` are views of those buffers in the blob's current shape. Two blobs can share buffers
(``share_data``/``share_diff``), which is how shared parameters and in-place layers work.

Layers must not keep a ``data``/``diff`` view across calls: take it afresh in each method.

Working layout: on NumPy, layers that chain convolutions, pooling and elementwise steps may
leave a 4-D blob's buffer in the batch-innermost (C, H, W, N) order (``write_chwn``), which
saves a transpose at each end of every such layer. The buffer records that (``layout``: the
(N, C, H, W) shape it was written in), and ``data``/``diff`` turn it back into Caffe's order the
first time anything else reads them, so every reader outside those layers sees NCHW. Only blobs
the net marks ``chwn_ok`` (every consumer understands the layout, and the blob is neither a net
input nor a net output) are ever left that way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from minicaffe.errors import OutOfMemoryError, ShapeError
from minicaffe.functional import address_key

_MAX_AXES = 32


def _normalize_shape(shape) -> tuple[int, ...]:
    if len(shape) == 1 and isinstance(shape[0], (list, tuple)):
        shape = tuple(shape[0])
    out = tuple(int(d) for d in shape)
    if len(out) > _MAX_AXES:
        raise ShapeError(f"a blob has at most {_MAX_AXES} axes; received shape {out}")
    if any(d < 0 for d in out):
        raise ShapeError(f"blob dimensions must be >= 0; received shape {out}")
    return out


def _size_text(nbytes: int) -> str:
    """A byte count for messages: 512 B, 1.50 MiB, 1.09 TiB, ..."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024:
            return f"{nbytes:.2f} {unit}" if unit != "B" else f"{nbytes} B"
        nbytes /= 1024
    return f"{nbytes:.2f} PiB"


class _Buffer:
    """A growable flat array; shared by every blob that shares the role."""

    __slots__ = ("array", "layout")

    def __init__(self, array):
        self.array = array
        self.layout = None  # None: Caffe's order; else the (N, C, H, W) shape held as CHWN

    def canonicalize(self) -> None:
        """Put a buffer held as (C, H, W, N) back into (N, C, H, W) order."""
        n, c, h, w = self.layout
        flat = self.array[: n * c * h * w]
        nchw = flat.reshape(c, h, w, n).transpose(3, 0, 1, 2).copy()
        flat[...] = nchw.reshape(-1)
        self.layout = None


class Blob:
    """Data + diff arrays of one shape, living on one array module (numpy or cupy)."""

    def __init__(self, *shape, xp=np, dtype=np.float32, name: str = ""):
        self.xp = xp
        self.dtype = np.dtype(dtype)
        self.name = name
        self._shape: tuple[int, ...] = ()
        self._count = 1
        self._data = _Buffer(None)
        self._diff = _Buffer(None)
        self.chwn_ok = False  # set by the net: this blob may be left in (C, H, W, N) order
        self.reshape(*shape) if shape else None

    # ------------------------------------------------------------------ shape
    def reshape(self, *shape) -> None:
        """Change the shape; memory grows only when the element count grows."""
        shape = _normalize_shape(shape)
        if shape != self._shape:
            for buf in (self._data, self._diff):
                if buf.layout is not None:
                    buf.canonicalize()
        self._shape = shape
        self._count = math.prod(shape)

    def reshape_like(self, other: Blob) -> None:
        self.reshape(other.shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def count(self) -> int:
        return self._count

    @property
    def num_axes(self) -> int:
        return len(self._shape)

    def canonical_axis(self, axis: int) -> int:
        """A possibly negative axis index made non-negative, checked against num_axes."""
        n = len(self._shape)
        if not -n <= axis < max(n, 1):
            raise ShapeError(f"axis {axis} is out of range for a blob of shape {self._shape}")
        return axis + n if axis < 0 else axis

    def count_range(self, start: int, end: int | None = None) -> int:
        return math.prod(self._shape[start:end])

    def _legacy(self, i: int) -> int:
        # Caffe's num/channels/height/width: axes 0..3 of a blob of at most 4 axes, 1 if absent.
        if len(self._shape) > 4:
            raise ShapeError(
                f"num/channels/height/width need a blob of <= 4 axes; shape {self._shape}"
            )
        return self._shape[i] if i < len(self._shape) else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    # ------------------------------------------------------------------ storage
    def _view(self, buf: _Buffer):
        arr = buf.array
        if arr is None or arr.size < self._count:
            try:
                new = self.xp.zeros(max(self._count, 1), dtype=self.dtype)
            except MemoryError:
                raise OutOfMemoryError(
                    f"blob '{self.name or '?'}' of shape {self._shape} needs "
                    f"{_size_text(self._count * self.dtype.itemsize)}, more memory than is free"
                    f" (batch size or input shape too large?)"
                ) from None
            buf.array = arr = new
        if buf.layout is not None:
            buf.canonicalize()
        return arr[: self._count].reshape(self._shape)

    # ------------------------------------------------------------------ working layout
    def _buf(self, diff: bool) -> _Buffer:
        return self._diff if diff else self._data

    def is_chwn(self, diff: bool = False) -> bool:
        """Whether data (or diff) is held in (C, H, W, N) order for the current shape."""
        layout = self._buf(diff).layout
        return layout is not None and layout == self._shape

    def chwn(self, diff: bool = False):
        """The (C, H, W, N) view of a buffer held in that order (check ``is_chwn`` first)."""
        n, c, h, w = self._shape
        return self._buf(diff).array[: self._count].reshape(c, h, w, n)

    def chwn_view(self, diff: bool = False):
        """Data (or diff) as (C, H, W, N) for reading: the buffer itself when held that way,
        else a transposed (strided) view of Caffe's order."""
        if self.is_chwn(diff):
            return self.chwn(diff)
        return (self.diff if diff else self.data).transpose(1, 2, 3, 0)

    def write_chwn(self, diff: bool = False):
        """A (C, H, W, N) view to overwrite completely; the buffer is then held in that order.
        Only for a 4-D blob marked ``chwn_ok``."""
        buf = self._buf(diff)
        if buf.array is None or buf.array.size < self._count:
            buf.layout = None  # (a new buffer: nothing to keep)
            self._view(buf)
        buf.layout = self._shape  # the old content, in any order, is overwritten
        return self.chwn(diff)

    def flat(self, diff: bool = False):
        """The buffer as a flat array in whatever order it is held, and that layout (for
        elementwise steps that can keep it)."""
        buf = self._buf(diff)
        if buf.array is None or buf.array.size < self._count:
            self._view(buf)
        return buf.array[: self._count], buf.layout

    def set_layout(self, layout, diff: bool = False) -> None:
        """Declare the order of a buffer just written through ``flat``."""
        self._buf(diff).layout = layout

    @property
    def data(self):
        return self._view(self._data)

    @data.setter
    def data(self, value) -> None:
        self._assign(self._data, value)

    @property
    def diff(self):
        return self._view(self._diff)

    @diff.setter
    def diff(self, value) -> None:
        self._assign(self._diff, value)

    def _assign(self, buf: _Buffer, value) -> None:
        view = self._view(buf)
        value = self._as_xp(value)
        if value.shape == view.shape and address_key(value, False) == address_key(view, False):
            return  # ``blob.diff += x`` hands back the view it just updated: nothing to copy
        if value.shape != view.shape and value.size == view.size:
            value = value.reshape(view.shape)
        view[...] = value

    def _as_xp(self, value):
        from minicaffe.backend import to_xp

        return to_xp(value, self.xp)

    @property
    def has_diff(self) -> bool:
        return self._diff.array is not None

    def share_data(self, other: Blob) -> None:
        """Use ``other``'s data memory (counts must match)."""
        self._check_share(other)
        self._data = other._data

    def share_diff(self, other: Blob) -> None:
        self._check_share(other)
        self._diff = other._diff

    def _check_share(self, other: Blob) -> None:
        if other.count != self.count:
            raise ShapeError(
                f"cannot share memory between blobs of {self.count} and {other.count} "
                f"elements (shapes {self.shape} and {other.shape})"
            )
        if other.xp is not self.xp or other.dtype != self.dtype:
            raise ShapeError("cannot share memory between blobs of different devices or dtypes")

    def to(self, xp) -> None:
        """Move the blob's buffers to the array module ``xp`` (numpy or cupy)."""
        from minicaffe.backend import to_xp

        if xp is self.xp:
            return
        for buf in (self._data, self._diff):
            if buf.layout is not None:
                buf.canonicalize()
            if buf.array is not None:
                buf.array = to_xp(buf.array, xp)
        self.xp = xp

    def astype(self, dtype) -> None:
        dtype = np.dtype(dtype)
        for buf in (self._data, self._diff):
            if buf.layout is not None:
                buf.canonicalize()
            if buf.array is not None:
                buf.array = buf.array.astype(dtype)
        self.dtype = dtype

    # ------------------------------------------------------------------ helpers
    def zero_diff(self) -> None:
        if self._diff.array is not None:
            self._diff.layout = None  # zeros read the same in any order
            self.diff.fill(0)

    def asum_data(self):
        return self.xp.abs(self.data).sum()

    def asum_diff(self):
        return self.xp.abs(self.diff).sum()

    def shape_string(self) -> str:
        return " ".join(str(d) for d in self._shape) + f" ({self._count})"

    def __repr__(self) -> str:
        dev = "cpu" if self.xp is np else "gpu"
        return f"Blob(name={self.name!r}, shape={self._shape}, dtype={self.dtype}, device={dev})"


def shape_equals_legacy(shape: Iterable[int], legacy: tuple[int, int, int, int]) -> bool:
    """Caffe's ShapeEquals for legacy num/channels/height/width dims.

    A blob of at most 4 axes matches when its shape, left-padded with 1s to 4 axes, equals the
    legacy dims (so an InnerProduct weight (out, in) matches 1x1xoutxin).
    """
    shape = tuple(shape)
    if len(shape) > 4:
        return False
    return (1,) * (4 - len(shape)) + shape == tuple(legacy)
