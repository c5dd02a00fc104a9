"""Batch-innermost (C, H, W, N) kernels for 2-D convolution and pooling on NumPy.

Chains of Convolution, Pooling, ReLU, LRN and InnerProduct layers pass their blobs in this
order (see ``Blob.write_chwn`` and docs/performance.md), so no layer pays a transpose at its
ends:

* Convolution: the columns of a tile of output rows are ``kh * kw`` strided copies whose
  contiguous runs are ``W_out * N`` values long, and the GEMM ``W (O, K) @ col (K, rows * W_out
  * N)`` writes the tile's rows of the (O, H_out, W_out, N) top in place (with one group, the
  bias rides along as a row of ones). The weight gradient is ``col @ dy^T`` per tile (the
  forward's columns are kept and reused when the whole batch is one tile), the data gradient
  ``W^T @ dy`` added back at the kernel offsets.
* Stride-1 layers with many channels at batch 32 or more run through the frequency domain
  instead (minicaffe.spectral; :func:`conv_plan` decides).
* Pooling: every kernel offset is one strided view of the input, clipped to the windows it
  falls in, with N contiguous values per window position, so MAX/AVE are ``kh * kw``
  elementwise passes over the output.
* InnerProduct reads a (C, H, W, N) bottom as the (C*H*W, N) matrix it already is.

Copies and elementwise passes are split by channel between NUM_THREADS threads (NumPy releases
the GIL; by default only where OpenBLAS's threads leave a core free, see
functional.default_threads); GEMMs use OpenBLAS's own threads. Every buffer is allocated
once per shape.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from minicaffe import blas, spectral
from minicaffe.functional import (
    NUM_THREADS,
    WHOLE_ELEMS,
    ConvGeometry,
    _window_ranges,
    add_kernel_columns,
    address_key,
    axis_slice,
    even_ranges,
    parallel,
)

# Column-buffer budget (elements) of one tile when the whole batch's columns do not fit
# WHOLE_ELEMS. Tiled layers share one workspace per thread (as Caffe's column buffer), so
# large tiles cost memory once per net, not once per layer (at most 128 MB of float32, about
# Caffe's own column buffer for VGG's first layers); larger tiles make longer GEMMs, measured
# side by side: cifar10_quick train step 1.15x faster with 32M-element tiles than with 1M,
# CaffeNet forward 1.15x.
TILE_ELEMS = int(os.environ.get("MINICAFFE_CHWN_TILE", 1 << 25))
WHOLE = int(os.environ.get("MINICAFFE_CHWN_WHOLE", WHOLE_ELEMS))
_local = threading.local()
# Input bytes per block of channels in the pooling passes (a block's passes stay in cache).
CHUNK_BYTES = int(os.environ.get("MINICAFFE_POOL_CHUNK", 1 << 21))
# Kernel-row convolution (ChwnRowConvPlan): the fewest column rows per kernel row (C * kw), the
# largest column buffer (elements; larger layers use tiled whole-kernel columns), and the
# output positions per GEMM (a chunk's output stays in cache while the kernel rows add up).
ROW_MIN_K = int(os.environ.get("MINICAFFE_ROW_MIN_K", 16))
ROW_MAX_ELEMS = int(os.environ.get("MINICAFFE_ROW_MAX", 1 << 24))
ROW_CHUNK = int(os.environ.get("MINICAFFE_ROW_CHUNK", 4096))
# Stacked kernel-row forward (ChwnRowConvPlan._forward_stacked): at most this many output
# channels, and padded input rows at most this many times the output rows.
STACK_MAX_O = int(os.environ.get("MINICAFFE_STACK_MAX_O", 32))
STACK_MAX_ROWS = float(os.environ.get("MINICAFFE_STACK_MAX_ROWS", 1.3))
# Layers whose whole-kernel columns hold at most ROW_MIN_WHOLE values keep the whole-kernel
# plan (0: none do).
ROW_MIN_WHOLE = int(os.environ.get("MINICAFFE_ROW_MIN_WHOLE", 0))


def workspace(n: int, dtype) -> np.ndarray:
    """This thread's shared column workspace, at least ``n`` values of ``dtype``."""
    key = np.dtype(dtype).str
    spaces = getattr(_local, "spaces", None)
    if spaces is None:
        spaces = _local.spaces = {}
    buf = spaces.get(key)
    if buf is None or buf.size < n:
        buf = spaces[key] = np.empty(n, dtype)
    return buf


