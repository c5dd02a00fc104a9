"""InnerProduct (fully connected): y = x W^T + b over the axes from ``axis`` on."""

from __future__ import annotations

import numpy as np

from minicaffe import blas
from minicaffe.errors import ShapeError
from minicaffe.layer import Layer
from minicaffe.registry import register_layer


@register_layer("InnerProduct")
class InnerProductLayer(Layer):
    """Fully connected layer.

    Params (inner_product_param): num_output (required), bias_term = true, weight_filler,
    bias_filler (unset = constant 0), axis = 1, transpose = false.
    Bottom: x with M = prod(shape[:axis]) rows of K = prod(shape[axis:]) values.
    Top: shape[:axis] + (num_output,).
    Blobs: W (num_output, K), or (K, num_output) when transpose; b (num_output,) if bias_term.
    y = x W^T + b; dW += dy^T x; db += sum_rows dy; dx = dy W.
    """

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom, top):
        p = self.layer_param.inner_product_param
        if not p.HasField("num_output") or p.num_output <= 0:
            raise self.error("inner_product_param.num_output must be set and > 0")
        self.n_out = int(p.num_output)
        self.bias_term = p.bias_term
        self.transpose = p.transpose
        self.axis = bottom[0].canonical_axis(p.axis)
        self.k = bottom[0].count_range(self.axis)
        w_shape = (self.k, self.n_out) if self.transpose else (self.n_out, self.k)
        self.init_param(0, w_shape, p.weight_filler if p.HasField("weight_filler") else None)
        if self.bias_term:
            self.init_param(1, (self.n_out,), p.bias_filler if p.HasField("bias_filler") else None)
        elif len(self.blobs) > 1:
            raise self.error(f"bias_term is false but {len(self.blobs)} parameter blobs were "
                             "given")

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        self.axis = bottom[0].canonical_axis(self.layer_param.inner_product_param.axis)
        k = bottom[0].count_range(self.axis)
        if k != self.k:
            raise self.error(f"input has {k} values per row (shape {shape}, axis {self.axis}) "
                             f"but the weights expect {self.k}", ShapeError)
        top[0].reshape(shape[: self.axis] + (self.n_out,))

    def _weights_nk(self):
        w = self.blobs[0].data
        return w.T if self.transpose else w  # (n_out, K) view

    def takes_chwn(self, bottom_index: int) -> bool:
        # a (C, H, W, N) bottom is the (K, N) matrix x^T already (K in Caffe's C, H, W order)
        return self.xp is np and self.axis == 1

    def _x(self, bottom):
        b = bottom[0]
        if self.axis == 1 and b.is_chwn():
            return b.chwn().reshape(self.k, -1).T
        return b.data.reshape(-1, self.k)

    # Few rows and a large weight (CaffeNet fc6 at batch 10), or a bottom held as (C, H, W, N)
    # (LeNet's ip1): OpenBLAS runs W x^T (then a small transpose) faster than x W^T, measured
    # 1.3-1.6x and 1.45x.
    FEW_ROWS, LARGE_WEIGHT = 64, 1 << 20

    def forward(self, bottom, top):
        xp = self.xp
        x = self._x(bottom)
        y = top[0].data.reshape(-1, self.n_out)
        w = self._weights_nk()
        held = self.axis == 1 and bottom[0].is_chwn()  # x^T is the contiguous (K, N) input
        if xp is np and x.shape[0] <= self.FEW_ROWS and (held or w.size >= self.LARGE_WEIGHT):
            yt = getattr(self, "_yt", None)
            if yt is None or yt.shape != (self.n_out, x.shape[0]):
                yt = self._yt = np.empty((self.n_out, x.shape[0]), self.dtype)
            np.matmul(w, x.T, out=yt)
            y[...] = yt.T
        else:
            xp.matmul(x, w.T, out=y)
        if self.bias_term:
            y += self.blobs[1].data

    # Scratch for one block of dW rows: the weight gradient is accumulated block by block, so a
    # step allocates no weight-sized temporary (fc6 of CaffeNet would need 151 MB each step).
    SCRATCH_ELEMS = 1 << 20

    def _accumulate_weight_diff(self, x, dy) -> None:
        """W.diff += dy^T x (or x^T dy when transpose), in row blocks through one scratch."""
        xp = self.xp
        wd = self.blobs[0].diff  # (n_out, K), or (K, n_out) when transpose
        a, b = (x, dy) if self.transpose else (dy, x)  # wd = a^T b
        if xp is np and blas.available(wd.dtype) and wd.flags.c_contiguous:
            blas.gemm(a.T, b, wd, beta=1.0)  # accumulates in the GEMM: no scratch, no add
            return
        rows_total, cols = wd.shape
        rows = max(1, min(rows_total, self.SCRATCH_ELEMS // max(1, cols)))
        scratch = getattr(self, "_dw_scratch", None)
        if scratch is None or scratch.size < rows * cols or scratch.dtype != wd.dtype:
            scratch = self._dw_scratch = xp.empty(rows * cols, wd.dtype)
        for r0 in range(0, rows_total, rows):
            r1 = min(rows_total, r0 + rows)
            block = scratch[: (r1 - r0) * cols].reshape(r1 - r0, cols)
            xp.matmul(a[:, r0:r1].T, b, out=block)
            wd[r0:r1] += block

    def backward(self, top, propagate_down, bottom):
        xp = self.xp
        dy = top[0].diff.reshape(-1, self.n_out)
        x = self._x(bottom)
        if self.param_propagate_down[0]:
            self._accumulate_weight_diff(x, dy)
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=0)
        if propagate_down[0]:
            b = bottom[0]
            if self.axis == 1 and b.chwn_ok and b.is_chwn():
                dxt = b.write_chwn(diff=True).reshape(self.k, -1)  # dx^T = W^T dy^T
                xp.matmul(self._weights_nk().T, dy.T, out=dxt)
            else:
                xp.matmul(dy, self._weights_nk(), out=b.diff.reshape(-1, self.k))
