"""Batch-innermost (C, H, W, N) kernels for 2-D convolution and pooling on NumPy.

Chains of Convolution, Pooling, ReLU and InnerProduct layers pass their blobs in this order
(see ``Blob.write_chwn``), so no layer pays a transpose at its ends:

* Convolution: the columns of a tile of output rows are ``kh * kw`` strided copies whose
  contiguous runs are ``W_out * N`` values long, and the GEMM ``W (O, K) @ col (K, rows * W_out
  * N)`` writes the tile's rows of the (O, H_out, W_out, N) top in place. The weight gradient is
  ``dy @ col^T`` per tile (the forward's columns are kept and reused when the whole batch is one
  tile), the data gradient ``W^T @ dy`` added back at the kernel offsets.
* Pooling: every kernel offset is one strided view of the (padded) input with N contiguous
  values per window position, so MAX/AVE are ``kh * kw`` elementwise passes over the output.
* InnerProduct reads a (C, H, W, N) bottom as the (C*H*W, N) matrix it already is.

Copies and elementwise passes are split by channel between NUM_THREADS threads (NumPy releases
the GIL); GEMMs use OpenBLAS's own threads. Every buffer is allocated once per shape.
"""

from __future__ import annotations

import os

import numpy as np

from minicaffe.functional import WHOLE_ELEMS, ConvGeometry, parallel

# Column-buffer budget (elements) of one tile when the whole batch's columns do not fit
# WHOLE_ELEMS (a few MB: the columns stay in cache between the copy and the GEMM).
TILE_ELEMS = int(os.environ.get("MINICAFFE_CHWN_TILE", 1 << 20))
WHOLE = int(os.environ.get("MINICAFFE_CHWN_WHOLE", WHOLE_ELEMS))


def _axis_slice(start: int, count: int, step: int) -> slice:
    return slice(start, start + step * (count - 1) + 1, step)


