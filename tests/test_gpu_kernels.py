"""minicaffe.gpu: fused CuPy kernels, their xp twins, and the CUDA sources.

Four kinds of test:
* CPU (always run): every ``*_ref`` twin against a direct reference (literal loops written from
  Caffe's rules on tiny inputs, or hand computations of the formulas).
* compile (where ``nvcc`` is on PATH): every kernel source wrapped as CuPy would wrap it,
  type-checked by ``nvcc --ptx`` in one file; a broken body must fail the same way.
* fused parity, "host-cpp" (where a C++ compiler exists): the fused functions run with their
  kernel bodies compiled as host C++, against the twins; the same tests run on CuPy as "cupy".
* gpu (CuPy and a CUDA device): the "cupy" parity runs, ``sync_check`` catching a host round
  trip, and pinned host-to-device copies.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import types

import numpy as np
import pytest

from minicaffe import backend
from minicaffe.errors import DeviceError, ShapeError, SolverError
from minicaffe.functional import conv_out_size
from minicaffe.gpu import activations as act
from minicaffe.gpu import im2col as i2c
from minicaffe.gpu import kernels
from minicaffe.gpu import pooling as pool
from minicaffe.gpu import updates as upd
from minicaffe.gpu.transfer import HostToDevice

FLT_MAX = float(np.finfo(np.float32).max)


def _rng(seed=0):
    return np.random.default_rng(seed)


# ============================================================================ activations (CPU)


def test_relu_twins_match_caffe_formula():
    x = np.array([-2.0, -0.5, 0.0, 0.5, 3.0])
    dy = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    for slope in (0.0, 0.1):
        want_y = np.maximum(x, 0) + slope * np.minimum(x, 0)
        np.testing.assert_array_equal(act.relu_forward_ref(x, slope), want_y)
        # x == 0 takes the negative slope
        want_dx = dy * np.array([slope, slope, slope, 1.0, 1.0])
        np.testing.assert_array_equal(act.relu_backward_ref(x, dy, slope), want_dx)
    out = np.empty_like(dy)
    assert act.relu_backward_ref(x, dy, 0.0, out=out) is out


def test_sigmoid_tanh_twins():
    x = _rng().standard_normal(50) * 4
    dy = _rng(1).standard_normal(50)
    y = act.sigmoid_forward_ref(x)
    np.testing.assert_allclose(y, 1 / (1 + np.exp(-x)), rtol=1e-12)
    np.testing.assert_allclose(act.sigmoid_backward_ref(y, dy), dy * y * (1 - y), rtol=1e-12)
    t = np.tanh(x)
    np.testing.assert_allclose(act.tanh_backward_ref(t, dy), dy * (1 - t**2), rtol=1e-12)
    # sigmoid stays finite and exact at the extremes
    ext = act.sigmoid_forward_ref(np.array([-1000.0, 1000.0]))
    np.testing.assert_array_equal(ext, [0.0, 1.0])


def test_elu_twins():
    x = np.array([-3.0, -0.1, 0.0, 0.2, 2.0])
    dy = np.array([1.0, -2.0, 3.0, 0.5, 1.5])
    alpha = 0.7
    y = act.elu_forward_ref(x, alpha)
    want = np.where(x > 0, x, alpha * (np.exp(x) - 1))
    np.testing.assert_allclose(y, want, rtol=1e-14)
    want_dx = np.where(x > 0, dy, dy * alpha * np.exp(x))
    np.testing.assert_allclose(act.elu_backward_ref(x, y, dy, alpha), want_dx, rtol=1e-12)


@pytest.mark.parametrize("shared", [False, True])
def test_prelu_twins_against_loops(shared):
    rng = _rng(3)
    x = rng.standard_normal((2, 3, 2, 2))
    dy = rng.standard_normal(x.shape)
    slope = np.array([0.3]) if shared else np.array([0.1, 0.2, 0.3])
    y = act.prelu_forward_ref(x, slope)
    dx = np.empty_like(x)
    slope_diff = np.full(slope.shape, 5.0)  # parameter diffs accumulate
    got = act.prelu_backward_ref(x, dy, slope, out=dx, slope_diff=slope_diff)
    assert got is dx
    want_y = np.empty_like(x)
    want_dx = np.empty_like(x)
    want_da = np.full(slope.shape, 5.0)
    for idx in np.ndindex(*x.shape):
        c = 0 if shared else idx[1]
        a, v = slope[c], x[idx]
        want_y[idx] = v if v > 0 else a * v
        want_dx[idx] = dy[idx] if v > 0 else a * dy[idx]
        if v <= 0:
            want_da[c] += dy[idx] * v
    np.testing.assert_allclose(y, want_y, rtol=1e-14)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-14)
    np.testing.assert_allclose(slope_diff, want_da, rtol=1e-12)
    # slope gradient only
    sd = np.zeros(slope.shape)
    assert act.prelu_backward_ref(x, dy, slope, slope_diff=sd) is None
    np.testing.assert_allclose(sd, want_da - 5.0, rtol=1e-12, atol=1e-14)


def test_prelu_zero_d_shared_slope():
    # channel_shared PReLU keeps its slope in a 0-d blob
    x = np.array([[-2.0, 1.0], [3.0, -0.5]])
    dy = np.array([[1.0, 2.0], [3.0, 4.0]])
    a = np.array(0.25)
    np.testing.assert_allclose(act.prelu_forward_ref(x, a), [[-0.5, 1.0], [3.0, -0.125]])
    da = np.array(1.0)
    dx = act.prelu_backward_ref(x, dy, a, out=np.empty_like(x), slope_diff=da)
    np.testing.assert_allclose(dx, [[0.25, 2.0], [3.0, 1.0]])
    assert da.shape == () and float(da) == 1.0 + (1.0 * -2.0 + 4.0 * -0.5)


def test_prelu_rejects_mismatched_slopes():
    with pytest.raises(ShapeError, match="PReLU slopes"):
        act.prelu_forward_ref(np.zeros((2, 3, 4)), np.zeros(4))


# ============================================================================ im2col (CPU)


def _im2col_loop(x, kh, kw, ph, pw, sh, sw, dh, dw):
    n, c, h, w = x.shape
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    col = np.zeros((n, c * kh * kw, oh * ow), x.dtype)
    for b, ch, ki, kj, r, s in np.ndindex(n, c, kh, kw, oh, ow):
        hh, ww = r * sh - ph + ki * dh, s * sw - pw + kj * dw
        if 0 <= hh < h and 0 <= ww < w:
            col[b, (ch * kh + ki) * kw + kj, r * ow + s] = x[b, ch, hh, ww]
    return col


def _col2im_loop(col, shape, kh, kw, ph, pw, sh, sw, dh, dw):
    n, c, h, w = shape
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    x = np.zeros(shape, col.dtype)
    for b, ch, ki, kj, r, s in np.ndindex(n, c, kh, kw, oh, ow):
        hh, ww = r * sh - ph + ki * dh, s * sw - pw + kj * dw
        if 0 <= hh < h and 0 <= ww < w:
            x[b, ch, hh, ww] += col[b, (ch * kh + ki) * kw + kj, r * ow + s]
    return x


# (shape, kernel, pad, stride, dilation)
CONV_CASES = [
    ((2, 3, 5, 6), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((1, 2, 7, 7), (3, 2), (0, 1), (2, 3), (1, 1)),
    ((2, 2, 9, 8), (3, 3), (2, 1), (1, 2), (2, 3)),
    ((1, 1, 4, 4), (1, 1), (0, 0), (1, 1), (1, 1)),
    ((1, 2, 6, 5), (4, 3), (3, 2), (3, 2), (1, 2)),
]


@pytest.mark.parametrize("shape,k,p,s,d", CONV_CASES)
def test_im2col_col2im_twins_against_loops(shape, k, p, s, d):
    rng = _rng(4)
    x = rng.standard_normal(shape)
    col = i2c.im2col_ref(x, k, p, s, d)
    want = _im2col_loop(x, *k, *p, *s, *d)
    np.testing.assert_array_equal(col, want)
    c = rng.standard_normal(col.shape)
    back = i2c.col2im_ref(c, shape, k, p, s, d)
    np.testing.assert_allclose(back, _col2im_loop(c, shape, *k, *p, *s, *d), rtol=1e-12, atol=1e-12)
    # adjoint identity: <im2col(x), c> == <x, col2im(c)>
    np.testing.assert_allclose(np.vdot(col, c), np.vdot(x, back), rtol=1e-10)
    out = np.full(shape, 7.0)
    assert i2c.col2im_ref(c, shape, k, p, s, d, out=out) is out  # assigned, not added
    np.testing.assert_allclose(out, back, rtol=1e-12, atol=1e-12)


def test_im2col_geometry_and_errors():
    # the kernels size their output with the layers' rule (size, kernel, stride, pad, dilation)
    assert i2c.conv_out_size is conv_out_size
    assert conv_out_size(227, 11, 4, 0, 1) == 55
    assert conv_out_size(7, 3, 1, 0, 2) == 3
    with pytest.raises(ShapeError, match="4-D"):
        i2c.im2col_ref(np.zeros((3, 4, 4)), 3)
    with pytest.raises(ShapeError, match="smaller than the dilated kernel"):
        i2c.im2col_ref(np.zeros((1, 1, 3, 3)), 3, dilation=2)
    with pytest.raises(ShapeError, match="col2im"):
        i2c.col2im_ref(np.zeros((1, 9, 5)), (1, 1, 4, 4), 3, pad=1)


# ============================================================================ pooling (CPU)


def _pool_loop(x, kh, kw, sh, sw, ph, pw, oh, ow, mode):
    """Caffe's pooling loops, literally: windows, clipping, divisors, first-max argmax."""
    n, c, h, w = x.shape
    y = np.zeros((n, c, oh, ow), x.dtype)
    mask = np.full((n, c, oh, ow), -1, np.int64)
    for b, ch, r, s in np.ndindex(n, c, oh, ow):
        hs, ws = r * sh - ph, s * sw - pw
        he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
        size = (he - hs) * (we - ws)
        hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
        if mode == "max":
            best, arg = -FLT_MAX, -1
            for hh in range(hs, he):
                for ww in range(ws, we):
                    if x[b, ch, hh, ww] > best:
                        best, arg = x[b, ch, hh, ww], hh * w + ww
            y[b, ch, r, s], mask[b, ch, r, s] = best, arg
        else:
            y[b, ch, r, s] = x[b, ch, hs:he, ws:we].sum() / size
    return y, mask


