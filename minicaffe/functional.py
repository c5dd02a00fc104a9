"""Array math shared by layers, written once against an array module ``xp`` (numpy or cupy).

Convolution geometry (Caffe's rules), im2col/col2im in N spatial dimensions, the GEMM plans used
by Convolution and Deconvolution, and the pooling windows used by Pooling and SPP.

Inside a net on NumPy, chains of 2-D convolutions and pooling run instead in the batch-innermost
working layout of :mod:`minicaffe.chwn` (see docs/performance.md); the plans here serve the
other cases (1x1 and first layers before NCHW layers, N-d, CuPy, MINICAFFE_LAYOUT=nchw).

Speed notes (measured on shared 2-core machines; tools/bench_nets.py prints whole-net figures):
what decides the time of a NumPy convolution is not the GEMM alone but the copies around it.

* 2-D layers with many input channels work in a batch-innermost (C, H, W, N) layout, where every
  im2col copy moves runs of ``W_out * N`` contiguous values, in row tiles small enough that the
  column buffer stays in cache between the copy and the GEMM; GEMMs are oriented with the long
  output-position axis as rows (faster in OpenBLAS when there are few output channels).
* Small stride-1 layers whose whole-batch columns fit WHOLE_ELEMS (LeNet conv2) run as a single
  tile: one GEMM per direction with OpenBLAS's own threads, the forward's columns reused by the
  weight gradient, im2col/col2im split by channel between threads. The direct plan likewise keeps
  a whole-batch column buffer when it fits, for the backward (LeNet conv1).
* First layers (1-3 input channels, wide outputs) keep NCHW and run one batched GEMM per chunk of
  images, which writes the top directly: there the transposes would cost more than the GEMM.
* Stride-1 "same" convolutions take the data gradient as a convolution with the flipped kernel.
* Pooling runs in cache-sized batch chunks over contiguous "phase" copies of the input.
* Tiles and chunks are shared by NUM_THREADS threads (NumPy releases the GIL; OpenBLAS is held to
  one thread inside those regions). Buffers are allocated once per shape and reused (``out=``),
  so a steady-state step allocates nothing large.
"""

from __future__ import annotations

import math
import os
import threading
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from minicaffe import blas

# Column-buffer budget (elements) of one tile of the 2-D convolution plan on the CPU.
TILE_ELEMS = int(os.environ.get("MINICAFFE_CONV_TILE", 1 << 19))
# 2-D layers whose whole-batch column matrix holds at most this many elements run as one GEMM
# (OpenBLAS threads itself) and the backward reuses the forward's columns (0 turns this off).
WHOLE_ELEMS = int(os.environ.get("MINICAFFE_CONV_WHOLE", 1 << 22))
# Kernel rows in the direct NCHW plan (Conv2dDirectPlan.rows): at most this many output channels
# per group, at least this many output positions per image and this many multiply-adds in each
# kernel row's GEMM (0 turns kernel rows off).
ROWS_MAX_OUT = int(os.environ.get("MINICAFFE_NCHW_ROWS_MAX_OUT", 256))
ROWS_MIN_POSITIONS = int(os.environ.get("MINICAFFE_NCHW_ROWS_MIN_POSITIONS", 256))
ROWS_MIN_MACS = int(os.environ.get("MINICAFFE_NCHW_ROWS_MIN_MACS", 8_000_000))
# Shifted-view forward (Conv2dShiftPlan): at most this many values in one group's accumulator
# (output channels x wide output positions), at least this many input channels per group
# (SHIFT_MAX_OUT=0 turns the plan off).
SHIFT_MAX_OUT = int(os.environ.get("MINICAFFE_SHIFT_MAX_OUT", 1 << 19))
SHIFT_MIN_CHANNELS = int(os.environ.get("MINICAFFE_SHIFT_MIN_CHANNELS", 16))
SHIFT_MAX_WASTE = 0.2  # how much longer than the output rows the wide rows may be
SHIFT_MIN_WIDE = 1024  # fewest wide output positions (rows x padded width x batch)


PARALLEL_MIN_ELEMS = 1 << 17
# Batch-chunk size (input values) of the pooling passes: about 1 MB of float32.
CHUNK_ELEMS = 1 << 18
_pool = None


class _BlasThreads:
    """Get/set the thread count of the OpenBLAS that NumPy loaded (ctypes; no-op elsewhere)."""

    def __init__(self):
        self.checked = False
        self.get = self.set = None

    def _find(self) -> None:
        self.checked = True
        try:
            import ctypes

            from minicaffe.blas import loaded_openblas

            for lib in loaded_openblas():
                for suffix in ("64_", ""):
                    for prefix in ("scipy_openblas", "openblas"):
                        getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                        setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                        if getter is not None and setter is not None:
                            getter.restype = ctypes.c_int
                            setter.argtypes = [ctypes.c_int]
                            self.get, self.set = getter, setter
                            return
        except (OSError, AttributeError, ValueError):
            pass

    def limit(self, n: int):
        """Set the thread count to ``n``; returns the previous count (None when unknown)."""
        if not self.checked:
            self._find()
        if self.get is None:
            return None
        old = int(self.get())
        if old != n:
            self.set(n)
        return old

    def restore(self, old) -> None:
        if old is not None and self.set is not None:
            self.set(old)

    def count(self):
        """OpenBLAS's current thread count (None when it cannot be reached)."""
        if not self.checked:
            self._find()
        return None if self.get is None else int(self.get())


