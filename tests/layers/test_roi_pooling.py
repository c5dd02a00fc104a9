"""ROIPooling (py-faster-rcnn fork): forward vs an explicit loop, routed gradients, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minicaffe.backend import to_numpy
from minicaffe.errors import DataError, LayerError, ShapeError
from tests.helpers import check_gradient, make_layer


def c_round(v: float) -> int:
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def reference(x, rois, ph, pw, scale):
    """Element-by-element loops, written straight from the fork's rules."""
    n, c, h, w = x.shape
    out = np.zeros((len(rois), c, ph, pw))
    arg = -np.ones((len(rois), c, ph, pw), dtype=np.int64)
    for r, roi in enumerate(rois):
        b = int(roi[0])
        x1, y1, x2, y2 = (c_round(v * scale) for v in roi[1:])
        rh, rw = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
        bh, bw = rh / ph, rw / pw
        for ch in range(c):
            for i in range(ph):
                for j in range(pw):
                    hs = min(max(math.floor(i * bh) + y1, 0), h)
                    he = min(max(math.ceil((i + 1) * bh) + y1, 0), h)
                    ws = min(max(math.floor(j * bw) + x1, 0), w)
                    we = min(max(math.ceil((j + 1) * bw) + x1, 0), w)
                    best, where = -np.inf, -1
                    for yy in range(hs, he):
                        for xx in range(ws, we):
                            if x[b, ch, yy, xx] > best:
                                best, where = x[b, ch, yy, xx], yy * w + xx
                    if where >= 0:
                        out[r, ch, i, j], arg[r, ch, i, j] = best, where
    return out, arg


ROIS = np.array(
    [
        [0, 0, 0, 15, 11],  # whole map at scale 0.5
        [1, 2.9, 3.2, 9.6, 7.4],  # fractional coordinates, rounding
        [0, 5, 5, 5, 5],  # one-pixel ROI: every bin is that pixel
        [1, -6, -4, 30, 40],  # sticks out of the map: clipped
        [0, 3, 1, 1, 3],  # x2 < x1: size clamps to 1
        [1, 40, 40, 50, 50],  # entirely outside: every bin empty
        [0, 1, 1, 7, 9],  # overlaps ROI 0 (gradients accumulate)
    ]
)


def layer_for(x, rois, ph=3, pw=2, scale=0.5, xp=np, dtype=np.float64):
    text = (
        f'type: "ROIPooling" roi_pooling_param {{ pooled_h: {ph} pooled_w: {pw} '
        f"spatial_scale: {scale} }}"
    )
    return make_layer(text, [x, rois], xp=xp, dtype=dtype)


def test_forward_matches_loop_reference(xp):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 8))
    layer, bottom, top = layer_for(x, ROIS, xp=xp)
    layer.forward(bottom, top)
    out, arg = reference(x, ROIS, 3, 2, 0.5)
    assert top[0].shape == (len(ROIS), 3, 3, 2)
    np.testing.assert_array_equal(to_numpy(top[0].data), out)
    np.testing.assert_array_equal(to_numpy(layer._argmax), arg)
    assert (arg[5] == -1).all() and (out[5] == 0).all()  # outside ROI -> zeros
    assert (arg[2] == 3 * 8 + 3).all()  # one pixel: every bin covers it
    assert (arg[3, :, 2] == -1).all() and (arg[3, :, :2] >= 0).all()  # clipped: last row empty