class ChwnConvPlan:
    """2-D convolution (any stride, pad, dilation, group) of a (C, H, W, N) input into a
    (O, H_out, W_out, N) output, on NumPy."""

    def __init__(self, dtype, num: int, channels: int, num_output: int, geom: ConvGeometry,
                 group: int):
        self.dtype = np.dtype(dtype)
        self.n, self.c, self.o, self.geom, self.g = num, channels, num_output, geom, group
        (self.h, self.w), (self.ho, self.wo) = geom.in_size, geom.out_size
        self.kk = geom.kernel_count
        self.k_total = channels * self.kk
        self.kg, self.og, self.cg = self.k_total // group, num_output // group, channels // group
        row = self.wo * num
        whole = self.k_total * self.ho * row
        if whole <= WHOLE:
            rows = self.ho
        else:
            rows = max(1, min(self.ho, TILE_ELEMS // max(1, self.k_total * row)))
        self.rows = rows
        self.tiles = [(h0, min(self.ho, h0 + rows)) for h0 in range(0, self.ho, rows)]
        self.col = np.empty(self.k_total * rows * row, self.dtype)
        self.padded = any(geom.pad)
        hp, wp = geom.padded_size
        self.xb = None  # padded (or transposed) copy of the input, made on first need
        self._loaded = False
        self.dxb = np.zeros((channels, hp, wp, num), self.dtype) if self.padded else None
        self.dwt = np.empty((group, self.kg, self.og), self.dtype)
        self._cols_of = None  # the source array whose whole-batch columns ``col`` holds

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

    def _col6(self, h0, h1):
        n = self.k_total * (h1 - h0) * self.wo * self.n
        kh, kw = self.geom.kernel
        return self.col[:n].reshape(self.c, kh, kw, h1 - h0, self.wo, self.n)

    def _offset_views(self, a, h0, h1):
        """(i, j, view of ``a`` read by kernel offset (i, j) for output rows h0:h1)."""
        (kh, kw), (sh, sw), (dh, dw) = self.geom.kernel, self.geom.stride, self.geom.dilation
        for i in range(kh):
            rows = _axis_slice(h0 * sh + i * dh, h1 - h0, sh)
            for j in range(kw):
                yield i, j, a[:, rows, _axis_slice(j * dw, self.wo, sw), :]

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

    def _tile_rows(self, a, h0, h1):
        """Rows h0:h1 of a (O, H_out, W_out, N) array as (G, O/G, positions) (a view)."""
        return a[:, h0:h1].reshape(self.g, self.og, -1)

    # --------------------------------------------------------------------------- passes
    def forward(self, src, w2, y, bias=None) -> None:
        """y (O, H_out, W_out, N) = conv(src) (+ bias); ``src`` from :meth:`source`."""
        w3 = w2.reshape(self.g, self.og, self.kg)
        for h0, h1 in self.tiles:
            self._im2col(src, h0, h1)
            col, out = self._tile_col(h0, h1), self._tile_rows(y, h0, h1)
            for g in range(self.g):
                np.matmul(w3[g], col[g], out=out[g])
        self._cols_of = _key(src) if len(self.tiles) == 1 else None
        if bias is not None:
            y3 = y.reshape(self.o, -1)

            def run(o0, o1):
                y3[o0:o1] += bias[o0:o1, None]

            parallel(run, self.o, y.size)

    def backward(self, w2, dy, src, dw=None, db=None, dx=None) -> None:
        """dw += dL/dW, db += dL/db, dx = dL/dx ((C, H, W, N)); dy (O, H_out, W_out, N); ``src``
        is what the forward read (its columns are reused when they are still held)."""
        w3 = w2.reshape(self.g, self.og, self.kg)
        if db is not None:
            db += dy.reshape(self.o, -1).sum(axis=1)
        if dw is None and dx is None:
            return
        reuse = self._cols_of is not None and self._cols_of == _key(src)
        self._cols_of = None
        dw3 = None if dw is None else dw.reshape(self.g, self.og, self.kg)
        target = None
        if dx is not None:
            target = self.dxb if self.padded else dx
            target.fill(0)
        for h0, h1 in self.tiles:
            col, dyt = self._tile_col(h0, h1), self._tile_rows(dy, h0, h1)
            if dw3 is not None:
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
            ph, pw = self.geom.pad
            inner = target[:, ph : ph + self.h, pw : pw + self.w, :]

            def run(c0, c1):
                dx[c0:c1] = inner[c0:c1]

            parallel(run, self.c, dx.size)


class ChwnPoolPlan:
    """MAX or AVE pooling of a (C, H, W, N) input into (C, H_out, W_out, N) with Caffe's window
    rules (windows start at o * stride - pad; MAX reads the window clipped to the image and the
    first maximum in row-major order takes the gradient; AVE sums the clipped window and
    divides by the window clipped to [-pad, size + pad))."""

    def __init__(self, dtype, shape_nchw, kernel, stride, pad, out, method: str):
        self.dtype = np.dtype(dtype)
        n, c, h, w = shape_nchw
        self.n, self.c, self.h, self.w = n, c, h, w
        self.kernel, self.stride, self.pad, self.out = kernel, stride, pad, out
        self.method = method
        (kh, kw), (sh, sw), (ph, pw), (ho, wo) = kernel, stride, pad, out
        # extent every window reaches, from -pad
        eh, ew = max(h + ph, (ho - 1) * sh + kh), max(w + pw, (wo - 1) * sw + kw)
        self.need_pad = eh > h or ew > w  # padding, or a last window reaching past the edge
        self.ext = (eh, ew)
        # windows tile the input exactly: each offset writes its own positions of dx
        self.direct = (sh, sw) == (kh, kw) and not self.need_pad and (ho * sh, wo * sw) == (h, w)
        self.xpad = None
        self.dxpad = None
        self.y = np.empty((c, ho, wo, n), self.dtype)  # MAX: the maxima (a later in-place
        self.masks = None  # layer may change the top); MAX: first-argmax masks per offset
        self.inv = None
        if method == "AVE":
            def sizes(size, k, s, p, o):
                start = np.arange(o) * s - p
                return np.minimum(start + k, size + p) - start

            div = np.outer(sizes(h, kh, sh, ph, ho), sizes(w, kw, sw, pw, wo))
            self.inv = (1.0 / div).astype(self.dtype)[None, :, :, None]
            self.inv_scalar = float(self.inv.flat[0]) if np.all(div == div.flat[0]) else None
        self.tmp = np.empty(self.y.shape, self.dtype)

    def _source(self, x, fill):
        if not self.need_pad:
            return x
        if self.xpad is None:
            self.xpad = np.full((self.c,) + self.ext + (self.n,), fill, self.dtype)
        ph, pw = self.pad
        self.xpad[:, ph : ph + self.h, pw : pw + self.w, :] = x
        return self.xpad

    def _views(self, a):
        (kh, kw), (sh, sw), (ho, wo) = self.kernel, self.stride, self.out
        for i in range(kh):
            for j in range(kw):
                yield a[:, _axis_slice(i, ho, sh), _axis_slice(j, wo, sw), :]

    def forward(self, x, y, track: bool) -> None:
        """y (C, H_out, W_out, N) from x (C, H, W, N); ``track`` (MAX): record the argmax."""
        if self.method == "MAX":
            src = self._source(x, -np.inf)
            views = list(self._views(src))
            if track and self.masks is None:
                self.masks = np.empty((len(views),) + self.y.shape, bool)
                self.rem = np.empty(self.y.shape, bool)

            def run(c0, c1):
                m = self.y[c0:c1]
                np.copyto(m, views[0][c0:c1])
                for v in views[1:]:
                    np.maximum(m, v[c0:c1], out=m)
                y[c0:c1] = m
                if track:  # first maximum: equal to the max and no earlier offset was
                    rem = self.rem[c0:c1]
                    rem.fill(True)
                    for k, v in enumerate(views):
                        sel = self.masks[k, c0:c1]
                        np.equal(v[c0:c1], m, out=sel)
                        np.logical_and(sel, rem, out=sel)
                        np.logical_xor(rem, sel, out=rem)

            parallel(run, self.c, x.size * 2)
        else:
            src = self._source(x, 0)
            views = list(self._views(src))

            def run(c0, c1):
                out = y[c0:c1]
                np.add(views[0][c0:c1], views[1][c0:c1] if len(views) > 1 else 0, out=out)
                for v in views[2:]:
                    out += v[c0:c1]
                out *= self.inv if self.inv_scalar is None else self.inv_scalar

            parallel(run, self.c, x.size)

    def backward(self, dy, dx) -> None:
        """dx (C, H, W, N) from dy (C, H_out, W_out, N) (MAX after a tracked forward)."""
        direct = self.direct
        target = dx
        if not direct:
            if self.dxpad is None:
                self.dxpad = np.zeros((self.c,) + self.ext + (self.n,), self.dtype)
            target = self.dxpad
        views = list(self._views(target))
        ph, pw = self.pad

        def run(c0, c1):
            if not direct:
                target[c0:c1].fill(0)
            d, t = dy[c0:c1], self.tmp[c0:c1]
            if self.method == "AVE":
                np.multiply(d, self.inv if self.inv_scalar is None else self.inv_scalar, out=t)
                for v in views:
                    if direct:
                        v[c0:c1] = t
                    else:
                        v[c0:c1] += t
            else:
                for k, v in enumerate(views):
                    if direct:
                        np.multiply(d, self.masks[k, c0:c1], out=v[c0:c1])
                    else:
                        np.multiply(d, self.masks[k, c0:c1], out=t)
                        v[c0:c1] += t
            if not direct:
                dx[c0:c1] = target[c0:c1, ph : ph + self.h, pw : pw + self.w, :]

        parallel(run, self.c, dx.size * 2)


def _key(a):
    """Address, shape and strides of an array: which input a plan's columns were made from."""
    return a.ctypes.data, a.shape, a.strides


def conv_supported(xp, geom: ConvGeometry, force_nd: bool) -> bool:
    return xp is np and len(geom.kernel) == 2 and not force_nd