_blas = _BlasThreads()
_state = threading.local()


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int:
    """Threads for splitting NumPy copies and elementwise passes (they release the GIL):
    MINICAFFE_NUM_THREADS when set, else at most 2, and only cores that OpenBLAS's threads
    leave free.

    After each GEMM, OpenBLAS's threads spin for a while (about 2^28 cycles) before they
    sleep, so inside a net, where GEMMs come every few passes, they hold every core they run
    on: a helper thread of ours on the same core only takes turns with a spinning thread.
    Measured side by side on a 2-core machine with OpenBLAS on 2 threads, the split gained
    nothing (time with it over time without: LeNet train step 0.98-1.06x, cifar10_quick
    1.0-1.11x, CaffeNet forward 1.19x); with OpenBLAS held to one thread, the second core is
    ours again. (Giving every GEMM to minicaffe's two threads instead, OpenBLAS on one, made
    LeNet's step 1.45x slower: OpenBLAS's own threads hand work over far faster.)
    """
    env = os.environ.get("MINICAFFE_NUM_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            import warnings

            warnings.warn(
                f"MINICAFFE_NUM_THREADS={env!r} is not an integer; using 1", stacklevel=2
            )
            return 1
    cpus = _cpus()
    blas_threads = _blas.count()
    if blas_threads is None:
        return min(2, cpus)
    return max(1, min(2, cpus - blas_threads + 1))


# Threads for splitting large NumPy copies and elementwise passes; BLAS keeps its own threads.
NUM_THREADS = default_threads()


def with_callers_errstate(fn):
    """``fn`` run under the calling thread's NumPy error state (which is per thread, so a
    worker thread would otherwise warn where the caller silenced a warning)."""
    errors = np.geterr()

    def run(*args):
        with np.errstate(**errors):
            return fn(*args)

    return run


def parallel(fn, n: int, work: int = 1 << 30, gemm: bool = False, dynamic: bool = False) -> None:
    """Run ``fn(start, stop)`` over ``range(n)`` on NUM_THREADS threads (the calling thread is
    one of them); one call ``fn(0, n)`` when ``work`` (elements touched) is small or there is
    one thread.

    Static (default): one contiguous part per thread, so per-thread partial sums cover fixed
    ranges and add up in a fixed order. ``dynamic``: threads take the next unit when free
    (``fn(i, i + 1)``), so a thread slowed by a busy core does not hold the others back; only
    for work without per-thread partial sums. ``gemm``: the parts call BLAS, which then runs
    one thread per part (NumPy's OpenBLAS is limited to 1 thread meanwhile).
    """
    parts = min(NUM_THREADS, n)
    if parts < 2 or work < PARALLEL_MIN_ELEMS or getattr(_state, "busy", False):
        fn(0, n)  # (nested calls run serially: the pool's threads are already taken)
        return
    global _pool
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(NUM_THREADS - 1, thread_name_prefix="minicaffe")
    if dynamic:
        import itertools

        counter = itertools.count()  # next() is atomic under the GIL

        def body(_a, _b):
            for i in iter(counter.__next__, None):
                if i >= n:
                    return
                fn(i, i + 1)
    else:
        body = fn

    body = with_callers_errstate(body)

    def part(a, b):
        _state.busy = True
        try:
            body(a, b)
        finally:
            _state.busy = False

    old = _blas.limit(1) if gemm else None
    try:
        ranges = even_ranges(n, parts)
        futures = [_pool.submit(part, *r) for r in ranges[1:]]
        try:
            part(*ranges[0])
        finally:
            for f in futures:
                f.result()
    finally:
        _blas.restore(old)


def even_ranges(total: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` [start, stop) ranges of (nearly) equal length covering range(total)."""
    return [(total * i // parts, total * (i + 1) // parts) for i in range(parts)]


def axis_slice(start: int, count: int, step: int) -> slice:
    """The slice of ``count`` indices from ``start`` in steps of ``step``."""
    return slice(start, start + step * (count - 1) + 1, step)


def add_kernel_columns(target, cols, wo: int, stride: int, dilation: int) -> None:
    """Overwrite ``target`` (C, H_padded, W_padded, ...) with the columns' gradient of a
    kernel-row convolution added back at its horizontal kernel offsets: ``cols`` (C, kw,
    H_padded, W_out, ...) holds, for offset j, the values read from input columns
    ``j * dilation + w * stride``. With stride 1 the first offset is copied (its columns then
    need no zeroing pass under it)."""
    kw = cols.shape[1]
    if stride == 1:
        np.copyto(target[:, :, :wo], cols[:, 0])
        target[:, :, wo:].fill(0)
    else:
        target.fill(0)
    for j in range(1 if stride == 1 else 0, kw):
        view = target[:, :, axis_slice(j * dilation, wo, stride)]
        view += cols[:, j]


def as_strided(xp, array, shape, strides):
    """``xp``'s as_strided (a view; the caller guarantees the strides stay inside ``array``)."""
    return xp.lib.stride_tricks.as_strided(array, shape=shape, strides=strides)


# ---------------------------------------------------------------------------------- geometry
def conv_out_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    """Caffe's convolution output size: floor((size + 2 pad - (dilation (kernel - 1) + 1)) /
    stride) + 1. Returns a value < 1 when the dilated kernel does not fit the padded input."""
    extent = dilation * (kernel - 1) + 1
    span = size + 2 * pad - extent
    return span // stride + 1 if span >= 0 else 0


def deconv_out_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    """Deconvolution output size: stride (size - 1) + dilation (kernel - 1) + 1 - 2 pad."""
    return stride * (size - 1) + dilation * (kernel - 1) + 1 - 2 * pad


def pool_out_size(
    size: int, kernel: int, stride: int, pad: int, ceil_mode: bool, clip: bool | None = None
) -> int:
    """Caffe's pooling output size: ceil (default) or floor of (size + 2 pad - kernel) / stride,
    plus 1; then, when the layer pads (``clip``, default ``pad > 0``; Caffe tests both axes'
    pads together), a last window that would start at or beyond size + pad is dropped."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if (pad > 0 if clip is None else clip) and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@dataclass(frozen=True)
class ConvGeometry:
    """Spatial geometry of a convolution: per-axis kernel, stride, pad, dilation and the input and
    output spatial sizes (``out`` by Caffe's floor rule)."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pad: tuple[int, ...]
    dilation: tuple[int, ...]
    in_size: tuple[int, ...]

    @property
    def out_size(self) -> tuple[int, ...]:
        return tuple(
            conv_out_size(*a)
            for a in zip(self.in_size, self.kernel, self.stride, self.pad, self.dilation)
        )

    @property
    def padded_size(self) -> tuple[int, ...]:
        return tuple(s + 2 * p for s, p in zip(self.in_size, self.pad))

    @property
    def kernel_count(self) -> int:
        return math.prod(self.kernel)

    @property
    def is_1x1(self) -> bool:
        return (
            all(k == 1 for k in self.kernel)
            and all(s == 1 for s in self.stride)
            and all(p == 0 for p in self.pad)
        )


# ---------------------------------------------------------------------------------- im2col (N-d)
def _offset_slices(geom: ConvGeometry, offset: tuple[int, ...]):
    """Slices of the padded input read by kernel position ``offset`` for every output position."""
    return tuple(
        slice(o * d, o * d + s * (n - 1) + 1, s)
        for o, d, s, n in zip(offset, geom.dilation, geom.stride, geom.out_size)
    )


def pad_into(x, geom: ConvGeometry, buf):
    """Copy ``x`` (..., *in_size) into the interior of ``buf`` (..., *padded_size), whose border
    is zero. Returns the padded array (``x`` itself when there is no padding)."""
    if not any(geom.pad):
        return x
    interior = (Ellipsis,) + tuple(slice(p, p + s) for p, s in zip(geom.pad, geom.in_size))
    buf[interior] = x
    return buf


def im2col_nd(xpad, geom: ConvGeometry, col) -> None:
    """Columns of a padded input: ``col[..., c, k_1..k_d, o_1..o_d] = xpad[..., c, o*s + k*d]``.

    ``xpad``: (lead..., C, *padded_size). ``col``: (lead..., C, *kernel, *out_size), any strides
    (a transposed view of a contiguous buffer picks the memory layout). One strided copy per
    kernel position.
    """
    nd = len(geom.kernel)
    for offset in np.ndindex(*geom.kernel):
        col[(Ellipsis,) + offset + (slice(None),) * nd] = xpad[
            (Ellipsis,) + _offset_slices(geom, offset)
        ]


def col2im_nd(col, geom: ConvGeometry, dxpad) -> None:
    """Adjoint of :func:`im2col_nd`: ``dxpad`` (zeroed by the caller) accumulates every column
    value at the input position it was read from."""
    nd = len(geom.kernel)
    for offset in np.ndindex(*geom.kernel):
        dst = dxpad[(Ellipsis,) + _offset_slices(geom, offset)]
        dst += col[(Ellipsis,) + offset + (slice(None),) * nd]


def _group_view(a, groups: int):
    """A 2-D (rows, cols) array as (groups, rows/groups, cols) (a plain 2-D array for 1 group)."""
    return a if groups == 1 else a.reshape(groups, a.shape[0] // groups, a.shape[1])


def _gemm(xp, a, b, out) -> None:
    xp.matmul(a, b, out=out)


def _t(a):
    """Transpose of the last two axes."""
    return a.T if a.ndim == 2 else a.swapaxes(-1, -2)


# ---------------------------------------------------------------------------------- conv plans
class ConvPlan:
    """Convolution of a (N, C, *in_size) input with weights (O, C/G, *kernel) by im2col + GEMM.

    Three operations cover Convolution (forward, backward) and Deconvolution (its forward is the
    data gradient of a convolution, its backward a forward plus a weight gradient):

    * ``forward(x, w2, y, bias)``: y = conv(x) (+ bias), y (N, O, *out_size).
    * ``backward(w2, dy, dw=None, dx=None, db=None, x=None, x_loaded=False)``: dw += dL/dw,
      db += dL/db, dx = dL/dx for the input ``x`` (``x_loaded``: ``x`` is the input of the last
      ``forward``, whose prepared copy may be reused).

    ``w2`` is the weight as a 2-D (O, C/G * prod(kernel)) array. This generic form works for any
    number of spatial axes; :class:`Conv2dPlan` is the fast 2-D form.

    ``backward_expected`` (set by the layer from the net's backward sweep): whether a backward
    will follow the forward, so that a plan may keep what the forward built for it.
    """

    backward_expected = True

    def __init__(
        self, xp, dtype, num: int, channels: int, num_output: int, geom: ConvGeometry, group: int
    ):
        self.xp, self.dtype = xp, np.dtype(dtype)
        self.n, self.c, self.o, self.geom, self.g = num, channels, num_output, geom, group
        self.out_count = math.prod(geom.out_size)
        self.k_total = channels * geom.kernel_count
        cols = num * self.out_count
        # col: (C, *kernel, N, *out) so that a GEMM row block is one group's channels
        self.col = xp.empty((self.k_total, cols), dtype)
        self.ybuf = xp.empty((num_output, cols), dtype)
        self.xpad = xp.zeros((num, channels) + geom.padded_size, dtype) if any(geom.pad) else None
        self.dxpad = None
        self._x = None

    def _col_view(self):
        """The column buffer as (N, C, *kernel, *out) (a transposed view)."""
        nd = len(self.geom.kernel)
        shape = (self.c,) + self.geom.kernel + (self.n,) + self.geom.out_size
        v = self.col.reshape(shape)
        order = (1 + nd, 0) + tuple(range(1, 1 + nd)) + tuple(range(2 + nd, 2 + 2 * nd))
        return v.transpose(order)

    def _im2col(self, x) -> None:
        xpad = pad_into(x, self.geom, self.xpad)
        im2col_nd(xpad, self.geom, self._col_view())

    def forward(self, x, w2, y, bias=None) -> None:
        xp = self.xp
        self._x = x
        self._im2col(x)
        _gemm(
            xp,
            _group_view(w2, self.g),
            _group_view(self.col, self.g),
            _group_view(self.ybuf, self.g),
        )
        if bias is not None:
            self.ybuf += bias.reshape(-1, 1)
        src = self.ybuf.reshape(self.o, self.n, self.out_count).transpose(1, 0, 2)
        y.reshape(self.n, self.o, self.out_count)[...] = src

    def backward(self, w2, dy, dw=None, dx=None, db=None, x=None, x_loaded=False) -> None:
        xp, g = self.xp, self.g
        dyt = self.ybuf
        dyt.reshape(self.o, self.n, self.out_count)[...] = dy.reshape(
            self.n, self.o, self.out_count
        ).transpose(1, 0, 2)
        if db is not None:
            db += dyt.sum(axis=1)
        if dw is not None:
            self._im2col(self._x if x is None else x)
            dw += xp.matmul(_group_view(dyt, g), _t(_group_view(self.col, g))).reshape(dw.shape)
        if dx is not None:
            _gemm(xp, _t(_group_view(w2, g)), _group_view(dyt, g), _group_view(self.col, g))
            if self.xpad is None:
                dxpad = dx
                dxpad.fill(0)
            else:
                if self.dxpad is None:
                    self.dxpad = xp.zeros_like(self.xpad)
                dxpad = self.dxpad
                dxpad.fill(0)
            col2im_nd(self._col_view(), self.geom, dxpad)
            if dxpad is not dx:
                interior = (Ellipsis,) + tuple(
                    slice(p, p + s) for p, s in zip(self.geom.pad, self.geom.in_size)
                )
                dx[...] = dxpad[interior]

    def data_gradient(self, w2, dy, dx, bias=None) -> None:
        """dx = conv^T(dy) (+ bias per input channel): Deconvolution's forward."""
        self.backward(w2, dy, dx=dx)
        if bias is not None:
            d3 = dx.reshape(self.n, self.c, -1)
            d3 += bias.reshape(1, -1, 1)


class Conv1x1Plan(ConvPlan):
    """Pointwise convolution (kernel 1, stride 1, pad 0): a batched GEMM straight on the
    (N, C, H*W) input, with no column buffer and no transposes."""

    def __init__(self, xp, dtype, num, channels, num_output, geom, group):
        self.xp, self.dtype = xp, np.dtype(dtype)
        self.n, self.c, self.o, self.geom, self.g = num, channels, num_output, geom, group
        self.p = math.prod(geom.in_size)
        self.dwbuf = xp.empty((num, group, num_output // group, channels // group), dtype)
        self._x = None

    def _split(self, a, ch):
        return a.reshape(self.n, self.g, ch // self.g, self.p)

    def forward(self, x, w2, y, bias=None) -> None:
        xp = self.xp
        self._x = x
        out = self._split(y, self.o)
        xp.matmul(w2.reshape(self.g, self.o // self.g, -1), self._split(x, self.c), out=out)
        if bias is not None:
            y3 = y.reshape(self.n, self.o, self.p)
            y3 += bias.reshape(1, -1, 1)

    def backward(self, w2, dy, dw=None, dx=None, db=None, x=None, x_loaded=False) -> None:
        xp = self.xp
        x = self._x if x is None else x
        dys = self._split(dy, self.o)
        if db is not None:
            db += dy.reshape(self.n, self.o, self.p).sum(axis=(0, 2))
        if dw is not None:
            xp.matmul(dys, self._split(x, self.c).transpose(0, 1, 3, 2), out=self.dwbuf)
            dw += self.dwbuf.sum(axis=0).reshape(dw.shape)
        if dx is not None:
            wg = w2.reshape(self.g, self.o // self.g, -1)
            xp.matmul(wg.transpose(0, 2, 1), dys, out=self._split(dx, self.c))


def copy_slabs(dst, src, axis: int, slab_elems: int = 1 << 16) -> None:
    """``dst[...] = src`` in slabs along ``axis``, each of about ``slab_elems`` values (shared
    between threads when large).

    For a transposing copy, slabs along the source's outermost memory axis keep the block being
    transposed in cache; one plain copy reads the whole source once per output row instead
    (measured 4-10x slower for NumPy on a few MB).
    """
    n = dst.shape[axis]
    per = max(1, dst.size // max(1, n))
    step = max(1, slab_elems // per)
    if step >= n or not isinstance(dst, np.ndarray):
        dst[...] = src
        return
    lead = (slice(None),) * axis
    starts = list(range(0, n, step))

    def run(i, j):
        for a in starts[i:j]:
            sl = lead + (slice(a, a + step),)
            dst[sl] = src[sl]

    parallel(run, len(starts), dst.size, dynamic=True)


def load_padded_chwn(xb, x, pad) -> None:
    """Copy the (N, C, H, W) input ``x`` into the interior of the zero-padded batch-innermost
    buffer ``xb`` (C, H + 2 ph, W + 2 pw, N); the border is left as it is (zeros)."""
    (ph, pw), (h, w) = pad, x.shape[2:]
    copy_slabs(xb[:, ph : ph + h, pw : pw + w, :], x.transpose(1, 2, 3, 0), 0)


class _Tiled(ConvPlan):
    """Shared machinery of the 2-D plans: per-thread scratch and tiles run on threads."""

    def _local(self, make):
        """This thread's scratch dict, made by ``make()`` on first use."""
        key = threading.get_ident()
        scratch = self._locals.get(key)
        if scratch is None:
            scratch = self._locals[key] = make()
        return scratch

    def _run(self, fn, n: int, work: int, dynamic: bool = False) -> None:
        """``fn(start, stop)`` over ``n`` tiles, split between threads on NumPy (BLAS one thread
        per tile then); ``dynamic`` for passes without per-thread partial sums."""
        if self.xp is np:
            parallel(fn, n, work, gemm=True, dynamic=dynamic)
        else:
            fn(0, n)

    @staticmethod
    def _accumulate(accs, target, transpose: bool = False) -> None:
        for acc in accs:
            if acc is not None:
                target += _t(acc) if transpose else acc


class Conv2dPlan(_Tiled):
    """The 2-D plan for inputs with many channels: batch-innermost working layout, row tiles.

    The input is copied once, transposed and zero-padded, into ``xb`` (C, Hp, Wp, N). For each
    tile of output rows, a strided view of ``xb`` is copied into the column buffer
    (C, kh, kw, rows, W_out, N) (runs of W_out * N contiguous values) and one GEMM per group,
    oriented with the long output-position axis as rows, gives the tile as
    (rows * W_out * N, O) (OpenBLAS runs 1.3-1.6x faster this way than with O as the rows when O
    is small); the bias is added there and the tile is transposed into the NCHW top. Tiles are
    shared between threads (each with its own buffers, BLAS on one thread each).
    Backward walks the same tiles: the top-diff tile is gathered into (rows, W_out, N, O), one
    GEMM accumulates dW^T; for stride 1 the data gradient is the convolution of the top diff with
    the flipped, transposed kernel (another plan); otherwise a GEMM gives the column gradient,
    which is added back into a padded (C, Hp, Wp, N) buffer at the kh * kw kernel offsets and
    transposed once into the NCHW bottom diff. Backward reuses the transposed input of the last
    forward when the caller says so (``x_loaded``: a layer's bottom does not change between its
    forward and backward in a net).
    """

    def __init__(self, xp, dtype, num, channels, num_output, geom, group, tile_elems=None):
        self.xp, self.dtype = xp, np.dtype(dtype)
        self.n, self.c, self.o, self.geom, self.g = num, channels, num_output, geom, group
        (self.h, self.w), (self.ho, self.wo) = geom.in_size, geom.out_size
        self.k_total = channels * geom.kernel_count
        self.kg, self.og = self.k_total // group, num_output // group
        if tile_elems is None:
            tile_elems = TILE_ELEMS if xp is np else 1 << 62
        self.tile_elems = tile_elems
        row = self.wo * num
        rows = max(1, min(self.ho, tile_elems // max(1, self.k_total * row)))
        self.rows = rows
        self.tiles = [(h0, min(self.ho, h0 + rows)) for h0 in range(0, self.ho, rows)]
        self.work = self.k_total * self.ho * row
        hp, wp = geom.padded_size
        self.xb = xp.zeros((channels, hp, wp, num), dtype)
        self._loaded = False
        self._locals: dict = {}
        # stride 1: the data gradient is a convolution of the top diff with the flipped,
        # transposed kernel (one im2col copy + a GEMM with K = O * kh * kw) instead of a
        # GEMM with K = O followed by kh * kw scatter-adds (measured ~25% faster); only for
        # "same"-padded layers (with little padding it would multiply many padding zeros)
        flip_pad = [d * (k - 1) - p for k, p, d in zip(geom.kernel, geom.pad, geom.dilation)]
        grow = math.prod(geom.in_size) / max(1, math.prod(geom.out_size))
        self.flip_geom = None
        if geom.stride == (1, 1) and min(flip_pad) >= 0 and grow <= 1.25:
            self.flip_geom = ConvGeometry(
                geom.kernel, (1, 1), tuple(flip_pad), geom.dilation, geom.out_size
            )
        self.dx_plan = None
        self.wflip = None
        self._col_of = None  # (thread, input address) whose columns the scratch holds

    def _scratch(self):
        xp, g, n = self.xp, self.g, self.rows * self.wo * self.n
        return {
            "col": xp.empty(self.k_total * n, self.dtype),
            "y": xp.empty(self.o * n, self.dtype),
            "dw": xp.empty((2, g, self.kg, self.og), self.dtype),
            "db": xp.empty((2, g, self.og), self.dtype),
        }

    def load(self, x) -> None:
        """Copy the (N, C, H, W) input into the padded batch-innermost buffer."""
        load_padded_chwn(self.xb, x, self.geom.pad)
        self._loaded = True

    def _tile_col(self, sc, h0, h1):
        """The column buffer of a tile as (G, K/G, positions)."""
        n = self.k_total * (h1 - h0) * self.wo * self.n
        return sc["col"][:n].reshape(self.g, self.kg, -1)

    def _tile_y(self, sc, h0, h1):
        """The output buffer of a tile as (G, positions, O/G)."""
        n = self.o * (h1 - h0) * self.wo * self.n
        return sc["y"][:n].reshape(self.g, -1, self.og)

    def _im2col(self, h0, h1, col, c0=0, c1=None) -> None:
        """Columns of output rows h0:h1 (input channels c0:c1, ``col`` holding only those)."""
        (kh, kw), (sh, sw), (dh, dw) = self.geom.kernel, self.geom.stride, self.geom.dilation
        c1 = self.c if c1 is None else c1
        xb = self.xb[c0:c1, h0 * sh :]
        s = xb.strides
        view = as_strided(
            self.xp,
            xb,
            (c1 - c0, kh, kw, h1 - h0, self.wo, self.n),
            (s[0], dh * s[1], dw * s[2], sh * s[1], sw * s[2], s[3]),
        )
        col.reshape(view.shape)[...] = view

    def _by_channels(self, fn) -> None:
        """``fn(c0, c1)`` over input-channel ranges shared by threads (one-tile plans: the
        copies of disjoint channels are independent)."""
        if self.xp is np and len(self.tiles) == 1:
            parallel(fn, self.c, self.work, dynamic=False)
        else:
            fn(0, self.c)

    def _im2col_all(self, col) -> None:
        kk = self.geom.kernel_count * self.ho * self.wo * self.n
        flat = col.reshape(-1)
        self._by_channels(lambda a, b: self._im2col(0, self.ho, flat[a * kk : b * kk], a, b))

    def _col2im_all(self, col, dxb) -> None:
        kk = self.geom.kernel_count * self.ho * self.wo * self.n
        flat = col.reshape(-1)
        self._by_channels(lambda a, b: self._col2im(flat[a * kk : b * kk], 0, self.ho, dxb[a:b]))

    def _col2im(self, col, h0, h1, dxb) -> None:
        """dxb (channels, Hp, Wp, N) += the columns of output rows h0:h1 at their positions."""
        (kh, kw), (sh, sw), (dh, dw) = self.geom.kernel, self.geom.stride, self.geom.dilation
        rows = h1 - h0
        c6 = col.reshape(-1, kh, kw, rows, self.wo, self.n)
        for i in range(kh):
            r0 = h0 * sh + i * dh
            for j in range(kw):
                c0 = j * dw
                dst = dxb[
                    :, r0 : r0 + sh * (rows - 1) + 1 : sh, c0 : c0 + sw * (self.wo - 1) + 1 : sw
                ]
                dst += c6[:, i, j]

    def _nchw_slab(self, a, h0, h1):
        """The rows h0:h1 of an (N, O, H_out, W_out) array, as (N, G, O/G, rows, W_out)."""
        return a[:, :, h0:h1].reshape(self.n, self.g, self.og, h1 - h0, self.wo)

    def _gather_dy(self, dy, h0, h1, dyt) -> None:
        """dyt (G, rows, W_out, N, O/G) = the top-diff rows h0:h1."""
        dst = dyt.reshape(self.g, h1 - h0, self.wo, self.n, self.og)
        src = self._nchw_slab(dy, h0, h1).transpose(1, 3, 4, 0, 2)
        # slabs of a few images: the strided reads of each slab stay in L1 (3x faster)
        _slab_loop(dst, src, 3, 1 << 14)

    def _scatter_y(self, yt, y, h0, h1) -> None:
        src = yt.reshape(self.g, h1 - h0, self.wo, self.n, self.og).transpose(3, 0, 4, 1, 2)
        _slab_loop(self._nchw_slab(y, h0, h1), src, 0, 1 << 14)

    def _scatter_dx(self, dx, dxb) -> None:
        ph, pw = self.geom.pad
        copy_slabs(dx, dxb[:, ph : ph + self.h, pw : pw + self.w].transpose(3, 0, 1, 2), 1)

    def _flipped(self, w2):
        """(plan, weights) computing the data gradient as a stride-1 convolution of dy."""
        if self.dx_plan is None:
            cls = Conv2dPlan if CONV_LAYOUT == "chwn" else Conv2dDirectPlan
            self.dx_plan = cls(
                self.xp,
                self.dtype,
                self.n,
                self.o,
                self.c,
                self.flip_geom,
                self.g,
                None if len(self.tiles) == 1 else self.tile_elems,  # (one tile: default chunks)
            )
            self.wflip = self.xp.empty((self.c, self.og * self.geom.kernel_count), self.dtype)
        kh, kw = self.geom.kernel
        w5 = w2.reshape(self.g, self.og, self.c // self.g, kh, kw)
        self.wflip.reshape(self.g, self.c // self.g, self.og, kh, kw)[...] = w5.transpose(
            0, 2, 1, 3, 4
        )[:, :, :, ::-1, ::-1]
        return self.dx_plan, self.wflip

    def forward(self, x, w2, y, bias=None, load=True) -> None:
        xp = self.xp
        if load:
            self.load(x)
        # one tile: its columns stay in the scratch for the weight gradient of the backward
        self._col_of = address_key(x) if len(self.tiles) == 1 else None
        wt = _t(w2.reshape(self.g, self.og, self.kg))  # (G, K/G, O/G)
        b3 = None if bias is None else bias.reshape(self.g, 1, self.og)

        if len(self.tiles) == 1:  # one tile: (O, positions) = W @ columns (measured faster)
            sc = self._local(self._scratch)
            col = self._tile_col(sc, 0, self.ho)
            positions = self.ho * self.wo
            yo = sc["y"].reshape(self.g, self.og, -1)
            self._im2col_all(col)
            _gemm(xp, w2.reshape(self.g, self.og, self.kg), col, yo)
            if bias is not None:
                yo += bias.reshape(self.g, self.og, 1)
            src = yo.reshape(self.o, positions, self.n).transpose(2, 0, 1)
            _slab_loop(y.reshape(self.n, self.o, positions), src, 1, 1 << 14)
            return

        def run(i, j):
            sc = self._local(self._scratch)
            for h0, h1 in self.tiles[i:j]:
                col, yt = self._tile_col(sc, h0, h1), self._tile_y(sc, h0, h1)
                self._im2col(h0, h1, col)
                _gemm(xp, _t(col), wt, yt)
                if b3 is not None:
                    yt += b3
                self._scatter_y(yt, y, h0, h1)

        self._run(run, len(self.tiles), self.work, dynamic=True)

    def _dxb(self, sc):
        """This thread's zeroed (C, Hp, Wp, N) buffer for the column-gradient scatter-adds."""
        if sc.get("dxb") is None:
            sc["dxb"] = self.xp.zeros_like(self.xb)
        else:
            sc["dxb"].fill(0)
        return sc["dxb"]

    def backward(self, w2, dy, dw=None, dx=None, db=None, x=None, x_loaded=False) -> None:
        xp, g = self.xp, self.g
        reuse = x_loaded and self._col_of is not None and self._col_of == address_key(x)
        self._col_of = None  # the data gradient below may overwrite the columns
        if dw is not None and not (x_loaded and self._loaded):
            self.load(x)
        flip = dx is not None and self.flip_geom is not None
        dx_flip, dx = (dx, None) if flip else (None, dx)
        w3 = w2.reshape(g, self.og, self.kg)
        accs = []

        def run(i, j):
            sc = self._local(self._scratch)
            dxb = None if dx is None else self._dxb(sc)
            first = True
            for h0, h1 in self.tiles[i:j]:
                col, dyt = self._tile_col(sc, h0, h1), self._tile_y(sc, h0, h1)
                self._gather_dy(dy, h0, h1, dyt)
                k = 0 if first else 1
                if db is not None:
                    xp.sum(dyt, axis=1, out=sc["db"][k])
                    if not first:
                        sc["db"][0] += sc["db"][1]
                if dw is not None:
                    if not reuse:
                        self._im2col(h0, h1, col)
                    _gemm(xp, col, dyt, sc["dw"][k])  # dW^T (G, K/G, O/G)
                    if not first:
                        sc["dw"][0] += sc["dw"][1]
                if dx is not None:
                    _gemm(xp, _t(w3), _t(dyt), col)
                    if len(self.tiles) == 1:
                        self._col2im_all(col, dxb)
                    else:
                        self._col2im(col, h0, h1, dxb)
                first = False
            if not first:
                accs.append((i, sc))

        if dw is not None or db is not None or dx is not None:
            self._run(run, len(self.tiles), self.work)
        accs = [sc for _, sc in sorted(accs, key=lambda a: a[0])]  # a fixed summation order
        if dx is not None:  # each thread added into its own buffer (neighbouring tiles overlap)
            total = accs[0]["dxb"]
            for sc in accs[1:]:
                total += sc["dxb"]
            self._scatter_dx(dx, total)
        if db is not None:
            self._accumulate([sc["db"][0].reshape(-1) for sc in accs], db)
        if dw is not None:
            self._accumulate(
                [sc["dw"][0] for sc in accs], dw.reshape(g, self.og, self.kg), transpose=True
            )
        if flip:
            plan, wf = self._flipped(w2)
            plan.forward(dy, wf, dx_flip)

    def data_gradient(self, w2, dy, dx, bias=None) -> None:
        """dx = conv^T(dy) (+ bias): Deconvolution's forward."""
        if self.flip_geom is not None:
            plan, wf = self._flipped(w2)
            plan.forward(dy, wf, dx, bias)
            return
        xp = self.xp
        self._col_of = None
        w3 = w2.reshape(self.g, self.og, self.kg)
        sc = self._local(self._scratch)
        dxb = self._dxb(sc)
        for h0, h1 in self.tiles:
            col, dyt = self._tile_col(sc, h0, h1), self._tile_y(sc, h0, h1)
            self._gather_dy(dy, h0, h1, dyt)
            _gemm(xp, _t(w3), _t(dyt), col)
            self._col2im(col, h0, h1, dxb)
        self._scatter_dx(dx, dxb)
        if bias is not None:
            dx += bias.reshape(1, -1, 1, 1)


def address_key(x, thread: bool = True):
    """(this thread, address, shape and strides of ``x``, a NumPy or CuPy array): identifies
    the memory an array views, e.g. the input whose columns a plan holds (the layer's bottom
    does not move between its forward and backward); ``thread``: the columns sit in this
    thread's scratch (else the first item is None)."""
    ptr = x.ctypes.data if isinstance(x, np.ndarray) else x.data.ptr
    return threading.get_ident() if thread else None, ptr, x.shape, x.strides


def _slab_loop(dst, src, axis: int, slab_elems: int) -> None:
    """``dst[...] = src`` in slabs along ``axis`` in this thread (see :func:`copy_slabs`)."""
    n = dst.shape[axis]
    step = max(1, slab_elems // max(1, dst.size // max(1, n)))
    if step >= n or not isinstance(dst, np.ndarray):
        dst[...] = src
        return
    lead = (slice(None),) * axis
    for a in range(0, n, step):
        sl = lead + (slice(a, a + step),)
        dst[sl] = src[sl]


class Conv2dDirectPlan(_Tiled):
    """The 2-D plan for inputs with few channels (wide outputs): NCHW columns per image.

    For each chunk of images, a strided view of the (padded) input is copied into columns
    (images, C, kh, kw, H_out, W_out) and one batched GEMM writes the NCHW top directly: no
    transposes, which dominate when the output is large next to the column matrix (first layers:
    C = 1 or 3). dW sums per-image GEMMs; the column gradient is added back per kernel offset.
    Chunks are shared between threads, each with its own buffers.

    Kernel rows (``self.rows``; vertical stride 1, several kernel rows, large layers whose
    columns the backward would build again anyway): per image, the columns hold only the
    horizontal kernel offsets for every padded input row, ``hcol[g, (c, j), (h, wo)] =
    x[c, h, j * dw + wo * sw]`` (kh times fewer values than whole-kernel columns), and kernel
    row ``i`` reads the same matrix ``i * dh * W_out`` columns further on (a view). The top is
    then ``kh`` accumulating GEMMs per group, the weight gradient one accumulating GEMM per
    kernel row and group, and the data gradient ``kh`` GEMMs into row-shifted views of one
    buffer, added back at the ``kw`` horizontal offsets only (instead of ``kh * kw``).
    Measured side by side against whole-kernel columns (2 threads): forward CaffeNet's conv2
    at batch 10 0.77-0.80x the time, VGG-16's first blocks at batch 1 0.81-0.90x,
    GoogLeNet-like 3x3 layers on 28x28 0.95x; forward + backward 0.80x (CaffeNet's conv2) and
    0.77-0.79x (VGG-16's first blocks at batch 2). Layers with more than ROWS_MAX_OUT outputs
    per group, few output positions (CaffeNet's conv4 and conv5 on 13x13: 0.95-1.0x) or small
    kernel-row GEMMs (under ROWS_MIN_MACS: up to 1.14x slower) keep whole-kernel columns.
    """

    def __init__(self, xp, dtype, num, channels, num_output, geom, group, tile_elems=None):
        self.xp, self.dtype = xp, np.dtype(dtype)
        self.n, self.c, self.o, self.geom, self.g = num, channels, num_output, geom, group
        (self.h, self.w), (self.ho, self.wo) = geom.in_size, geom.out_size
        self.p = self.ho * self.wo
        self.k_total = channels * geom.kernel_count
        if tile_elems is None:
            tile_elems = TILE_ELEMS if xp is np else 1 << 62
        nb = max(1, min(num, tile_elems // max(1, self.k_total * self.p)))
        self.nb = nb
        self.chunks = [(n0, min(num, n0 + nb)) for n0 in range(0, num, nb)]
        self.work = num * self.k_total * self.p
        self._locals: dict = {}
        # columns of the whole batch when they fit WHOLE_ELEMS: chunks (on any thread) write
        # their part, and the backward reuses them for the weight gradient
        self.full_col = None
        if xp is np and self.work <= WHOLE_ELEMS:
            self.full_col = xp.empty((num, group, self.k_total // group, self.p), dtype)
        self._col_of = None  # address of the input whose columns full_col holds
        kh, kw = geom.kernel
        og, cg = num_output // group, channels // group
        self.rows = self.by_rows(xp, dtype, num, channels, num_output, geom, group)
        self.wr = np.empty((kh, group, og, cg * kw), dtype) if self.rows else None

    @staticmethod
    def by_rows(xp, dtype, num, channels, num_output, geom, group) -> bool:
        """Whether the plan for this layer works by kernel rows (see the class notes): on
        NumPy with the cblas GEMM, vertical stride 1, several kernel rows, no whole-batch
        columns (over WHOLE_ELEMS values), at most ROWS_MAX_OUT outputs per group, at least
        ROWS_MIN_POSITIONS output positions and ROWS_MIN_MACS multiply-adds per kernel-row
        GEMM."""
        kh, kw = geom.kernel
        og, cg = num_output // group, channels // group
        positions = math.prod(geom.out_size)
        return (
            xp is np
            and num * channels * geom.kernel_count * positions > WHOLE_ELEMS
            and geom.stride[0] == 1
            and kh > 1
            and og <= ROWS_MAX_OUT
            and positions >= ROWS_MIN_POSITIONS
            and 0 < ROWS_MIN_MACS <= og * cg * kw * positions
            and blas.available(dtype)
        )

    def _chunk_col(self, sc, n0, n1):
        """The column buffer of images n0:n1, (b, G, K/G, H_out * W_out)."""
        return sc["col"][: n1 - n0] if self.full_col is None else self.full_col[n0:n1]

    def _scratch(self):
        xp, nb, g = self.xp, self.nb, self.g
        pad = any(self.geom.pad)
        wshape = (g, self.o // g, self.k_total // g)
        return {
            "col": None
            if self.full_col is not None or self.rows
            else xp.empty((nb, g, self.k_total // g, self.p), self.dtype),
            "hcol": xp.empty(self._hcol_shape(), self.dtype) if self.rows else None,
            "dcol": None,  # kernel-row backward: the columns' gradient, made on first need
            "dwr": None,  # kernel-row backward: this thread's weight gradient by kernel row
            "xpad": xp.zeros((nb, self.c) + self.geom.padded_size, self.dtype) if pad else None,
            "dxpad": xp.zeros((nb, self.c) + self.geom.padded_size, self.dtype) if pad else None,
            "dwb": xp.empty((nb,) + wshape, self.dtype),
            "dw": xp.empty((2,) + wshape, self.dtype),
        }

    def _im2col(self, sc, x, col) -> None:
        b = x.shape[0]
        src = pad_into(x, self.geom, None if sc["xpad"] is None else sc["xpad"][:b])
        (kh, kw), (sh, sw), (dh, dw) = self.geom.kernel, self.geom.stride, self.geom.dilation
        s = src.strides
        view = as_strided(
            self.xp,
            src,
            (b, self.c, kh, kw, self.ho, self.wo),
            (s[0], s[1], dh * s[2], dw * s[3], sh * s[2], sw * s[3]),
        )
        col.reshape(view.shape)[...] = view

    def _col2im(self, sc, col, dx) -> None:
        """dx (b, C, H, W) = sum of the column gradient at every position it was read from."""
        b = dx.shape[0]
        target = dx if sc["dxpad"] is None else sc["dxpad"][:b]
        target.fill(0)
        col2im_nd(
            col.reshape((b, self.c) + self.geom.kernel + self.geom.out_size), self.geom, target
        )
        if target is not dx:
            ph, pw = self.geom.pad
            dx[...] = target[:, :, ph : ph + self.h, pw : pw + self.w]

    def _split(self, a, ch):
        return a.reshape(a.shape[0], self.g, ch // self.g, self.p)

    def _hcol_shape(self):
        """(G, C/G * kw, H_padded * W_out): kernel-row columns of one image."""
        return (self.g, self.c // self.g * self.geom.kernel[1], self.geom.padded_size[0] * self.wo)

    def _rearrange(self, w2) -> None:
        """wr[i, g] = the weights of kernel row i of group g as (O/G, C/G * kw)."""
        kh, kw = self.geom.kernel
        self.wr.reshape(kh, self.g, self.o // self.g, -1, kw)[...] = w2.reshape(
            self.g, self.o // self.g, -1, kh, kw
        ).transpose(3, 0, 1, 2, 4)

    def _row_columns(self, sc, x):
        """Fill the kernel-row columns of each image of ``x`` in turn; yields the image index.
        ``hcol[g, (c, j), (h, wo)] = padded x[c, h, j * dw + wo * sw]``."""
        b = x.shape[0]
        kw, (_, sw), (_, dw) = self.geom.kernel[1], self.geom.stride, self.geom.dilation
        hp, wo = self.geom.padded_size[0], self.wo
        src = pad_into(x, self.geom, None if sc["xpad"] is None else sc["xpad"][:b])
        s = src.strides
        view = as_strided(
            np, src, (b, self.c, kw, hp, wo), (s[0], s[1], dw * s[3], s[2], sw * s[3])
        )
        cols = sc["hcol"].reshape(self.c, kw, hp, wo)
        for n in range(b):
            cols[...] = view[n]
            yield n

    def _backward_rows(self, sc, x, dy, dx, weights: bool, first: bool) -> None:
        """The backward by kernel rows for images ``dy`` (b, O, H_out, W_out): the weight
        gradient summed into this thread's ``dwr`` (set on ``first``), one GEMM per kernel row
        and group against the shifted columns; ``dx`` (b, C, H, W) = the columns' gradient
        (``kh`` GEMMs into row-shifted views of one buffer) added back at the ``kw``
        horizontal offsets."""
        b, g, og = dy.shape[0], self.g, self.o // self.g
        (kh, kw), (_, sw), (dh, dw) = self.geom.kernel, self.geom.stride, self.geom.dilation
        hp, wo, p = self.geom.padded_size[0], self.wo, self.p
        d4 = dy.reshape(b, g, og, p)
        hcol = sc["hcol"]
        if weights:
            if sc["dwr"] is None:
                sc["dwr"] = np.empty((kh, g, og, hcol.shape[1]), self.dtype)
            dwr = sc["dwr"]
            for n in self._row_columns(sc, x):
                for k in range(g):
                    for i in range(kh):
                        off = i * dh * wo
                        blas.gemm(d4[n, k], hcol[k, :, off : off + p].T, dwr[i, k],
                                  beta=float(not (first and n == 0)))
        if dx is None:
            return
        if sc["dcol"] is None:
            sc["dcol"] = np.empty(self._hcol_shape(), self.dtype)
        dcol = sc["dcol"]
        rest = dcol[:, :, p:]  # padded rows below the first kernel row's reach
        dcol5 = dcol.reshape(self.c, kw, hp, wo)
        ph, pw = self.geom.pad
        for n in range(b):
            rest.fill(0)
            for k in range(g):
                for i in range(kh):
                    off = i * dh * wo
                    blas.gemm(self.wr[i, k].T, d4[n, k], dcol[k, :, off : off + p],
                              beta=float(i > 0))
            target = dx[n] if sc["dxpad"] is None else sc["dxpad"][0]
            add_kernel_columns(target, dcol5, wo, sw, dw)
            if target is not dx[n]:
                dx[n] = target[:, ph : ph + self.h, pw : pw + self.w]

    def _forward_rows(self, sc, x, y, bias) -> None:
        """y (b, O, H_out, W_out) = conv(x) (+ bias) by kernel rows (see the class notes)."""
        b, g = x.shape[0], self.g
        kh, dh, wo, p = self.geom.kernel[0], self.geom.dilation[0], self.wo, self.p
        hcol = sc["hcol"]
        y4 = y.reshape(b, g, self.o // g, p)
        b2 = None if bias is None else bias.reshape(g, -1, 1)
        for n in self._row_columns(sc, x):
            for k in range(g):
                out = y4[n, k]
                if b2 is not None:
                    np.copyto(out, b2[k])  # the GEMMs add onto the bias
                for i in range(kh):
                    off = i * dh * wo
                    blas.gemm(self.wr[i, k], hcol[k, :, off : off + p], out,
                              beta=float(i > 0 or b2 is not None))

    def forward(self, x, w2, y, bias=None) -> None:
        xp = self.xp
        wg = w2.reshape(self.g, self.o // self.g, -1)
        b3 = None if bias is None else bias.reshape(1, -1, 1)
        self._col_of = None if self.full_col is None else address_key(x, thread=False)
        if self.rows:
            self._rearrange(w2)

        def run(i, j):
            sc = self._local(self._scratch)
            for n0, n1 in self.chunks[i:j]:
                if self.rows:
                    self._forward_rows(sc, x[n0:n1], y[n0:n1], bias)
                    continue
                col = self._chunk_col(sc, n0, n1)
                self._im2col(sc, x[n0:n1], col)
                xp.matmul(wg, col, out=self._split(y[n0:n1], self.o))
                if b3 is not None:
                    y3 = y[n0:n1].reshape(n1 - n0, self.o, self.p)
                    y3 += b3

        self._run(run, len(self.chunks), self.work, dynamic=True)

    def backward(self, w2, dy, dw=None, dx=None, db=None, x=None, x_loaded=False) -> None:
        xp = self.xp
        wg = w2.reshape(self.g, self.o // self.g, -1)
        if db is not None:
            db += dy.reshape(self.n, self.o, self.p).sum(axis=(0, 2))
        key = self._col_of
        reuse = x_loaded and key is not None and key == address_key(x, thread=False)
        self._col_of = None  # the data gradient below may overwrite the columns
        accs = []
        if self.rows and dx is not None:
            self._rearrange(w2)

        def run(i, j):
            sc = self._local(self._scratch)
            first = True
            for n0, n1 in self.chunks[i:j]:
                b = n1 - n0
                if self.rows:
                    self._backward_rows(sc, x[n0:n1] if dw is not None else None, dy[n0:n1],
                                        None if dx is None else dx[n0:n1], dw is not None,
                                        first)
                    first = False
                    continue
                col, dyc = self._chunk_col(sc, n0, n1), self._split(dy[n0:n1], self.o)
                if dw is not None:
                    if not reuse:
                        self._im2col(sc, x[n0:n1], col)
                    xp.matmul(dyc, col.transpose(0, 1, 3, 2), out=sc["dwb"][:b])
                    xp.sum(sc["dwb"][:b], axis=0, out=sc["dw"][0 if first else 1])
                    if not first:
                        sc["dw"][0] += sc["dw"][1]
                if dx is not None:
                    xp.matmul(wg.transpose(0, 2, 1), dyc, out=col)
                    self._col2im(sc, col, dx[n0:n1])
                first = False
            if not first and dw is not None:
                if self.rows:  # (kh, G, O/G, C/G, kw) -> the weights' (G, O/G, C/G, kh, kw)
                    kh, kw = self.geom.kernel
                    sc["dw"][0].reshape(self.g, self.o // self.g, -1, kh, kw)[...] = sc[
                        "dwr"
                    ].reshape(kh, self.g, self.o // self.g, -1, kw).transpose(1, 2, 3, 0, 4)
                accs.append((i, sc["dw"][0]))

        if dw is not None or dx is not None:
            self._run(run, len(self.chunks), self.work)
        if dw is not None:
            self._accumulate([a for _, a in sorted(accs, key=lambda a: a[0])], dw.reshape(wg.shape))

    def data_gradient(self, w2, dy, dx, bias=None) -> None:
        self.backward(w2, dy, dx=dx)
        if bias is not None:
            d3 = dx.reshape(self.n, self.c, -1)
            d3 += bias.reshape(1, -1, 1)


class Conv2dHybridPlan(ConvPlan):
    """Forward with one plan, backward with another (which reloads the input then): each
    direction with the plan measured faster for it.

    With ``reuse``, a layer whose backward will run (``backward_expected``, which the net sets
    from its backward sweep) takes the backward plan's own forward, whose columns that backward
    then reuses; only forward-only layers (deploy nets, test nets without a loss) take the
    forward plan."""

    def __init__(self, forward_plan, backward_plan, reuse: bool = False):
        self.fwd, self.bwd, self.reuse = forward_plan, backward_plan, reuse

    def _own_forward(self) -> bool:
        return self.reuse and self.backward_expected

    def forward(self, x, w2, y, bias=None) -> None:
        (self.bwd if self._own_forward() else self.fwd).forward(x, w2, y, bias)

    def backward(self, w2, dy, dw=None, dx=None, db=None, x=None, x_loaded=False) -> None:
        loaded = x_loaded and self._own_forward()
        self.bwd.backward(w2, dy, dw=dw, dx=dx, db=db, x=x, x_loaded=loaded)

    def data_gradient(self, w2, dy, dx, bias=None) -> None:
        self.bwd.data_gradient(w2, dy, dx, bias)


class Conv2dShiftPlan(ConvPlan):
    """Forward only: a stride-1 2-D convolution as ``kh * kw`` accumulating GEMMs over shifted
    views of the input, with no column matrix at all.

    The input is copied once into a zero-padded batch-innermost buffer (C, Hp, Wp, N), flat as
    (C, Hp * Wp * N) plus a zero tail. The output is computed "wide", at all Wp positions of
    each output row (the last Wp - W_out are thrown away); then for every wide output position
    the input under kernel offset (i, j) lies ``(i * dh * Wp + j * dw) * N`` values further on,
    so the columns of that offset are one strided view of the buffer. Each group's top is
    ``sum over offsets W[:, :, i, j] (O/G, C/G) @ view (C/G, H_out * Wp * N)``, accumulated by
    BLAS (``beta = 1``) in a (O/G, H_out * Wp * N) buffer, whose valid columns are then
    transposed into the NCHW top with the bias added in the same pass.

    No im2col copy (kh * kw times the input), but the accumulator is read and written kh * kw
    times, the GEMMs have only K = C/G, and the wide rows waste (Wp - W_out) / W_out of the
    work: measured faster where the accumulator stays in cache (:meth:`suits`). Side by side
    with the plans it replaces (2 threads, forward, several runs): CaffeNet's conv4 and conv5
    at batch 10 0.73-0.85x and 0.65-0.84x the time, GoogLeNet's 5x5 branch on 28x28 (16 -> 32
    channels) 0.5-0.78x, VGG-16's 28x28 layers at batch 2 0.69-0.94x, 3x3 layers on 13x13 and
    14x14 0.93-1.02x. Kept out by :meth:`suits`: layers on 7x7 (wide rows 29 % longer) up to
    1.4x slower, large maps (accumulator past the cache) up to 2.4x, batch 1-2 on 14x14 1.2-1.8x.
    cifar10_quick's conv2 (wide rows 25 % longer) would take 0.5-0.74x, but its training runs
    the frequency-domain plan. Splitting a group's output channels into blocks whose
    accumulators fit (CaffeNet's conv3) was measured slower (1.15x).
    """

    def __init__(self, xp, dtype, num, channels, num_output, geom, group):
        self.xp, self.dtype = xp, np.dtype(dtype)
        self.n, self.c, self.o, self.geom, self.g = num, channels, num_output, geom, group
        self.ho, self.wo = geom.out_size
        (kh, kw), (dh, dw) = geom.kernel, geom.dilation
        hp, self.wp = geom.padded_size
        self.og, self.cg = num_output // group, channels // group
        self.wide = self.ho * self.wp * num
        # the view of the last kernel offset ends (kw - 1) * dw * N values past the buffer
        self.xflat = xp.zeros((channels, hp * self.wp * num + (kw - 1) * dw * num), dtype)
        self.xb = self.xflat[:, : hp * self.wp * num].reshape(channels, hp, self.wp, num)
        self.acc = xp.empty((self.og, self.wide), dtype)
        self.wr = xp.empty((kh * kw, group, self.og, self.cg), dtype)
        self.offsets = [(i * dh * self.wp + j * dw) * num for i in range(kh) for j in range(kw)]

    @staticmethod
    def suits(xp, dtype, num, channels, num_output, geom, group) -> bool:
        """Whether this plan is the faster forward for the layer: on NumPy with the cblas
        GEMM, stride 1, several kernel offsets, at least SHIFT_MIN_CHANNELS input channels per
        group, wide rows at most SHIFT_MAX_WASTE (20 %) longer than the output rows, at least
        SHIFT_MIN_WIDE wide output positions over the batch (with fewer, each offset's GEMM
        mostly reads its weights: VGG's 14x14 layers at batch 1-2 1.2-1.8x slower) and each
        group's accumulator at most SHIFT_MAX_OUT values."""
        if len(geom.kernel) != 2 or geom.stride != (1, 1) or geom.kernel_count < 2:
            return False
        ho, wo = geom.out_size
        wp = geom.padded_size[1]
        return (
            xp is np
            and channels // group >= SHIFT_MIN_CHANNELS
            and wp <= (1 + SHIFT_MAX_WASTE) * wo
            and ho * wp * num >= SHIFT_MIN_WIDE
            and num_output // group * ho * wp * num <= SHIFT_MAX_OUT
            and blas.available(dtype)
        )

    def forward(self, x, w2, y, bias=None) -> None:
        g, cg = self.g, self.cg
        load_padded_chwn(self.xb, x, self.geom.pad)
        k = self.geom.kernel_count
        self.wr[...] = w2.reshape(g, self.og, cg, k).transpose(3, 0, 1, 2)
        span = self.wide
        og, acc = self.og, self.acc
        for gi in range(g):
            xg = self.xflat[gi * cg : (gi + 1) * cg]
            for q, off in enumerate(self.offsets):
                blas.gemm(self.wr[q, gi], xg[:, off : off + span], acc, beta=float(q > 0))
            src = acc.reshape(og, self.ho, self.wp, self.n)[:, :, : self.wo].transpose(3, 0, 1, 2)
            out = y[:, gi * og : (gi + 1) * og]
            if bias is None:
                np.copyto(out, src)
            else:
                np.add(src, bias[gi * og : (gi + 1) * og].reshape(1, -1, 1, 1), out=out)

    def backward(self, w2, dy, dw=None, dx=None, db=None, x=None, x_loaded=False) -> None:
        raise NotImplementedError("Conv2dShiftPlan is forward-only (see Conv2dHybridPlan)")

    def data_gradient(self, w2, dy, dx, bias=None) -> None:
        raise NotImplementedError("Conv2dShiftPlan is forward-only (see Conv2dHybridPlan)")


CONV_LAYOUT = os.environ.get("MINICAFFE_CONV_LAYOUT", "auto")


def make_conv_plan(
    xp, dtype, num, channels, num_output, geom: ConvGeometry, group: int, force_nd: bool = False
) -> ConvPlan:
    """The plan for this geometry: pointwise, 2-D, or generic N-d.

    2-D on NumPy, from side-by-side measurements (LeNet, cifar10_quick, CaffeNet, VGG- and
    ResNet-like shapes, 2 threads): the direct NCHW plan has the faster forward almost
    everywhere; the batch-innermost plan has the faster backward for stride-1 layers with many
    input channels on small images (<= 1024 output positions), where its data gradient is a
    flipped-kernel convolution, except grouped layers whose direct plan works by kernel rows
    (CaffeNet's conv2 at batch 10: forward + backward 1.15x slower with the batch-innermost
    one; its conv4 and conv5, 13x13 without kernel rows, 0.78-0.85x the time, and 14x14 and
    28x28 layers of 2-4 groups 0.77x); those layers run as one batch-innermost tile (one
    GEMM each way, the forward's columns reused by the weight gradient) when their whole-batch
    columns fit WHOLE_ELEMS (LeNet conv2: 1.5-2x faster forward + backward than the hybrid).
    Stride-1 layers that :meth:`Conv2dShiftPlan.suits` take the shifted-view forward: always in
    place of the direct forward of a hybrid (its backward never reused those columns), and in
    place of a plan whose backward reuses its forward's columns only when no backward is
    expected (forward-only nets). MINICAFFE_CONV_LAYOUT=nchw|chwn|hybrid forces one (without the
    shifted-view forward); MINICAFFE_SHIFT_MAX_OUT=0 turns that forward off.
    """
    if geom.is_1x1 and not force_nd:
        return Conv1x1Plan(xp, dtype, num, channels, num_output, geom, group)
    if len(geom.kernel) == 2 and not force_nd:
        args = (xp, dtype, num, channels, num_output, geom, group)
        if CONV_LAYOUT == "chwn":
            return Conv2dPlan(*args)
        tiled_backward = (
            geom.stride == (1, 1)
            and (group == 1 or not Conv2dDirectPlan.by_rows(*args))
            and channels > 4
            and math.prod(geom.out_size) <= 1024
        )
        whole = channels * geom.kernel_count * math.prod(geom.out_size) * num
        shift = CONV_LAYOUT == "auto" and Conv2dShiftPlan.suits(*args)
        if CONV_LAYOUT == "auto" and xp is np and tiled_backward and whole <= WHOLE_ELEMS:
            plan = Conv2dPlan(*args, tile_elems=whole)
            return Conv2dHybridPlan(Conv2dShiftPlan(*args), plan, reuse=True) if shift else plan
        if CONV_LAYOUT == "nchw" or (CONV_LAYOUT == "auto" and not tiled_backward):
            direct = Conv2dDirectPlan(*args)
            return Conv2dHybridPlan(Conv2dShiftPlan(*args), direct, reuse=True) if shift else direct
        forward = Conv2dShiftPlan(*args) if shift else Conv2dDirectPlan(*args)
        return Conv2dHybridPlan(forward, Conv2dPlan(*args))
    return ConvPlan(xp, dtype, num, channels, num_output, geom, group)


# ---------------------------------------------------------------------------------- pooling
def _window_ranges(size: int, kernel: int, stride: int, pad: int, out: int):
    """For each kernel offset i: (first output, end output, first input index) of the outputs
    whose window reads input index o * stride - pad + i inside [0, size)."""
    ranges = []
    for i in range(kernel):
        lo = max(0, -(-(pad - i) // stride))
        hi = min(out, (size - 1 + pad - i) // stride + 1)
        ranges.append((lo, hi, lo * stride - pad + i) if hi > lo else None)
    return ranges


def scatter_add(xp, target, indices, values) -> None:
    """target[indices[i]] += values[i] for every i, repeated indices adding up (``indices``
    1-D; ``values`` holds one row of ``target``'s trailing shape per index). CuPy without
    ``add.at`` (older releases) goes through cupyx.scatter_add."""
    if xp is np:
        np.add.at(target, indices, values)
        return
    try:
        xp.add.at(target, indices, values)
    except (AttributeError, NotImplementedError, TypeError):
        import cupyx

        cupyx.scatter_add(target, indices, values)


def _take(xp, table, idx, out) -> None:
    """out = table[idx] without temporaries (NumPy's take buffers ``out`` in its default mode)."""
    if xp is np:
        np.take(table, idx, out=out, mode="clip")
    else:
        xp.take(table, idx, out=out)


class PoolPlan:
    """Caffe's 2-D pooling windows for one (N, C, H, W) input shape.

    Window (ho, wo) covers input rows [ho * sh - ph, ho * sh - ph + kh) clipped to the image
    (likewise columns). MAX keeps the first maximum in row-major window order (Caffe's strict
    ``>``) and records it as the offset index p = i * kw + j in ``idx``; the mask top and the
    backward scatter use the flat input index h * W + w of that maximum.

    MAX and AVE run on batch chunks of about CHUNK_ELEMS input values (in cache): the chunk is
    padded (-inf for MAX, 0 for AVE) to the extent the windows cover, then split into the
    kw * min(sh, kh) "phases" phase[j][r] = padded[..., r::sh, j::sw][..., :W_out], contiguous
    copies, in which the input of kernel offset (i, j) for every window is the contiguous row
    block phase[j][i % sh][..., i // sh : i // sh + H_out, :]. So the kh * kw passes (4 each for
    MAX with argmax) run over long contiguous rows instead of strided runs of W_out values
    (measured 2.3x faster on cifar10's 32x32 pooling). STOCHASTIC walks per-offset sub-blocks.
    """

    def __init__(self, xp, dtype, shape, kernel, stride, pad, out_size):
        self.xp, self.dtype = xp, np.dtype(dtype)
        self.shape = tuple(shape)
        n, c, h, w = self.shape
        (kh, kw), (sh, sw), (ph, pw), (ho, wo) = kernel, stride, pad, out_size
        self.kernel, self.stride, self.pad, self.out_size = kernel, stride, pad, out_size
        self.out_shape = (n, c, ho, wo)
        rows = _window_ranges(h, kh, sh, ph, ho)
        cols = _window_ranges(w, kw, sw, pw, wo)
        self.views = []  # STOCHASTIC: (p, output slices, input slices, covers every output)
        for i, r in enumerate(rows):
            for j, q in enumerate(cols):
                if r is None or q is None:
                    continue
                (olo, ohi, r0), (wlo, whi, c0) = r, q
                osl = (Ellipsis, slice(olo, ohi), slice(wlo, whi))
                isl = (
                    Ellipsis,
                    slice(r0, r0 + sh * (ohi - olo - 1) + 1, sh),
                    slice(c0, c0 + sw * (whi - wlo - 1) + 1, sw),
                )
                self.views.append(
                    (i * kw + j, osl, isl, olo == 0 and ohi == ho and wlo == 0 and whi == wo)
                )
        # one window holding the whole image: offsets p = i * kw + j are flat indices h * W + w
        self.is_global = ho == 1 and wo == 1 and ph == 0 and pw == 0 and kh == h and kw == w
        p_count = kh * kw
        self.idx_dtype = np.int8 if p_count < 128 else np.int16 if p_count < 32768 else np.int32
        self.idx = None
        self.mbuf = None
        self.tbuf = None
        self.fbuf = None
        # AVE: 1 / (window size clipped to the padded extent [-pad, size + pad))
        hs = np.arange(ho) * sh - ph
        ws = np.arange(wo) * sw - pw
        hc = np.minimum(hs + kh, h + ph) - hs
        wc = np.minimum(ws + kw, w + pw) - ws
        with np.errstate(divide="ignore"):  # an empty last window divides by 0, as in Caffe
            self.inv_div = xp.asarray((1.0 / np.outer(hc, wc)).astype(self.dtype))
        # MAX windows holding no input value (pad 0, CEIL rounding, a last window that starts
        # past the edge): Caffe leaves them at -FLT_MAX with mask -1, and they pass no gradient
        empty = np.logical_or.outer(hs >= h, ws >= w)
        self.empty = xp.asarray(empty) if empty.any() else None
        # the padded extent the windows cover, and the image part inside it
        self.hpad, self.wpad = (ho - 1) * sh + kh, (wo - 1) * sw + kw
        self.copy_h, self.copy_w = min(h, self.hpad - ph), min(w, self.wpad - pw)
        self.need_pad = bool(ph or pw or self.hpad > h or self.wpad > w)
        self.row_phases = min(sh, kh)
        self.chunk = n if xp is not np else max(1, min(n, CHUNK_ELEMS // max(1, c * h * w)))
        self.table = np.add.outer(np.arange(kh) * w, np.arange(kw)).ravel().astype(np.intp)
        base = np.add.outer((np.arange(ho) * sh - ph) * w, np.arange(wo) * sw - pw).ravel()
        planes = np.arange(self.chunk * c) * (h * w)
        self.base_full = xp.asarray(np.add.outer(planes, base).astype(np.intp)).reshape(
            self.chunk, c, ho, wo
        )
        self.table_xp = xp.asarray(self.table)
        self.base_hw = xp.asarray(base.reshape(ho, wo).astype(self.dtype))
        self._parts: dict = {}

    # -------------------------------------------------------------- scratch
    def _scratch(self):
        if self.mbuf is None:
            xp = self.xp
            self.mbuf = xp.empty(self.out_shape, bool)
            self.tbuf = xp.empty(self.out_shape, self.idx_dtype)
            self.fbuf = xp.empty(self.out_shape, self.dtype)
        return self.mbuf, self.tbuf, self.fbuf

    def _ensure_idx(self):
        if self.idx is None:
            self.idx = self.xp.empty(self.out_shape, self.idx_dtype)
        return self.idx

    def _part(self, key, fill):
        """Per-thread scratch of one chunk: padded input, phases, masks."""
        scratch = self._parts.get(key)
        if scratch is None or scratch["fill"] != fill:
            xp, b = self.xp, self.chunk
            c = self.shape[1]
            kw, sh, (ho, wo) = self.kernel[1], self.stride[0], self.out_size
            cshape = (b, c, ho, wo)
            scratch = {
                "fill": fill,
                "pad": xp.full((b, c, self.hpad, self.wpad), fill, self.dtype)
                if self.need_pad
                else None,
                "phase": [
                    [
                        xp.empty((b, c, len(range(r, self.hpad, sh)), wo), self.dtype)
                        for r in range(self.row_phases)
                    ]
                    for _ in range(kw)
                ],
                "m": xp.empty(cshape, bool),
                "t": xp.empty(cshape, self.idx_dtype),
                "f": xp.empty(cshape, self.dtype),
                "flat": xp.empty(cshape, np.intp),
            }
            self._parts[key] = scratch
        return scratch

    def _chunks(self, fn, fill, *arrays) -> None:
        """Run ``fn(scratch, *chunk_slices)`` over batch chunks, the chunks shared by threads."""
        n = self.shape[0]
        chunks = [(a, min(n, a + self.chunk)) for a in range(0, n, self.chunk)]

        def run(i, j):
            scratch = self._part(threading.get_ident(), fill)
            for a, b in chunks[i:j]:
                fn(scratch, *(arr[a:b] for arr in arrays))

        # windows past the edge divide by 0 (AVE) and multiply inf by 0, as Caffe does, quietly
        with np.errstate(all="ignore") if self.empty is not None else nullcontext():
            if self.xp is np:
                parallel(run, len(chunks), math.prod(self.shape), dynamic=True)
            else:
                run(0, len(chunks))

    def _phases(self, scratch, x):
        """Fill the phases of chunk ``x``; returns a function (i, j) -> the (b, C, Ho, Wo) input
        block of kernel offset (i, j)."""
        b = x.shape[0]
        kw, (sh, sw), (ph, pw), (ho, wo) = self.kernel[1], self.stride, self.pad, self.out_size
        src = x
        if self.need_pad:
            src = scratch["pad"][:b]
            src[:, :, ph : ph + self.copy_h, pw : pw + self.copy_w] = x[
                :, :, : self.copy_h, : self.copy_w
            ]
        phase = scratch["phase"]
        for j in range(kw):
            for r in range(self.row_phases):
                phase[j][r][:b] = src[:, :, r : self.hpad : sh, j : j + sw * (wo - 1) + 1 : sw]

        def block(i, j):
            q = i // sh
            return phase[j][i % sh][:b, :, q : q + ho]

        return block

    def _offsets(self):
        kh, kw = self.kernel
        return [(i, j) for i in range(kh) for j in range(kw)]

    # -------------------------------------------------------------- MAX
    def max_forward(self, x, y, track: bool = True) -> None:
        """y = max over each window; with ``track``, ``idx`` = offset of the first maximum."""
        xp = self.xp
        n, c, h, w = self.shape
        if self.is_global:
            x2, y1 = x.reshape(n * c, h * w), y.reshape(n * c)
            if track:
                idx = self.idx = xp.argmax(x2, axis=1)
                y1[...] = xp.take_along_axis(x2, idx[:, None], axis=1)[:, 0]
            else:
                xp.max(x2, axis=1, out=y1)
            return
        if track:
            self._chunks(self._max_track_chunk, -np.inf, x, y, self._ensure_idx())
        else:
            self._chunks(self._max_chunk, -np.inf, x, y)
        if self.empty is not None:
            y[..., self.empty] = -np.finfo(np.float32).max

    def _fold_offsets(self, scratch, x, y, op) -> None:
        """y = op(...op(op(v_0, v_1), v_2)..., v_last) over the kernel offsets' views v of x."""
        block = self._phases(scratch, x)
        offsets = self._offsets()
        y[...] = block(*offsets[0])
        for i, j in offsets[1:]:
            op(y, block(i, j), out=y)

    def _max_chunk(self, scratch, x, y) -> None:
        self._fold_offsets(scratch, x, y, self.xp.maximum)

    def _max_track_chunk(self, scratch, x, y, idx) -> None:
        xp = self.xp
        b = x.shape[0]
        m, t = scratch["m"][:b], scratch["t"][:b]
        block = self._phases(scratch, x)
        offsets = self._offsets()
        y[...] = block(*offsets[0])
        idx.fill(0)
        kw = self.kernel[1]
        for i, j in offsets[1:]:
            v = block(i, j)
            xp.greater(v, y, out=m)
            xp.maximum(y, v, out=y)
            # offsets come in increasing order, so "take p where greater" is a maximum
            xp.multiply(m, self.idx_dtype(i * kw + j), out=t)
            xp.maximum(idx, t, out=idx)

    def _flat_index(self, scratch, idx):
        """Flat input index (within the chunk) of each window's maximum."""
        b = idx.shape[0]
        flat = scratch["flat"][:b]
        _take(self.xp, self.table_xp, idx, flat)
        flat += self.base_full[:b]
        return flat

    def max_backward(self, dy, dx) -> None:
        """dx[argmax of each window] += dy (idx from the last tracked forward)."""
        xp = self.xp
        n, c, h, w = self.shape
        if self.is_global:
            dx2 = dx.reshape(n * c, h * w)
            dx2.fill(0)
            idx = self.idx.reshape(n * c).astype(np.intp, copy=False)
            dx2[xp.arange(n * c), idx] = dy.reshape(n * c)
            return
        self._chunks(self._max_backward_chunk, -np.inf, dy, dx, self.idx)

    def _max_backward_chunk(self, scratch, dy, dx, idx) -> None:
        flat = self._flat_index(scratch, idx)
        dx.fill(0)
        if self.empty is not None:  # windows without input send their gradient nowhere
            keep = ~self.empty
            flat, dy = flat[..., keep], dy[..., keep]
        scatter_add(self.xp, dx.reshape(-1), flat.reshape(-1), dy.reshape(-1))

    def max_mask(self, out) -> None:
        """Caffe's second top: the flat input index h * W + w of each window's maximum."""
        n, c, h, w = self.shape
        if self.is_global:
            out.reshape(n * c)[...] = self.idx.reshape(n * c)
            return
        self._chunks(self._mask_chunk, -np.inf, self.idx, out)
        if self.empty is not None:
            out[..., self.empty] = -1

    def _mask_chunk(self, scratch, idx, out) -> None:
        b = idx.shape[0]
        flat = scratch["flat"][:b]
        _take(self.xp, self.table_xp, idx, flat)
        self.xp.add(flat, self.base_hw, out=out)

    # -------------------------------------------------------------- AVE
    def ave_forward(self, x, y) -> None:
        """y = sum over the clipped window / size of the window clipped to the padded extent."""
        xp = self.xp
        n, c, h, w = self.shape
        if self.is_global:
            xp.sum(x.reshape(n * c, h * w), axis=1, out=y.reshape(n * c))
            y *= self.inv_div
        else:
            self._chunks(self._ave_chunk, 0.0, x, y)

    def _ave_chunk(self, scratch, x, y) -> None:
        self._fold_offsets(scratch, x, y, self.xp.add)
        y *= self.inv_div

    def ave_backward(self, dy, dx) -> None:
        xp = self.xp
        n, c, h, w = self.shape
        if self.is_global:
            _, _, f = self._scratch()
            xp.multiply(dy, self.inv_div, out=f)
            dx.reshape(n * c, h * w)[...] = f.reshape(n * c, 1)
            return
        self._chunks(self._ave_backward_chunk, 0.0, dy, dx)

    def _ave_backward_chunk(self, scratch, dy, dx) -> None:
        """Spread dy / size over each window: add into the phases, then the phases back into
        the padded chunk (the adjoint of :meth:`_phases`)."""
        xp = self.xp
        b = dy.shape[0]
        kw, (sh, sw), (ph, pw), (ho, wo) = self.kernel[1], self.stride, self.pad, self.out_size
        f = scratch["f"][:b]
        xp.multiply(dy, self.inv_div, out=f)
        phase = scratch["phase"]
        for j in range(kw):
            for r in range(self.row_phases):
                phase[j][r][:b].fill(0)
        for i, j in self._offsets():
            q = i // sh
            blk = phase[j][i % sh][:b, :, q : q + ho]
            blk += f
        target = scratch["pad"][:b] if self.need_pad else dx
        target.fill(0)
        for j in range(kw):
            for r in range(self.row_phases):
                dst = target[:, :, r : self.hpad : sh, j : j + sw * (wo - 1) + 1 : sw]
                dst += phase[j][r][:b]
        if self.need_pad:
            if self.copy_h < self.shape[2] or self.copy_w < self.shape[3]:
                dx.fill(0)
            dx[:, :, : self.copy_h, : self.copy_w] = target[
                :, :, ph : ph + self.copy_h, pw : pw + self.copy_w
            ]
            target.fill(0)  # the forward reuses this buffer and writes only its interior

    # -------------------------------------------------------------- STOCHASTIC
    def _sums(self, x, s, q=None) -> None:
        xp = self.xp
        s.fill(0)
        if q is not None:
            q.fill(0)
        sq = None if q is None else xp.empty(self.out_shape, self.dtype)
        for _, osl, isl, _ in self.views:
            ss, xs = s[osl], x[isl]
            xp.add(ss, xs, out=ss)
            if q is not None:
                t = sq[osl]
                xp.multiply(xs, xs, out=t)
                qs = q[osl]
                xp.add(qs, t, out=qs)

    def stochastic_test_forward(self, x, y) -> None:
        """y = sum(x^2) / (FLT_MIN + sum(x)) over each window (Caffe's TEST form)."""
        xp = self.xp
        s = xp.empty(self.out_shape, self.dtype)
        self._sums(x, s, y)
        s += np.finfo(np.float32).tiny
        y /= s
        self._sto_denominator = s

    def stochastic_test_backward(self, x, y, dy, dx) -> None:
        """Exact gradient of the TEST form: d/dx_i = (2 x_i - y) / D for every window holding i."""
        a = dy / self._sto_denominator
        b = a * y
        a *= 2
        dx.fill(0)
        for _, osl, isl, _ in self.views:
            dxs = dx[isl]
            dxs += x[isl] * a[osl] - b[osl]

    def stochastic_train_forward(self, x, y, uniform) -> None:
        """Sample one input per window with probability x / sum(x) (inputs >= 0): the first
        offset where the running sum reaches ``uniform * sum``; y = that input."""
        xp = self.xp
        s = xp.empty(self.out_shape, self.dtype)
        self._sums(x, s)
        thres = s * uniform
        idx = self._ensure_idx()
        idx.fill(0)
        cum = xp.zeros(self.out_shape, self.dtype)
        found = xp.zeros(self.out_shape, bool)
        hit = xp.empty(self.out_shape, bool)
        y.fill(0)
        last = xp.zeros(self.out_shape, self.idx_dtype)
        for p, osl, isl, _ in self.views:
            cs, xs, hs, fs = cum[osl], x[isl], hit[osl], found[osl]
            xp.add(cs, xs, out=cs)
            xp.greater_equal(cs, thres[osl], out=hs)
            hs &= ~fs
            fs |= hs
            ids = idx[osl]
            xp.maximum(ids, hs * self.idx_dtype(p), out=ids)
            ys = y[osl]
            ys += xs * hs
            last[osl] = p
        # rounding can leave the threshold unreached: take the window's last position then
        miss = ~found
        if bool(miss.any()):
            idx[miss] = last[miss]
            for p, osl, isl, _ in self.views:
                sel = miss[osl] & (last[osl] == p)
                ys = y[osl]
                ys[sel] = x[isl][sel]


# ---------------------------------------------------------------------------------- LRN helpers
def window_sum(xp, padded, axis: int, size: int, out) -> None:
    """out = sum of ``size`` consecutive slices of ``padded`` along ``axis`` (a sliding-window
    sum; ``padded`` is ``size - 1`` longer than ``out`` on that axis)."""
    n = out.shape[axis]

    def sl(o):
        idx = [slice(None)] * padded.ndim
        idx[axis] = slice(o, o + n)
        return padded[tuple(idx)]

    out[...] = sl(0)
    for o in range(1, size):
        xp.add(out, sl(o), out=out)


def negative_power(xp, base, beta: float, out) -> None:
    """out = base ** -beta, with fast exact forms for the common betas 0.75, 0.5 and 1."""
    if beta == 0.75:
        xp.sqrt(base, out=out)
        out *= xp.sqrt(out)
        xp.reciprocal(out, out=out)
    elif beta == 0.5:
        xp.sqrt(base, out=out)
        xp.reciprocal(out, out=out)
    elif beta == 1.0:
        xp.reciprocal(base, out=out)
    else:
        xp.power(base, -beta, out=out)