def test_forward_float32_and_ties_take_first():
    x = np.zeros((1, 1, 4, 4), np.float32)  # all ties: the first row-major position wins
    rois = np.array([[0, 0, 0, 3, 3], [0, 1, 1, 2, 3]], np.float32)
    layer, bottom, top = layer_for(x, rois, ph=2, pw=2, scale=1.0, dtype=np.float32)
    layer.forward(bottom, top)
    _, arg = reference(x.astype(np.float64), rois, 2, 2, 1.0)
    np.testing.assert_array_equal(to_numpy(layer._argmax), arg)
    assert arg[0, 0].tolist() == [[0, 2], [8, 10]]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 7, 9)).astype(np.float32)
    rois = np.array([[1, 0, 0, 17, 13], [0, 3, 2, 11, 10]], np.float32)
    layer, bottom, top = layer_for(x, rois, ph=4, pw=3, scale=0.5, dtype=np.float32)
    layer.forward(bottom, top)
    out, _ = reference(x.astype(np.float64), rois, 4, 3, 0.5)
    np.testing.assert_allclose(to_numpy(top[0].data), out, rtol=0)


def test_backward_routes_to_argmax_and_accumulates(xp):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 6, 8))
    layer, bottom, top = layer_for(x, ROIS, xp=xp)
    layer.forward(bottom, top)
    g = rng.standard_normal(top[0].shape)
    top[0].diff[...] = xp.asarray(g)
    bottom[0].diff.fill(7)  # must be overwritten, not added to
    layer.backward(top, [True, False], bottom)
    _, arg = reference(x, ROIS, 3, 2, 0.5)
    want = np.zeros(x.shape)
    for r, roi in enumerate(ROIS):
        for ch in range(3):
            for i in range(3):
                for j in range(2):
                    if arg[r, ch, i, j] >= 0:
                        yy, xx = divmod(arg[r, ch, i, j], 8)
                        want[int(roi[0]), ch, yy, xx] += g[r, ch, i, j]
    np.testing.assert_allclose(to_numpy(bottom[0].diff), want, rtol=1e-12, atol=1e-12)


def test_gradient_finite_differences():
    rng = np.random.default_rng(2)
    x = rng.permutation(2 * 2 * 5 * 6).reshape(2, 2, 5, 6) * 0.01  # distinct: no ties
    rois = np.array([[0, 0, 0, 9, 7], [1, 2, 2, 11, 9], [0, 4, 2, 10, 8]])
    layer, bottom, top = layer_for(x, rois, ph=2, pw=3, scale=0.5)
    check_gradient(layer, bottom, top, check_bottoms=[0], eps=1e-4)


def test_rois_take_no_gradient():
    x = np.arange(2 * 1 * 4 * 4, dtype=float).reshape(2, 1, 4, 4)
    rois = np.array([[1, 0, 0, 3, 3]])
    layer, bottom, top = layer_for(x, rois, ph=1, pw=1, scale=1.0)
    layer.forward(bottom, top)
    assert to_numpy(top[0].data).ravel().tolist() == [31.0]
    top[0].diff.fill(1)
    bottom[1].diff.fill(5)
    layer.backward(top, [True, True], bottom)
    assert not to_numpy(bottom[1].diff).any()
    assert to_numpy(bottom[0].diff).sum() == 1 and to_numpy(bottom[0].diff)[1, 0, 3, 3] == 1


def test_errors():
    x = np.zeros((1, 2, 4, 4))
    with pytest.raises(LayerError, match="pooled_h and pooled_w must be > 0"):
        make_layer('type: "ROIPooling" roi_pooling_param { pooled_w: 2 }', [x, np.zeros((1, 5))])
    with pytest.raises(ShapeError, match=r"5 values .* received shape \(2, 4\)"):
        layer_for(x, np.zeros((2, 4)))
    with pytest.raises(ShapeError, match="4 axes"):
        layer_for(np.zeros((2, 4)), np.zeros((1, 5)))
    with pytest.raises(ShapeError, match="exactly 2 bottom"):
        make_layer('type: "ROIPooling" roi_pooling_param { pooled_h: 1 pooled_w: 1 }', [x])
    layer, bottom, top = layer_for(x, np.array([[1, 0, 0, 2, 2]]))
    with pytest.raises(DataError, match="batch index 1 is out of range for 1 image"):
        layer.forward(bottom, top)