class _ChwnConvBase:
    """What the working-layout convolution plans share: the geometry and the (padded) source."""

    def __init__(self, dtype, num: int, channels: int, num_output: int, geom: ConvGeometry,
                 group: int):
        self.dtype = np.dtype(dtype)
        self.n, self.c, self.o, self.geom, self.g = num, channels, num_output, geom, group
        (self.h, self.w), (self.ho, self.wo) = geom.in_size, geom.out_size
        self.k_total = channels * geom.kernel_count
        self.padded = any(geom.pad)
        hp, wp = geom.padded_size
        self.xb = None  # padded (or transposed) copy of the input, made on first need
        self._loaded = False
        self.dxb = np.zeros((channels, hp, wp, num), self.dtype) if self.padded else None
        self._cols_of = None  # the source array whose whole-batch columns the plan holds

    # --------------------------------------------------------------------------- input
    def source(self, x, chwn: bool):
        """The (C, Hp, Wp, N) array the columns are read from: ``x`` itself when it is held
        as (C, H, W, N) and there is no padding; else a zero-padded copy (transposed from
        (N, C, H, W) when ``chwn`` is false)."""
        if chwn and not self.padded:
            self._loaded = False
            return x
        if self.xb is None:
            self.xb = np.zeros((self.c,) + self.geom.padded_size + (self.n,), self.dtype)
        ph, pw = self.geom.pad
        inner = self.xb[:, ph : ph + self.h, pw : pw + self.w, :]
        src = x if chwn else x.transpose(1, 2, 3, 0)

        def run(c0, c1):
            inner[c0:c1] = src[c0:c1]

        parallel(run, self.c, x.size)
        self._loaded = True
        return self.xb

    def loaded_source(self, x, chwn: bool):
        """What the last forward read, for the backward (the bottom has not changed since)."""
        if chwn and not self.padded:
            return x
        return self.xb if self._loaded else self.source(x, chwn)

    def _unpad(self, target, dx) -> None:
        """dx = the inner (unpadded) part of ``target``."""
        ph, pw = self.geom.pad
        inner = target[:, ph : ph + self.h, pw : pw + self.w, :]

        def run(c0, c1):
            dx[c0:c1] = inner[c0:c1]

        parallel(run, self.c, dx.size)


