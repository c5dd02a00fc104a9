"""ROIPooling: max pooling of regions of interest (py-faster-rcnn Caffe fork)."""

from __future__ import annotations

import numpy as np

from minicaffe.backend import to_numpy
from minicaffe.errors import DataError, LayerError, ShapeError
from minicaffe.layer import Layer
from minicaffe.registry import register_layer


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """C's round(): halves go away from zero (NumPy's round goes to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


@register_layer("ROIPooling")
class ROIPoolingLayer(Layer):
    """Max-pool every ROI of a feature map into a fixed ``pooled_h x pooled_w`` grid.

    Params (``roi_pooling_param``, py-faster-rcnn fork field 8266711): ``pooled_h``,
    ``pooled_w`` (both required, > 0; default 0), ``spatial_scale`` (float, default 1).
    Bottoms: features X (N, C, H, W); rois (R, 5) (or any shape of R*5 values, R = shape(0)),
    each row (batch index b, x1, y1, x2, y2) in input-image coordinates.
    Top: (R, C, pooled_h, pooled_w).

    Per ROI: x1' = round(x1 * s) etc. (C rounding, halves away from zero), ROI size
    h = max(y2' - y1' + 1, 1), w likewise, bin size bh = h / pooled_h, bw = w / pooled_w. Bin
    (i, j) covers rows [y1' + floor(i bh), y1' + ceil((i+1) bh)) and columns
    [x1' + floor(j bw), x1' + ceil((j+1) bw)), clipped to the map. Output = max of X[b, c] over
    the bin (first maximum in row-major order is recorded); an empty bin gives 0.

    Backward: each output gradient is added to the input position that won the max (sums over
    overlapping ROIs); no gradient to the rois (their diff is zeroed when asked for).

    Bin edges are computed on the host for all ROIs at once; the pooling itself runs as one
    Python iteration per ROI with all channels and bins of that ROI vectorised (two masked
    max-reductions over the ROI's crop). Backward is one scatter-add over all ROIs.
    """

    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 1

    def setup(self, bottom, top):
        p = self.layer_param.roi_pooling_param
        self.pooled_h = int(p.pooled_h)
        self.pooled_w = int(p.pooled_w)
        if self.pooled_h <= 0 or self.pooled_w <= 0:
            raise self.error(
                "roi_pooling_param.pooled_h and pooled_w must be > 0; received "
                f"pooled_h={self.pooled_h}, pooled_w={self.pooled_w}",
                LayerError,
            )
        self.spatial_scale = float(p.spatial_scale)

    def reshape(self, bottom, top):
        n, c, h, w = self.require_4d(bottom[0])
        rois = bottom[1].shape
        r = rois[0] if rois else 0
        if not rois or bottom[1].count != r * 5:
            raise self.error(
                f"rois (bottom 1) must hold 5 values (batch index, x1, y1, x2, y2) per ROI, "
                f"shape (R, 5); received shape {rois}",
                ShapeError,
            )
        top[0].reshape((r, c, self.pooled_h, self.pooled_w))

    def _bins(self, rois: np.ndarray, dt, n: int, height: int, width: int):
        """Host arrays: batch index (R,), row bins start/end (R, PH), column bins (R, PW)."""
        ph, pw = self.pooled_h, self.pooled_w
        b = rois[:, 0].astype(np.int64)  # C++ truncation toward zero
        bad = (b < 0) | (b >= n)
        if bad.any():
            raise self.error(
                f"ROI batch index {int(b[bad][0])} is out of range for {n} image(s)", DataError
            )
        coords = _round_half_away(rois[:, 1:5].astype(dt) * dt.type(self.spatial_scale))
        x1, y1, x2, y2 = (coords[:, k].astype(np.int64) for k in range(4))
        roi_h = np.maximum(y2 - y1 + 1, 1).astype(dt)
        roi_w = np.maximum(x2 - x1 + 1, 1).astype(dt)
        bh = roi_h / dt.type(ph)
        bw = roi_w / dt.type(pw)
        i = np.arange(ph, dtype=dt)
        j = np.arange(pw, dtype=dt)
        hs = np.floor(i[None, :] * bh[:, None]).astype(np.int64) + y1[:, None]
        he = np.ceil((i[None, :] + 1) * bh[:, None]).astype(np.int64) + y1[:, None]
        ws = np.floor(j[None, :] * bw[:, None]).astype(np.int64) + x1[:, None]
        we = np.ceil((j[None, :] + 1) * bw[:, None]).astype(np.int64) + x1[:, None]
        return (
            b,
            np.clip(hs, 0, height),
            np.clip(he, 0, height),
            np.clip(ws, 0, width),
            np.clip(we, 0, width),
        )

    def forward(self, bottom, top):
        xp = self.xp
        x = bottom[0].data
        n, c, height, width = x.shape
        r = bottom[1].shape[0]
        ph, pw = self.pooled_h, self.pooled_w
        rois = np.asarray(to_numpy(bottom[1].data), dtype=np.float64).reshape(r, 5)
        dt = np.dtype(self.dtype) if self.dtype.kind == "f" else np.dtype(np.float32)
        b, hs, he, ws, we = self._bins(rois.astype(dt), dt, n, height, width)
        out = top[0].data
        out.fill(0)
        argmax = xp.full((r, c, ph, pw), -1, dtype=np.int64)
        neg = xp.asarray(-np.inf, dtype=x.dtype)
        for k in range(r):
            y0, y1 = int(hs[k].min()), int(he[k].max())
            x0, x1 = int(ws[k].min()), int(we[k].max())
            if y1 <= y0 or x1 <= x0:
                continue  # every bin empty
            crop = x[b[k], :, y0:y1, x0:x1]  # (C, hh, ww)
            cols = np.arange(x0, x1)
            rows = np.arange(y0, y1)
            mw = xp.asarray((cols[None, :] >= ws[k][:, None]) & (cols[None, :] < we[k][:, None]))
            mh = xp.asarray((rows[None, :] >= hs[k][:, None]) & (rows[None, :] < he[k][:, None]))
            # max over each column bin: (C, hh, PW)
            a = xp.where(mw[None, None], crop[:, :, None, :], neg)
            aw = a.argmax(axis=-1)
            vw = xp.take_along_axis(a, aw[..., None], axis=-1)[..., 0]
            # then over each row bin: (C, PH, PW)
            bmat = xp.where(mh[None, :, None, :], vw.transpose(0, 2, 1)[:, None], neg)
            ah = bmat.argmax(axis=-1)
            val = xp.take_along_axis(bmat, ah[..., None], axis=-1)[..., 0]
            col = xp.take_along_axis(aw, ah, axis=1)  # aw[c, ah[c, i, j], j]
            idx = (ah + y0) * width + (col + x0)
            empty = xp.asarray((he[k] <= hs[k])[:, None] | (we[k] <= ws[k])[None, :])
            out[k] = xp.where(empty[None], 0, val)
            argmax[k] = xp.where(empty[None], -1, idx)
        self._argmax = argmax
        self._batch = xp.asarray(b)

    def backward(self, top, propagate_down, bottom):
        xp = self.xp
        if len(propagate_down) > 1 and propagate_down[1]:
            bottom[1].diff.fill(0)
        if not propagate_down[0]:
            return
        n, c, height, width = bottom[0].shape
        r = self._argmax.shape[0]
        hw = height * width
        valid = self._argmax >= 0
        base = (self._batch[:, None] * c + xp.arange(c)[None, :]) * hw  # (R, C)
        flat = xp.where(valid, self._argmax + base[:, :, None, None], 0).reshape(-1)
        g = xp.where(valid, top[0].diff, 0).reshape(-1)
        total = n * c * hw
        if r == 0:
            bottom[0].diff.fill(0)
            return
        acc = xp.bincount(flat, weights=g, minlength=total)
        bottom[0].diff.reshape(-1)[...] = acc[:total]