def _pool_backward_loop(dy, mask, shape, kh, kw, sh, sw, ph, pw, mode):
    n, c, h, w = shape
    dx = np.zeros(shape, dy.dtype)
    for b, ch, r, s in np.ndindex(*dy.shape):
        if mode == "max":
            m = int(mask[b, ch, r, s])
            dx[b, ch, m // w, m % w] += dy[b, ch, r, s]
        else:
            hs, ws = r * sh - ph, s * sw - pw
            he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
            size = (he - hs) * (we - ws)
            dx[b, ch, max(hs, 0) : min(he, h), max(ws, 0) : min(we, w)] += dy[b, ch, r, s] / size
    return dx


# (shape, kernel, stride, pad, ceil_mode); several hit the clipped last window
POOL_CASES = [
    ((2, 2, 6, 6), (3, 3), (2, 2), (0, 0), True),  # ceil: last window overhangs
    ((1, 2, 7, 5), (3, 2), (2, 2), (1, 1), True),
    ((1, 1, 5, 5), (2, 2), (2, 2), (1, 1), True),  # (out-1)*s >= in+p: out shrinks to 3
    ((2, 1, 7, 7), (3, 3), (2, 2), (1, 1), False),  # FLOOR
    ((1, 2, 5, 4), (5, 4), (1, 1), (0, 0), True),  # global pooling
    ((1, 1, 8, 8), (3, 3), (1, 1), (2, 2), True),  # overlapping windows, pad 2
    ((1, 2, 4, 6), (2, 3), (3, 2), (1, 2), True),
]


def _pool_geometry(shape, k, s, p, ceil_mode):
    oh = pool.pooled_size(shape[2], k[0], s[0], p[0], ceil_mode)
    ow = pool.pooled_size(shape[3], k[1], s[1], p[1], ceil_mode)
    return oh, ow


@pytest.mark.parametrize("shape,k,s,p,ceil_mode", POOL_CASES)
def test_max_pool_twins_against_loops(shape, k, s, p, ceil_mode):
    rng = _rng(5)
    # small integers make ties, which must go to the first maximum in scan order
    x = rng.integers(-3, 4, size=shape).astype(np.float64)
    oh, ow = _pool_geometry(shape, k, s, p, ceil_mode)
    y, mask = pool.max_pool_forward_ref(x, k, s, p, ceil_mode=ceil_mode)
    want_y, want_mask = _pool_loop(x, *k, *s, *p, oh, ow, "max")
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(mask, want_mask)
    assert mask.dtype == np.int32
    # a float mask (Caffe's second top) holds the same indices
    fmask = np.empty(y.shape, np.float32)
    pool.max_pool_forward_ref(x, k, s, p, ceil_mode=ceil_mode, mask=fmask)
    np.testing.assert_array_equal(fmask, want_mask)
    dy = rng.standard_normal(y.shape)
    dx = pool.max_pool_backward_ref(dy, mask, shape, k, s, p)
    np.testing.assert_allclose(
        dx, _pool_backward_loop(dy, mask, shape, *k, *s, *p, "max"), rtol=1e-12, atol=1e-14
    )
    np.testing.assert_allclose(
        pool.max_pool_backward_ref(dy, fmask, shape, k, s, p), dx, rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize("shape,k,s,p,ceil_mode", POOL_CASES)
def test_ave_pool_twins_against_loops(shape, k, s, p, ceil_mode):
    rng = _rng(6)
    x = rng.standard_normal(shape)
    oh, ow = _pool_geometry(shape, k, s, p, ceil_mode)
    y = pool.ave_pool_forward_ref(x, k, s, p, ceil_mode=ceil_mode)
    want_y, _ = _pool_loop(x, *k, *s, *p, oh, ow, "ave")
    np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-14)
    dy = rng.standard_normal(y.shape)
    dx = pool.ave_pool_backward_ref(dy, shape, k, s, p)
    np.testing.assert_allclose(
        dx, _pool_backward_loop(dy, None, shape, *k, *s, *p, "ave"), rtol=1e-12, atol=1e-14
    )


def test_pooled_size_rules():
    assert pool.pooled_size(112, 3, 2, 0) == 56  # ResNet pool1 (ceil)
    assert pool.pooled_size(55, 3, 2, 0) == 27  # CaffeNet pool1
    assert pool.pooled_size(6, 3, 2, 0) == 3  # ceil((6-3)/2)+1
    assert pool.pooled_size(6, 3, 2, 0, ceil_mode=False) == 2
    assert pool.pooled_size(5, 2, 2, 1) == 3  # 4 before the padded-window clip
    assert pool.pooled_size(7, 7, 1, 0) == 1


def test_max_pool_ignores_padding_and_caffe_initial_value():
    # all-negative input with padding: padding must never win, values are real pixels
    x = -np.arange(1, 10, dtype=np.float64).reshape(1, 1, 3, 3)
    y, mask = pool.max_pool_forward_ref(x, 2, 2, 1)
    np.testing.assert_array_equal(y[0, 0], [[-1, -2], [-4, -5]])
    np.testing.assert_array_equal(mask[0, 0], [[0, 1], [3, 4]])
    # values below -FLT_MAX never beat Caffe's starting value: index stays -1
    y, mask = pool.max_pool_forward_ref(np.full((1, 1, 2, 2), -np.inf), 2, 2)
    assert y[0, 0, 0, 0] == -FLT_MAX and mask[0, 0, 0, 0] == -1


def test_pooling_errors():
    with pytest.raises(ShapeError, match="4-D"):
        pool.max_pool_forward_ref(np.zeros((2, 3, 4)), 2)
    with pytest.raises(ShapeError, match="pad < kernel"):
        pool.ave_pool_forward_ref(np.zeros((1, 1, 4, 4)), 2, 1, 2)
    with pytest.raises(ShapeError, match="out must have shape"):
        pool.ave_pool_forward_ref(np.zeros((1, 1, 4, 4)), 2, 2, out=np.zeros((1, 1, 3, 3)))


# ============================================================================ updates (CPU)


def _reg(g, w, decay, reg):
    return g + decay * (np.sign(w) if reg == "L1" else w)


def _hand_step(rule, w, g, hist, t, lr, mom, decay, reg, scale, delta=1e-8, rms=0.99, b2=0.999):
    """One parameter update written element by element from the spec's table."""
    w, hist = w.copy(), [h.copy() for h in hist]
    upd_vals = np.empty_like(w)
    for k in range(w.size):
        gi = _reg(g.flat[k] * scale, w.flat[k], decay, reg)
        if rule == "sgd":
            hist[0].flat[k] = mom * hist[0].flat[k] + lr * gi
            u = hist[0].flat[k]
        elif rule == "nesterov":
            old = hist[0].flat[k]
            hist[0].flat[k] = mom * old + lr * gi
            u = (1 + mom) * hist[0].flat[k] - mom * old
        elif rule == "adagrad":
            hist[0].flat[k] += gi * gi
            u = lr * gi / (np.sqrt(hist[0].flat[k]) + delta)
        elif rule == "rmsprop":
            hist[0].flat[k] = rms * hist[0].flat[k] + (1 - rms) * gi * gi
            u = lr * gi / (np.sqrt(hist[0].flat[k]) + delta)
        elif rule == "adadelta":
            hist[0].flat[k] = mom * hist[0].flat[k] + (1 - mom) * gi * gi
            d = gi * np.sqrt((hist[1].flat[k] + delta) / (hist[0].flat[k] + delta))
            hist[1].flat[k] = mom * hist[1].flat[k] + (1 - mom) * d * d
            u = lr * d
        else:  # adam
            hist[0].flat[k] = mom * hist[0].flat[k] + (1 - mom) * gi
            hist[1].flat[k] = b2 * hist[1].flat[k] + (1 - b2) * gi * gi
            corr = np.sqrt(1 - b2**t) / (1 - mom**t)
            u = lr * corr * hist[0].flat[k] / (np.sqrt(hist[1].flat[k]) + delta)
        upd_vals.flat[k] = u
        w.flat[k] -= u
    return w, upd_vals, hist


def _call_ref(rule, w, g, hist, t, lr, mom, decay, reg, scale):
    common = dict(lr=lr, decay=decay, regularization=reg, scale=scale)
    if rule == "sgd":
        return upd.sgd_update_ref(w, g, hist[0], momentum=mom, **common)
    if rule == "nesterov":
        return upd.nesterov_update_ref(w, g, hist[0], momentum=mom, **common)
    if rule == "adagrad":
        return upd.adagrad_update_ref(w, g, hist[0], **common)
    if rule == "rmsprop":
        return upd.rmsprop_update_ref(w, g, hist[0], **common)
    if rule == "adadelta":
        return upd.adadelta_update_ref(w, g, hist[0], hist[1], momentum=mom, **common)
    return upd.adam_update_ref(w, g, hist[0], hist[1], t=t, beta1=mom, **common)


def _call_fused(rule, w, g, hist, t, lr, mom, decay, reg, scale):
    common = dict(lr=lr, decay=decay, regularization=reg, scale=scale)
    if rule == "sgd":
        return upd.sgd_update(w, g, hist[0], momentum=mom, **common)
    if rule == "nesterov":
        return upd.nesterov_update(w, g, hist[0], momentum=mom, **common)
    if rule == "adagrad":
        return upd.adagrad_update(w, g, hist[0], **common)
    if rule == "rmsprop":
        return upd.rmsprop_update(w, g, hist[0], **common)
    if rule == "adadelta":
        return upd.adadelta_update(w, g, hist[0], hist[1], momentum=mom, **common)
    return upd.adam_update(w, g, hist[0], hist[1], t=t, beta1=mom, **common)


RULES = ["sgd", "nesterov", "adagrad", "rmsprop", "adadelta", "adam"]
N_HIST = {"adadelta": 2, "adam": 2}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("reg", ["L2", "L1"])
def test_update_twins_against_hand_computation(rule, reg):
    rng = _rng(7)
    shape = (3, 4)
    w = rng.standard_normal(shape)
    w.flat[0] = 0.0  # sign(0) = 0 under L1
    hist = [np.zeros(shape) for _ in range(N_HIST.get(rule, 1))]
    mom = 0.0 if rule in ("adagrad", "rmsprop") else 0.9
    lr = 1.0 if rule == "adadelta" else 0.05
    want_w, want_hist = w.copy(), [h.copy() for h in hist]
    for it in range(3):
        g = rng.standard_normal(shape)
        scale = 0.5 if it == 1 else 1.0
        want_w, want_u, want_hist = _hand_step(
            rule, want_w, g, want_hist, it + 1, lr, mom, 0.01, reg, scale
        )
        got = _call_ref(rule, w, g, hist, it + 1, lr, mom, 0.01, reg, scale)
        assert got is w
        np.testing.assert_allclose(w, want_w, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(g, want_u, rtol=1e-12, atol=1e-15)  # diff holds the update
        for h, wh in zip(hist, want_hist):
            np.testing.assert_allclose(h, wh, rtol=1e-12, atol=1e-15)


def test_sgd_momentum_keeps_lr_in_history():
    w, g, h = np.array([1.0]), np.array([2.0]), np.array([0.5])
    upd.sgd_update_ref(w, g, h, lr=0.1, momentum=0.9, decay=0.5)
    # g' = 2 + 0.5*1 = 2.5; v = 0.9*0.5 + 0.1*2.5 = 0.7; w = 1 - 0.7
    np.testing.assert_allclose(h, [0.7])
    np.testing.assert_allclose(w, [0.3])
    np.testing.assert_allclose(g, [0.7])


def test_adam_rate_and_errors():
    assert upd.adam_rate(0.1, 0.9, 0.999, 1) == pytest.approx(0.1 * np.sqrt(0.001) / 0.1)
    with pytest.raises(SolverError, match="t = iter"):
        upd.adam_rate(0.1, 0.9, 0.999, 0)
    with pytest.raises(SolverError, match="L1 or L2"):
        upd.sgd_update_ref(np.zeros(2), np.zeros(2), np.zeros(2), lr=0.1, regularization="L3")


def test_clip_scale_matches_caffe_rule():
    diffs = [np.array([3.0, 0.0]), np.array([[4.0]])]  # global norm 5
    assert float(upd.clip_scale(diffs, 2.5)) == pytest.approx(0.5)
    assert float(upd.clip_scale(diffs, 5.0)) == 1.0
    assert float(upd.clip_scale(diffs, 10.0)) == 1.0
    assert upd.clip_scale(diffs, -1) == 1.0
    assert float(upd.clip_scale([np.zeros(3)], 1.0)) == 1.0
    # a 0-d array scale is accepted by the updates
    w, g, h = np.ones(2), np.array([3.0, 4.0]), np.zeros(2)
    upd.sgd_update_ref(w, g, h, lr=1.0, scale=upd.clip_scale([g], 2.5))
    np.testing.assert_allclose(w, [1 - 1.5, 1 - 2.0])


# ============================================================================ infrastructure


def test_kernel_specs_are_named_and_unique():
    specs = kernels.all_specs()
    assert len(specs) >= 20
    for name, spec in specs.items():
        assert name == spec.name and name.startswith("minicaffe_")
    for required in (
        "minicaffe_relu_backward",
        "minicaffe_im2col",
        "minicaffe_col2im",
        "minicaffe_max_pool_backward",
        "minicaffe_ave_pool_forward",
        "minicaffe_adam_update",
        "minicaffe_sgd_update_dscale",
        "minicaffe_prelu_slope_grad",
    ):
        assert required in specs
    with pytest.raises(ValueError, match="two different kernels"):
        kernels.register(kernels.Elementwise("minicaffe_im2col", "T x", "T y", "y = x;"))
    with pytest.raises(ValueError, match="bad kernel parameter"):
        kernels.parse_params("raw T")


def test_gpu_package_does_not_import_cupy():
    code = (
        "import sys, minicaffe.gpu, minicaffe.gpu.kernels as k; k.all_specs(); "
        "import minicaffe.gpu.transfer; assert 'cupy' not in sys.modules"
    )
    subprocess.run([__import__("sys").executable, "-c", code], check=True)


@pytest.mark.skipif(backend.gpu_available(), reason="checks the no-GPU path")
def test_fused_calls_without_gpu_raise_device_error():
    x = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(DeviceError):
        act.relu_backward(x, x)
    with pytest.raises(DeviceError):
        pool.max_pool_forward(x, 2)
    with pytest.raises(DeviceError):
        kernels.get_kernel(i2c.IM2COL)
    from minicaffe.gpu import sync_check

    with pytest.raises(DeviceError):
        with sync_check():
            pass


def test_host_to_device_numpy_destination():
    stage = HostToDevice(slots=2)
    dst = np.zeros((2, 3), np.float32)
    src = np.arange(6, dtype=np.float64).reshape(2, 3)
    assert stage.copy(src, dst) is dst
    np.testing.assert_array_equal(dst, src)
    with pytest.raises(ShapeError, match="does not fit"):
        stage.copy(np.zeros(5), dst)


# ============================================================================ compile (nvcc)

NVCC = shutil.which("nvcc")


def _nvcc(tmp_path, name, source):
    path = tmp_path / f"{name}.cu"
    path.write_text(source)
    return subprocess.run(
        [
            NVCC,
            "--ptx",
            "-arch=sm_90",
            "-Werror",
            "all-warnings",
            "-o",
            str(tmp_path / f"{name}.ptx"),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
def test_every_kernel_source_compiles(tmp_path):
    specs = kernels.all_specs()
    source = kernels.standalone_source(specs)
    for name in specs:
        if not isinstance(specs[name], kernels.Raw):
            assert f"__global__ void {name}(" in source
    raw = "\n".join(src for _, src in kernels.raw_sources(specs))
    res = _nvcc(tmp_path, "minicaffe_kernels", source + "\n" + raw)
    assert res.returncode == 0, res.stderr[-4000:]


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
def test_compile_check_catches_a_broken_body(tmp_path):
    broken = kernels.Elementwise(
        "minicaffe_broken", "T x, T s", "T y", "y = x * undeclared_name + s;", scalars=("s",)
    )
    ok = kernels.Elementwise(
        "minicaffe_fine",
        "T x, raw T r, int32 n",
        "T y",
        "y = x + r[(long long)i % n];",
        scalars=("n",),
    )
    res = _nvcc(tmp_path, "broken", kernels.standalone_source([broken]))
    assert res.returncode != 0 and "undeclared_name" in res.stderr
    res = _nvcc(tmp_path, "fine", kernels.standalone_source([ok]))
    assert res.returncode == 0, res.stderr


# ============================================================================ kernel parity
#
# The parity tests run each fused function against its twin on two engines:
#  * "cupy" (gpu marker): the real kernels on a CUDA device;
#  * "host-cpp": the SAME kernel bodies compiled as host C++ (kernels.host_source, g++) and called
#    through ctypes, with the fused modules' get_kernel/require_cupy patched to use them. That
#    executes every index computation and formula of the CUDA text on the CPU, in CI.

gpu = pytest.mark.gpu
CXX = shutil.which("g++") or shutil.which("c++")

_CTYPES = {
    "float": ctypes.c_float,
    "double": ctypes.c_double,
    "int": ctypes.c_int,
    "long long": ctypes.c_longlong,
    "bool": ctypes.c_bool,
}
_C_OF = {
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
    np.dtype(np.int32): "int",
    np.dtype(np.int64): "long long",
}


class _HostKernel:
    """Calls one spec's host C++ rendering with CuPy's calling convention (in, then out)."""

    def __init__(self, lib, spec):
        self.lib, self.spec = lib, spec
        self.ins = kernels.parse_params(spec.in_params)
        self.outs = kernels.parse_params(spec.out_params)

    def _choice(self, params, args):
        choice = {}
        for p, a in zip(params, args):
            if p.is_placeholder and isinstance(a, np.ndarray):
                choice.setdefault(p.type, _C_OF[a.dtype])
        return choice

    def _scalar(self, p, a, choice):
        ctype = choice[p.type] if p.is_placeholder else kernels.C_TYPES[p.type]
        return _CTYPES[ctype](a.item() if hasattr(a, "item") else a)

    def __call__(self, *args, axis=None):
        if isinstance(self.spec, kernels.Reduction):
            return self._reduce(args, axis)
        params = self.ins + self.outs
        assert len(args) == len(params), "outputs must be passed"
        choice = self._choice(params, args)
        n, cargs = None, []
        for p, a in zip(params, args):
            if isinstance(a, np.ndarray):
                assert a.flags.c_contiguous, f"{self.spec.name}: {p.name} not contiguous"
                if not p.raw:
                    assert n is None or a.size == n, "no broadcasting in the host runner"
                    n = a.size
                cargs.append(ctypes.c_void_p(a.ctypes.data))
            else:
                cargs.append(self._scalar(p, a, choice))
        fn = getattr(self.lib, kernels.host_function_name(self.spec, choice))
        fn(*cargs, ctypes.c_longlong(n))
        outs = args[len(self.ins) :]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _reduce(self, args, axis):
        arrays = list(args)
        ndim = arrays[0].ndim
        axes = tuple(range(ndim)) if axis is None else tuple(a % ndim for a in axis)
        keep = [d for d in range(ndim) if d not in axes]
        out_shape = tuple(arrays[0].shape[d] for d in keep)
        m = int(np.prod([arrays[0].shape[d] for d in axes]))
        flat = [
            np.ascontiguousarray(np.moveaxis(a, axes, range(ndim - len(axes), ndim))).reshape(-1, m)
            for a in arrays
        ]
        choice = self._choice(self.ins, arrays)
        out = np.empty(out_shape, arrays[0].dtype)
        fn = getattr(self.lib, kernels.host_function_name(self.spec, choice))
        fn(
            *[ctypes.c_void_p(a.ctypes.data) for a in flat],
            ctypes.c_void_p(out.ctypes.data),
            ctypes.c_longlong(flat[0].shape[0]),
            ctypes.c_longlong(m),
        )
        return out


@pytest.fixture(scope="module")
def host_lib(tmp_path_factory):
    if CXX is None:
        pytest.skip("no C++ compiler to run the kernel bodies on the host")
    d = tmp_path_factory.mktemp("host_kernels")
    (d / "k.cpp").write_text(kernels.host_source())
    res = subprocess.run(
        [
            CXX,
            "-O1",
            "-shared",
            "-fPIC",
            "-Wall",
            "-Werror",
            "-o",
            str(d / "k.so"),
            str(d / "k.cpp"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    return ctypes.CDLL(str(d / "k.so"))


@pytest.fixture(
    params=[pytest.param("host", id="host-cpp"), pytest.param("cupy", id="cupy", marks=gpu)]
)
def cp(request, monkeypatch):
    """The array module the fused functions run on: CuPy, or NumPy with host-C++ kernels."""
    if request.param == "cupy":
        mod = backend.get_cupy()
        if mod is None:
            pytest.skip("CuPy and a CUDA device are needed")
        return mod
    lib = request.getfixturevalue("host_lib")
    fake = types.SimpleNamespace(
        empty=np.empty,
        empty_like=np.empty_like,
        int32=np.int32,
        ascontiguousarray=np.ascontiguousarray,
        ndarray=np.ndarray,
    )
    for mod in (act, i2c, pool, upd):
        monkeypatch.setattr(mod, "get_kernel", lambda spec: _HostKernel(lib, spec))
        monkeypatch.setattr(mod, "require_cupy", lambda *arrays: fake)
    return np


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)


def _close(got, want, dtype):
    np.testing.assert_allclose(backend.to_numpy(got), backend.to_numpy(want), **_tol(dtype))


DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_activation_parity(cp, dtype):
    rng = _rng(11)
    x = cp.asarray(rng.standard_normal((4, 3, 5, 6)).astype(dtype))
    x[0, 0, 0, :3] = 0  # the kink takes the slope
    dy = cp.asarray(rng.standard_normal(x.shape).astype(dtype))
    for slope in (0.0, 0.2):
        _close(act.relu_forward(x, slope), act.relu_forward_ref(x, slope), dtype)
        _close(act.relu_backward(x, dy, slope), act.relu_backward_ref(x, dy, slope), dtype)
    y = act.sigmoid_forward(x)
    _close(y, act.sigmoid_forward_ref(x), dtype)
    _close(act.sigmoid_backward(y, dy), act.sigmoid_backward_ref(y, dy), dtype)
    t = cp.tanh(x)
    _close(act.tanh_backward(t, dy), act.tanh_backward_ref(t, dy), dtype)
    e = act.elu_forward(x, 0.5)
    _close(e, act.elu_forward_ref(x, 0.5), dtype)
    _close(act.elu_backward(x, e, dy, 0.5), act.elu_backward_ref(x, e, dy, 0.5), dtype)
    # in place: out aliases an input
    dyc = dy.copy()
    act.relu_backward(x, dyc, 0.1, out=dyc)
    _close(dyc, act.relu_backward_ref(x, dy, 0.1), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shared", [False, True])
def test_fused_prelu_parity(cp, dtype, shared):
    rng = _rng(12)
    x = cp.asarray(rng.standard_normal((3, 4, 5, 2)).astype(dtype))
    dy = cp.asarray(rng.standard_normal(x.shape).astype(dtype))
    slope = cp.asarray(rng.uniform(0, 0.5, 4).astype(dtype))
    if shared:
        slope = slope[0].copy()  # the 0-d blob of channel_shared
    _close(act.prelu_forward(x, slope), act.prelu_forward_ref(x, slope), dtype)
    sd, sd_ref = cp.ones_like(slope), cp.ones_like(slope)
    dx = act.prelu_backward(x, dy, slope, out=cp.empty_like(x), slope_diff=sd)
    dx_ref = act.prelu_backward_ref(x, dy, slope, out=cp.empty_like(x), slope_diff=sd_ref)
    _close(dx, dx_ref, dtype)
    np.testing.assert_allclose(
        backend.to_numpy(sd), backend.to_numpy(sd_ref), rtol=1e-4 if dtype == np.float32 else 1e-11
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k,p,s,d", CONV_CASES)
def test_fused_im2col_parity(cp, dtype, shape, k, p, s, d):
    rng = _rng(13)
    x = cp.asarray(rng.standard_normal(shape).astype(dtype))
    col = i2c.im2col(x, k, p, s, d)
    np.testing.assert_array_equal(
        backend.to_numpy(col), backend.to_numpy(i2c.im2col_ref(x, k, p, s, d))
    )
    c = cp.asarray(rng.standard_normal(col.shape).astype(dtype))
    _close(i2c.col2im(c, shape, k, p, s, d), i2c.col2im_ref(c, shape, k, p, s, d), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k,s,p,ceil_mode", POOL_CASES)
def test_fused_pooling_parity(cp, dtype, shape, k, s, p, ceil_mode):
    rng = _rng(14)
    x = cp.asarray(rng.integers(-3, 4, size=shape).astype(dtype))  # ties
    y, mask = pool.max_pool_forward(x, k, s, p, ceil_mode=ceil_mode)
    y_ref, mask_ref = pool.max_pool_forward_ref(x, k, s, p, ceil_mode=ceil_mode)
    np.testing.assert_array_equal(backend.to_numpy(y), backend.to_numpy(y_ref))
    np.testing.assert_array_equal(backend.to_numpy(mask), backend.to_numpy(mask_ref))
    fmask = cp.empty(y.shape, dtype)
    pool.max_pool_forward(x, k, s, p, ceil_mode=ceil_mode, mask=fmask)
    np.testing.assert_array_equal(backend.to_numpy(fmask), backend.to_numpy(mask_ref))
    dy = cp.asarray(rng.standard_normal(y.shape).astype(dtype))
    _close(
        pool.max_pool_backward(dy, mask, shape, k, s, p),
        pool.max_pool_backward_ref(dy, mask, shape, k, s, p),
        dtype,
    )
    _close(
        pool.max_pool_backward(dy, fmask, shape, k, s, p),
        pool.max_pool_backward_ref(dy, mask, shape, k, s, p),
        dtype,
    )
    xr = cp.asarray(rng.standard_normal(shape).astype(dtype))
    _close(
        pool.ave_pool_forward(xr, k, s, p, ceil_mode=ceil_mode),
        pool.ave_pool_forward_ref(xr, k, s, p, ceil_mode=ceil_mode),
        dtype,
    )
    _close(
        pool.ave_pool_backward(dy, shape, k, s, p),
        pool.ave_pool_backward_ref(dy, shape, k, s, p),
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("reg", ["L2", "L1"])
@pytest.mark.parametrize("device_scale", [False, True])
def test_fused_update_parity(cp, dtype, rule, reg, device_scale):
    rng = _rng(15)
    shape = (17, 33)
    w0 = rng.standard_normal(shape).astype(dtype)
    mom = 0.0 if rule in ("adagrad", "rmsprop") else 0.9
    fused = [cp.array(w0), [cp.zeros(shape, dtype) for _ in range(N_HIST.get(rule, 1))]]
    ref = [cp.array(w0), [cp.zeros(shape, dtype) for _ in range(N_HIST.get(rule, 1))]]
    for it in range(3):
        g = rng.standard_normal(shape).astype(dtype)
        g_f, g_r = cp.array(g), cp.array(g)
        scale = upd.clip_scale([g_f], 5.0) if device_scale else 0.5
        _call_fused(rule, fused[0], g_f, fused[1], it + 1, 0.05, mom, 0.01, reg, scale)
        _call_ref(rule, ref[0], g_r, ref[1], it + 1, 0.05, mom, 0.01, reg, scale)
        tol = dict(rtol=2e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-13)
        for a, b in [(fused[0], ref[0]), (g_f, g_r)] + list(zip(fused[1], ref[1])):
            np.testing.assert_allclose(backend.to_numpy(a), backend.to_numpy(b), **tol)


@pytest.fixture
def gpu_cp():
    mod = backend.get_cupy()
    if mod is None:
        pytest.skip("CuPy and a CUDA device are needed")
    return mod


@gpu
def test_gpu_sync_check(gpu_cp):
    cp = gpu_cp
    from minicaffe.gpu import HostSyncError, sync_check

    x = cp.arange(12, dtype=cp.float32).reshape(3, 4) - 5
    dy = cp.ones_like(x)
    act.relu_backward(x, dy, 0.0)  # warm up: compile outside the check
    out = cp.zeros_like(x)
    with sync_check():
        act.relu_backward(x, dy, 0.0, out=out)
    # the captured graph was replayed: the result is there
    np.testing.assert_array_equal(backend.to_numpy(out), (backend.to_numpy(x) > 0) * 1.0)
    with pytest.raises(HostSyncError):
        with sync_check():
            float(x.sum())
    with pytest.raises(HostSyncError):
        with sync_check(capture=False):
            x.get()


@gpu
def test_gpu_host_to_device_pinned_copy(gpu_cp):
    cp = gpu_cp
    stage = HostToDevice(slots=2)
    dst = cp.zeros((4, 5), cp.float32)
    for k in range(5):  # more batches than slots: buffers are reused safely
        src = np.full((4, 5), k, np.float64)
        stage.copy(src, dst)
        np.testing.assert_array_equal(dst.get(), src)


# ============================================================================ tools


TOOLS = __import__("pathlib").Path(__file__).resolve().parent.parent / "tools"


@pytest.mark.skipif(backend.gpu_available(), reason="checks the no-GPU message")
def test_bench_gpu_without_gpu_prints_one_line_and_exits_0():
    import sys

    res = subprocess.run(
        [sys.executable, str(TOOLS / "bench_gpu.py")], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and "CuPy with a CUDA device is not available" in lines[0]


def test_resnet50_prototxt_is_generated_and_current():
    import importlib.util
    from collections import Counter

    from minicaffe.prototxt import read_net_param

    spec = importlib.util.spec_from_file_location("gen_resnet50", TOOLS / "gen_resnet50.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = gen.resnet50_prototxt()
    assert (TOOLS / "nets" / "resnet50_deploy.prototxt").read_text() == text
    param = read_net_param(text)
    kinds = Counter(layer.type for layer in param.layer)
    assert kinds["Convolution"] == 53 and kinds["BatchNorm"] == 53 and kinds["Scale"] == 53
    assert kinds["Eltwise"] == 16 and kinds["ReLU"] == 49 and kinds["InnerProduct"] == 1
    names = {layer.name for layer in param.layer}
    assert {"conv1", "bn_conv1", "scale_conv1", "res2a_branch1", "res5c", "fc1000"} <= names
    strided = [
        l.name for l in param.layer if l.type == "Convolution" and l.convolution_param.stride == [2]
    ]
    assert strided == [
        "conv1",
        "res3a_branch1",
        "res3a_branch2a",
        "res4a_branch1",
        "res4a_branch2a",
        "res5a_branch1",
        "res5a_branch2a",
    ]


def test_bench_gpu_dry_run_kernel_rows(tmp_path):
    """The benchmark's kernel cases set up and run (twins on NumPy) without errors."""
    import json
    import sys

    out = tmp_path / "rows.json"
    res = subprocess.run(
        [
            sys.executable,
            str(TOOLS / "bench_gpu.py"),
            "--dry-run",
            "--sections",
            "kernels",
            "--budget",
            "0",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    kernel_rows = [r for r in rows if r["section"] == "kernel"]
    assert len(kernel_rows) == 15
    assert not [r for r in kernel_rows if "error" in str(r.get("note", ""))], res.stdout