class ChwnConvPlan(_ChwnConvBase):
    """2-D convolution (any stride, pad, dilation, group) of a (C, H, W, N) input into a
    (O, H_out, W_out, N) output, on NumPy, through whole-kernel columns."""

    def __init__(self, dtype, num: int, channels: int, num_output: int, geom: ConvGeometry,
                 group: int):
        super().__init__(dtype, num, channels, num_output, geom, group)
        self.kg, self.og = self.k_total // group, num_output // group
        row = self.wo * num
        whole = self.k_total * self.ho * row
        if whole <= WHOLE:
            rows = self.ho
        else:
            rows = max(1, min(self.ho, TILE_ELEMS // max(1, self.k_total * row)))
        self.tiles = [(h0, min(self.ho, h0 + rows)) for h0 in range(0, self.ho, rows)]
        # one group: the bias rides in the GEMMs as a row of ones under the columns (no pass
        # over the top to add it; the weight-gradient GEMM yields the bias gradient as its
        # last row)
        self.fuse = group == 1
        self.col_size = (self.k_total + self.fuse) * rows * row
        self.waug = np.empty((num_output, self.k_total + 1), self.dtype) if self.fuse else None
        self.dwt_aug = np.empty((self.k_total + 1, num_output), self.dtype) if self.fuse else None
        self.dw_parts = None
        # whole-batch columns are the layer's own (the backward reuses them); tiles share
        self._own_col = np.empty(self.col_size, self.dtype) if len(self.tiles) == 1 else None
        self.dwt = np.empty((group, self.kg, self.og), self.dtype)

    @property
    def col(self):
        if self._own_col is not None:
            return self._own_col
        return workspace(self.col_size, self.dtype)

    def _col6(self, h0, h1):
        n = self.k_total * (h1 - h0) * self.wo * self.n
        kh, kw = self.geom.kernel
        return self.col[:n].reshape(self.c, kh, kw, h1 - h0, self.wo, self.n)

    def _offset_views(self, a, h0, h1):
        """(i, j, view of ``a`` read by kernel offset (i, j) for output rows h0:h1)."""
        (kh, kw), (sh, sw), (dh, dw) = self.geom.kernel, self.geom.stride, self.geom.dilation
        for i in range(kh):
            rows = axis_slice(h0 * sh + i * dh, h1 - h0, sh)
            for j in range(kw):
                yield i, j, a[:, rows, axis_slice(j * dw, self.wo, sw), :]

    def _im2col(self, src, h0, h1) -> None:
        col6 = self._col6(h0, h1)

        def run(c0, c1):
            for i, j, view in self._offset_views(src[c0:c1], h0, h1):
                col6[c0:c1, i, j] = view

        parallel(run, self.c, col6.size)

    def _col2im(self, dst, h0, h1) -> None:
        col6 = self._col6(h0, h1)

        def run(c0, c1):
            for i, j, view in self._offset_views(dst[c0:c1], h0, h1):
                view += col6[c0:c1, i, j]

        parallel(run, self.c, col6.size)

    def _tile_col(self, h0, h1):
        """The tile's columns as (G, K/G, positions)."""
        n = self.k_total * (h1 - h0) * self.wo * self.n
        return self.col[:n].reshape(self.g, self.kg, -1)

    def _tile_col_ones(self, h0, h1):
        """The tile's columns with a last row of ones, (K + 1, positions) (one group)."""
        p = (h1 - h0) * self.wo * self.n
        col = self.col[: (self.k_total + 1) * p].reshape(self.k_total + 1, p)
        col[self.k_total] = 1
        return col

    def _weight_gradient(self, cols, dy2) -> None:
        """dwt_aug = cols (K + 1, P) @ dy2^T (P, O). With few input rows (first layers) OpenBLAS
        threads such a long, thin product poorly: the positions are then split between
        NUM_THREADS threads (one BLAS thread each) and the partial products added in a fixed
        order (measured 1.5x faster for LeNet's and cifar10_quick's conv1)."""
        parts = min(NUM_THREADS, cols.shape[1])
        if self.k_total >= 128 or parts < 2:
            np.matmul(cols, dy2.T, out=self.dwt_aug)
            return
        if self.dw_parts is None:
            self.dw_parts = np.empty((parts,) + self.dwt_aug.shape, self.dtype)
        ranges = even_ranges(cols.shape[1], parts)

        def run(a, b):
            for i in range(a, b):
                sl = slice(*ranges[i])
                np.matmul(cols[:, sl], dy2[:, sl].T, out=self.dw_parts[i])

        parallel(run, parts, cols.size, gemm=True)
        np.sum(self.dw_parts, axis=0, out=self.dwt_aug)

    def _tile_rows(self, a, h0, h1):
        """Rows h0:h1 of a (O, H_out, W_out, N) array as (G, O/G, positions) (a view)."""
        return a[:, h0:h1].reshape(self.g, self.og, -1)

    # --------------------------------------------------------------------------- passes
    def forward(self, src, w2, y, bias=None) -> None:
        """y (O, H_out, W_out, N) = conv(src) (+ bias); ``src`` from :meth:`source`."""
        w3 = w2.reshape(self.g, self.og, self.kg)
        fused = self.fuse and bias is not None
        if fused:
            self.waug[:, : self.k_total] = w2
            self.waug[:, self.k_total] = bias
        for h0, h1 in self.tiles:
            self._im2col(src, h0, h1)
            out = self._tile_rows(y, h0, h1)
            if fused:
                np.matmul(self.waug, self._tile_col_ones(h0, h1), out=out[0])
                continue
            col = self._tile_col(h0, h1)
            for g in range(self.g):
                np.matmul(w3[g], col[g], out=out[g])
        self._cols_of = address_key(src, thread=False) if len(self.tiles) == 1 else None
        if bias is not None and not fused:
            y3 = y.reshape(self.o, -1)

            def run(o0, o1):
                y3[o0:o1] += bias[o0:o1, None]

            parallel(run, self.o, y.size)

    def backward(self, w2, dy, src, dw=None, db=None, dx=None) -> None:
        """dw += dL/dW, db += dL/db, dx = dL/dx ((C, H, W, N)); dy (O, H_out, W_out, N); ``src``
        is what the forward read (its columns are reused when they are still held)."""
        w3 = w2.reshape(self.g, self.og, self.kg)
        fused = self.fuse and dw is not None and db is not None
        if db is not None and not fused:
            db += dy.reshape(self.o, -1).sum(axis=1)
        if dw is None and dx is None:
            return
        reuse = self._cols_of is not None and self._cols_of == address_key(src, thread=False)
        self._cols_of = None
        dw3 = None if dw is None else dw.reshape(self.g, self.og, self.kg)
        target = None
        if dx is not None:
            target = self.dxb if self.padded else dx
            target.fill(0)
        for h0, h1 in self.tiles:
            col, dyt = self._tile_col(h0, h1), self._tile_rows(dy, h0, h1)
            if fused:
                if not reuse:
                    self._im2col(src, h0, h1)
                self._weight_gradient(self._tile_col_ones(h0, h1), dyt[0])
                dw += self.dwt_aug[: self.k_total].T
                db += self.dwt_aug[self.k_total]
            elif dw3 is not None:
                if not reuse:
                    self._im2col(src, h0, h1)
                for g in range(self.g):  # dW^T = col dy^T (faster in OpenBLAS than dy col^T)
                    np.matmul(col[g], dyt[g].T, out=self.dwt[g])
                dw3 += self.dwt.transpose(0, 2, 1)
            if target is not None:
                for g in range(self.g):
                    np.matmul(w3[g].T, dyt[g], out=col[g])
                self._col2im(target, h0, h1)
        if dx is not None and self.padded:
            self._unpad(target, dx)


class ChwnRowConvPlan(_ChwnConvBase):
    """2-D convolution with vertical stride 1 and one group, summed over kernel rows.

    The columns hold only the horizontal kernel offsets, for every padded input row:
    ``hcol[(c, j), (h, wo, n)] = x[c, h, j * dw + wo * sw, n]`` (kw times smaller than
    whole-kernel columns). Kernel row ``i`` reads the same matrix ``i * dh`` rows further on,
    a strided view with no copy, so the forward is ``kh`` accumulating GEMMs
    ``y += W_i (O, C*kw) @ hcol_i``, the weight gradient ``kh`` GEMMs ``hcol_i @ dy^T``, and
    the data gradient ``kh`` GEMMs summed straight into row-shifted views of one buffer, which
    then needs only ``kw`` adds (not ``kh * kw``) to land in dx. Measured against the
    whole-kernel plan: cifar10_quick's conv2 and conv3 and LeNet's conv2 1.3-1.6x faster
    forward; the accumulating GEMMs (minicaffe.blas) also ran faster than one GEMM over all
    the kernel offsets.

    The GEMMs run on OpenBLAS's own threads: splitting them between minicaffe's threads (one
    BLAS thread each) measured faster in isolation but 1.1-1.3x slower inside whole nets.
    """

    def __init__(self, dtype, num: int, channels: int, num_output: int, geom: ConvGeometry):
        super().__init__(dtype, num, channels, num_output, geom, 1)
        kh, kw = geom.kernel
        hp = geom.padded_size[0]
        self.kr = channels * kw  # rows of the columns per kernel row
        self.span = self.wo * num  # positions per output row
        self.p = self.ho * self.span  # output positions
        self.shift = geom.dilation[0] * self.span  # column offset between kernel rows
        # hcol with a last row of ones over the output positions: the bias rides in the first
        # kernel row's GEMM (and its gradient falls out of that row's weight-gradient GEMM)
        self.hcol = np.empty((self.kr + 1, hp * self.span), self.dtype)
        self.hcol[self.kr] = 1
        self.wr = np.zeros((kh, num_output, self.kr + 1), self.dtype)
        self.dwr = np.empty((kh, self.kr + 1, num_output), self.dtype)
        self.dhcol = None
        # few output channels: one GEMM for all kernel rows over all padded rows (see
        # _forward_stacked), if the extra rows computed stay few
        self.stacked = (
            num_output <= STACK_MAX_O
            and hp <= STACK_MAX_ROWS * self.ho
            and kh * num_output * hp * self.span <= ROW_MAX_ELEMS
        )
        self.z = None

    @staticmethod
    def supported(num: int, channels: int, geom: ConvGeometry, group: int, dtype) -> bool:
        """Where the plan applies and pays: one group, vertical stride 1, more than one kernel
        row, at least ROW_MIN_K values per kernel row (LeNet's conv1, with one input channel,
        is better served by whole-kernel columns), whole-kernel columns over ROW_MIN_WHOLE
        values (0 by default: LeNet's conv2, whose whole-kernel columns are kept between
        forward and backward, still made the train step 5-8 % faster by kernel rows, side by
        side, once no helper thread competed with OpenBLAS's), its own columns at most
        ROW_MAX_ELEMS values, and BLAS reachable for the accumulating GEMMs."""
        kh, kw = geom.kernel
        hp = geom.padded_size[0]
        ho, wo = geom.out_size
        size = (channels * kw + 1) * hp * wo * num
        whole = (channels * kh * kw + 1) * ho * wo * num
        return (
            group == 1
            and geom.stride[0] == 1
            and kh > 1
            and channels * kw >= ROW_MIN_K
            and whole > ROW_MIN_WHOLE
            and size <= ROW_MAX_ELEMS
            and blas.available(dtype)
        )

    def _columns(self, src) -> None:
        (_, kw), (_, sw), (_, dw) = self.geom.kernel, self.geom.stride, self.geom.dilation
        hc = self.hcol[: self.kr].reshape(self.c, kw, -1, self.wo, self.n)

        def run(c0, c1):
            for j in range(kw):
                hc[c0:c1, j] = src[c0:c1, :, axis_slice(j * dw, self.wo, sw), :]

        parallel(run, self.c, hc.size)

    def _rearrange(self, w2, bias) -> None:
        """wr[i] = the weights of kernel row i as (O, C*kw), the bias as the last column."""
        kh, kw = self.geom.kernel
        dst = self.wr[:, :, : self.kr].reshape(kh, self.o, self.c, kw)
        dst[...] = w2.reshape(self.o, self.c, kh, kw).transpose(2, 0, 1, 3)
        if bias is not None:
            self.wr[0, :, self.kr] = bias

    def forward(self, src, w2, y, bias=None) -> None:
        """y (O, H_out, W_out, N) = conv(src) (+ bias); ``src`` from :meth:`source`."""
        kh = self.geom.kernel[0]
        self._rearrange(w2, bias)
        self._columns(src)
        self._cols_of = address_key(src, thread=False)
        y2 = y.reshape(self.o, self.p)
        rows0 = self.kr + (bias is not None)
        if self.stacked:
            return self._forward_stacked(y2, rows0)
        for p0, p1 in _chunks(self.p, ROW_CHUNK):  # a chunk's output stays in cache
            for i in range(kh):
                rows = rows0 if i == 0 else self.kr
                off = i * self.shift
                blas.gemm(self.wr[i, :, :rows], self.hcol[:rows, off + p0 : off + p1],
                          y2[:, p0:p1], beta=float(i > 0))

    def _forward_stacked(self, y2, rows: int) -> None:
        """The forward as one GEMM ``Z = [W_0; ...; W_kh-1] @ hcol`` over every padded row, then
        ``y = sum_i Z_i`` shifted by kernel row (in the order of the accumulating GEMMs, so the
        sums are the same). With few output channels the per-row GEMMs (O x C*kw) @ (C*kw x
        positions) run far below OpenBLAS's speed on wider products: cifar10_quick's conv2
        (O = 32, 20 padded rows for 16 output rows) 18.6 ms against 27.2 ms, although it
        computes 25 % more; with O = 64 or half again as many padded rows it loses."""
        kh, o, p = self.geom.kernel[0], self.o, self.p
        if self.z is None:
            self.z = np.empty((kh * o, self.hcol.shape[1]), self.dtype)
        blas.gemm(self.wr[:, :, :rows].reshape(kh * o, rows), self.hcol[:rows], self.z)
        np.copyto(y2, self.z[:o, :p])
        for i in range(1, kh):
            off = i * self.shift
            np.add(y2, self.z[i * o : (i + 1) * o, off : off + p], out=y2)

    def backward(self, w2, dy, src, dw=None, db=None, dx=None) -> None:
        """dw += dL/dW, db += dL/db, dx = dL/dx ((C, H, W, N)); dy (O, H_out, W_out, N); ``src``
        is what the forward read (its columns are reused when they are still held)."""
        (kh, kw), (_, sw), (_, dil_w) = self.geom.kernel, self.geom.stride, self.geom.dilation
        dy2 = dy.reshape(self.o, self.p)
        bias_row = dw is not None and db is not None
        if db is not None and not bias_row:
            db += dy2.sum(axis=1)
        if dw is None and dx is None:
            return
        if self._cols_of != address_key(src, thread=False):
            self._columns(src)
        self._cols_of = None
        target = None
        if dx is not None:
            self._rearrange(w2, None)
            target = self.dxb if self.padded else dx
            if self.dhcol is None:
                self.dhcol = np.empty((self.kr, self.hcol.shape[1]), self.dtype)
        p, kr = self.p, self.kr
        if dw is not None:
            for i in range(kh):
                rows = kr + (bias_row and i == 0)
                off = i * self.shift
                blas.gemm(self.hcol[:rows, off : off + p], dy2.T, self.dwr[i, :rows])
        if target is not None:
            dh = self.dhcol
            # by destination columns: each chunk gets all its kernel rows while in cache
            for q0, q1 in _chunks(dh.shape[1], ROW_CHUNK):
                if q1 > p:
                    dh[:, max(q0, p) : q1].fill(0)
                for i in range(kh):
                    off = i * self.shift
                    a, b = max(q0, off), min(q1, off + p)
                    if a < b:
                        blas.gemm(self.wr[i, :, :kr].T, dy2[:, a - off : b - off], dh[:, a:b],
                                  beta=float(i > 0))
            hc = dh.reshape(self.c, kw, -1, self.wo, self.n)

            def run(c0, c1):
                add_kernel_columns(target[c0:c1], hc[c0:c1], self.wo, sw, dil_w)

            parallel(run, self.c, dh.size)
        if dw is not None:
            dw.reshape(self.o, self.c, kh, kw)[...] += (
                self.dwr[:, : self.kr].reshape(kh, self.c, kw, self.o).transpose(3, 1, 0, 2)
            )
            if bias_row:
                db += self.dwr[0, self.kr]
        if dx is not None and self.padded:
            self._unpad(target, dx)


def _chunks(total: int, size: int) -> list[tuple[int, int]]:
    """As few equal [start, stop) ranges of at most ``size`` as cover range(total)."""
    return even_ranges(total, max(1, -(-total // size)))


def conv_plan(dtype, num: int, channels: int, num_output: int, geom: ConvGeometry, group: int):
    """The working-layout plan for this convolution: through the frequency domain where that
    takes far fewer multiplications (minicaffe.spectral), else by kernel rows where that
    applies, else through whole-kernel columns."""
    if spectral.pays(num, channels, num_output, geom, group):
        return spectral.SpectralConvPlan(dtype, num, channels, num_output, geom)
    if ChwnRowConvPlan.supported(num, channels, geom, group, dtype):
        return ChwnRowConvPlan(dtype, num, channels, num_output, geom)
    return ChwnConvPlan(dtype, num, channels, num_output, geom, group)


class ChwnPoolPlan:
    """MAX or AVE pooling of a (C, H, W, N) input into (C, H_out, W_out, N) with Caffe's window
    rules (windows start at o * stride - pad; MAX reads the window clipped to the image and the
    first maximum in row-major order takes the gradient; AVE sums the clipped window and
    divides by the window clipped to [-pad, size + pad)).

    Each kernel offset (i, j) reads one strided view of the input for the box of outputs whose
    window has that offset inside the image, so padding and overhanging last windows need no
    padded copy. MAX over 2x2 tiles keeps, per offset, a mask of the outputs whose first
    maximum sits there; other MAX windows keep the winning offset per output and scatter the
    gradient through it.
    """

    def __init__(self, dtype, shape_nchw, kernel, stride, pad, out, method: str):
        self.dtype = np.dtype(dtype)
        n, c, h, w = shape_nchw
        self.n, self.c, self.h, self.w = n, c, h, w
        self.kernel, self.stride, self.pad, self.out = kernel, stride, pad, out
        self.method = method
        (kh, kw), (sh, sw), (ph, pw), (ho, wo) = kernel, stride, pad, out
        rows = _window_ranges(h, kh, sh, ph, ho)
        cols = _window_ranges(w, kw, sw, pw, wo)
        # (output box, input view slices, covers every output) per offset, row-major order
        self.offsets = []
        for ri in rows:
            for cj in cols:
                if ri is None or cj is None:
                    self.offsets.append(None)
                    continue
                (o0, o1, i0), (q0, q1, j0) = ri, cj
                box = (slice(None), slice(o0, o1), slice(q0, q1))
                src = (slice(None), axis_slice(i0, o1 - o0, sh), axis_slice(j0, q1 - q0, sw))
                self.offsets.append((box, src, (o1 - o0, q1 - q0) == (ho, wo)))
        # windows tile the input exactly: each offset writes its own positions of dx
        self.direct = (
            (sh, sw) == (kh, kw) and (ph, pw) == (0, 0) and (ho * sh, wo * sw) == (h, w)
        )
        # 2x2 windows tiling the input (LeNet's pools): the tournament of _max_2x2
        self.pairs = self.direct and (kh, kw) == (2, 2)
        self.out_shape = (c, ho, wo, n)
        self.masks = None  # MAX over 2x2 tiles: first-argmax masks per offset
        self.win = self.base = None  # other MAX: the winning offset per output
        self.pair_tmp = self.pair_win = None
        self.tmp = np.empty(self.out_shape, self.dtype)
        self.inv = None
        if method == "AVE":
            def sizes(size, k, s, p, o):
                start = np.arange(o) * s - p
                return np.minimum(start + k, size + p) - start

            div = np.outer(sizes(h, kh, sh, ph, ho), sizes(w, kw, sw, pw, wo))
            inv = (1.0 / div).astype(self.dtype)[None, :, :, None]
            self.inv = float(inv.flat[0]) if np.all(div == div.flat[0]) else inv

    def _boxes(self, c0, c1):
        """(k, output box, input view, covers all outputs) for each offset inside the image: the
        output box indexes arrays already cut to channels c0:c1, the view the whole input."""
        ch = slice(c0, c1)
        for k, entry in enumerate(self.offsets):
            if entry is not None:
                box, src, full = entry
                yield k, box, (ch,) + src[1:], full

    def forward(self, x, y, track: bool) -> None:
        """y (C, H_out, W_out, N) from x (C, H, W, N); ``track`` (MAX): record the argmax."""
        boxes = self._boxes
        if self.method == "MAX":
            pairs = self.pairs
            if track and pairs and self.masks is None:
                self.masks = np.empty((4,) + self.out_shape, bool)

            def run(c0, c1):
                if pairs:
                    return self._max_2x2(x, y, track, c0, c1)
                return self._max_general(x, y, track, c0, c1)

            self._parallel(run, x.size * 2)
        else:
            def run(c0, c1):
                out = y[c0:c1]
                for _, box, src, _ in self._start(boxes(c0, c1), out, x, 0):
                    o = out[box]
                    o += x[src]
                out *= self.inv

            self._parallel(run, x.size)

    def _max_general(self, x, y, track: bool, c0: int, c1: int) -> None:
        """Any other window: the maximum folded over the offsets in row-major order. Tracking
        keeps the winning offset per output (int8 in most cases): a later offset takes over
        only where it is strictly greater, which is Caffe's first maximum in the window. The
        backward scatters through that index (_scatter_max)."""
        m = y[c0:c1]
        boxes = list(self._boxes(c0, c1))
        rest = self._start(boxes, m, x, -np.inf)
        if not track:
            for _, box, src, _ in rest:
                np.maximum(m[box], x[src], out=m[box])
            return
        if self.win is None:
            count = len(self.offsets)
            kind = np.int8 if count < 127 else np.int16 if count < 32767 else np.int32
            self.win = np.empty(self.out_shape, kind)
            self.code = np.empty(self.out_shape, kind)
            self.gt = np.empty(self.out_shape, bool)
            self.none = np.empty(self.out_shape, bool)
        win, code, gt = self.win[c0:c1], self.code[c0:c1], self.gt[c0:c1]
        full = len(rest) < len(boxes)  # the first offset covers every output: its winner
        # (with padding, outputs whose window misses the first offset have no winner yet)
        win.fill(boxes[0][0] if full else -1)
        for k, box, src, _ in rest:
            v, mb, g, cb, wb = x[src], m[box], gt[box], code[box], win[box]
            np.greater(v, mb, out=g)
            if not full:  # the first offset inside a window wins even at -inf (as NCHW)
                none = self.none[c0:c1][box]
                np.less(wb, 0, out=none)
                np.logical_or(g, none, out=g)
            np.maximum(mb, v, out=mb)
            np.multiply(g, win.dtype.type(k), out=cb)  # k where this offset took over, else 0
            np.maximum(wb, cb, out=wb)  # (offsets come in increasing k)

    def _scatter_max(self, dy, dx, c0: int, c1: int) -> None:
        """dx[c0:c1] = each output's gradient added at its winner's input position, in output
        order (as Caffe's CPU loop, so overlapping windows add up in the same order)."""
        if self.base is None:
            (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
            c, ho, wo, n = self.out_shape
            h, w = self.h, self.w
            kind = np.int64 if c * h * w * n >= 2**31 else np.int32
            cc, hh, ww = np.ogrid[:c, :ho, :wo]
            start = ((cc * h + hh * sh - ph) * w + ww * sw - pw) * n
            self.base = (start[..., None] + np.arange(n)).astype(kind)
            # offset k = (i, j) of a window reads (i * w + j) * n values past its start
            self.table = np.array([(i * w + j) * n for i in range(kh) for j in range(kw)], kind)
            self.idx = np.empty(self.out_shape, kind)
        win, d, idx = self.win[c0:c1], dy[c0:c1], self.idx[c0:c1]
        np.take(self.table, win, out=idx, mode="clip")
        np.add(idx, self.base[c0:c1], out=idx)
        flat = dx.reshape(-1)
        dx[c0:c1].fill(0)
        np.add.at(flat, idx.reshape(-1), d.reshape(-1))

    @staticmethod
    def _start(boxes, out, x, fill):
        """Begin a reduction over the offsets: ``out`` = the first offset's view when that
        covers every output, else ``fill``; returns the offsets still to fold in."""
        boxes = list(boxes)
        _, _, src, full = boxes[0]
        if full:
            np.copyto(out, x[src])
            return boxes[1:]
        out.fill(fill)
        return boxes

    def _max_2x2(self, x, y, track: bool, c0: int, c1: int) -> None:
        """2x2 windows tiling the input (LeNet): the maximum as a tournament of pairs, whose
        comparisons also give the first maximum (a later value wins only when greater)."""
        if self.pair_tmp is None:
            self.pair_tmp = np.empty((2,) + self.out_shape, self.dtype)
            self.pair_win = np.empty((3,) + self.out_shape, bool)
        v = [x[src] for _, _, src, _ in self._boxes(c0, c1)]  # (0,0) (0,1) (1,0) (1,1)
        top, bottom = self.pair_tmp[0, c0:c1], self.pair_tmp[1, c0:c1]
        np.maximum(v[0], v[1], out=top)
        np.maximum(v[2], v[3], out=bottom)
        np.maximum(top, bottom, out=y[c0:c1])  # (the masks come from the pairs, not y)
        if not track:
            return
        right, lower, down = (w[c0:c1] for w in self.pair_win)
        np.greater(v[1], v[0], out=right)  # (0,1) beats (0,0)
        np.greater(v[3], v[2], out=lower)  # (1,1) beats (1,0)
        np.greater(bottom, top, out=down)  # the second row beats the first
        sel = [self.masks[k, c0:c1] for k in range(4)]
        np.logical_or(right, down, out=sel[0])
        np.logical_not(sel[0], out=sel[0])  # neither
        np.greater(right, down, out=sel[1])  # right and not down
        np.greater(down, lower, out=sel[2])  # down and not lower
        np.logical_and(down, lower, out=sel[3])

    def backward(self, dy, dx) -> None:
        """dx (C, H, W, N) from dy (C, H_out, W_out, N) (MAX after a tracked forward)."""
        direct = self.direct

        if self.method == "MAX" and not self.pairs:
            target = dx if dx.flags.c_contiguous else np.empty(dx.shape, dx.dtype)
            self._parallel(lambda c0, c1: self._scatter_max(dy, target, c0, c1), dx.size * 2)
            if target is not dx:
                np.copyto(dx, target)
            return

        def run(c0, c1):
            if not direct:
                dx[c0:c1].fill(0)
            t, d = self.tmp[c0:c1], dy[c0:c1]
            if self.method == "AVE":
                np.multiply(d, self.inv, out=t)
            for k, box, src, _ in self._boxes(c0, c1):
                target = dx[src]
                if self.method == "AVE":
                    part = t[box]
                    if direct:
                        np.copyto(target, part)
                    else:
                        target += part
                else:  # MAX over 2x2 tiles
                    np.multiply(d[box], self.masks[k, c0:c1][box], out=target)

        self._parallel(run, dx.size * 2)

    def _parallel(self, run, work: int) -> None:
        """``run(c0, c1)`` over the channels in blocks of at most about CHUNK_BYTES of input,
        as many blocks for each thread and as even as the channel count allows: every pass
        over a block then stays in cache."""
        channel = self.h * self.w * self.n * self.dtype.itemsize
        count = -(-self.c * channel // CHUNK_BYTES)
        count = min(self.c, -(-count // NUM_THREADS) * NUM_THREADS)
        blocks = even_ranges(self.c, count)

        def part(i, j):
            for c0, c1 in blocks[i:j]:
                run(c0, c1)

        parallel(part, len(blocks), work)


# Batch size from which strided windows pay off in the working layout: a window position then
# holds N contiguous values (stride 1 gives runs of W_out * N at any batch size). GoogLeNet at
# batch 8 ran its 7x7/2 convolution and 3x3/2 pooling 1.1-1.7x slower in (C, H, W, N).
MIN_STRIDED_BATCH = int(os.environ.get("MINICAFFE_CHWN_MIN_BATCH", 16))


def strided_ok(stride, batch: int) -> bool:
    """Whether a layer with this stride runs well in the working layout at this batch size."""
    return all(s == 1 for s in stride) or batch >= MIN_STRIDED_BATCH


def conv_supported(xp, geom: ConvGeometry, force_nd: bool) -> bool:
    return xp is np and len(geom.kernel) == 2 and not force_nd
