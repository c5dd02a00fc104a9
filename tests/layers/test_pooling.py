"""Pooling: Caffe goldens, Caffe's window rules against a loop reference, gradients, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minicaffe import functional
from minicaffe.errors import LayerError, ShapeError
from minicaffe.functional import pool_out_size
from minicaffe.proto import caffe_pb2
from tests.golden import replay
from tests.helpers import check_gradient, make_layer, run_forward

CASES = [
    "pool_max_2_2",
    "pool_max_3_2_ceil",
    "pool_max_3_2_pad1",
    "pool_max_pad_drop",
    "pool_ave_3_2_pad1",
    "pool_ave_pad_drop",
    "pool_global_ave",
    "pool_global_max",
    "pool_rect",
    "pool_max_floor",
    "pool_max_mask",
]


@pytest.fixture(params=["whole", "chunked"])
def chunking(request, monkeypatch):
    """Whole-batch passes, or one-image chunks shared by two threads."""
    if request.param == "chunked":
        monkeypatch.setattr(functional, "CHUNK_ELEMS", 1)
        monkeypatch.setattr(functional, "PARALLEL_MIN_ELEMS", 0)
        monkeypatch.setattr(functional, "NUM_THREADS", 2)
    return request.param


@pytest.mark.parametrize("case", CASES)
def test_golden(case, xp, chunking):
    replay(case, xp=xp)


def reference_pool(x, method, k, s, p, ceil=True):
    """Caffe's pooling written with loops over windows (test-only reference): values, the mask
    (flat argmax index) and the gradient of sum(y * r) for a given r."""
    n, c, h, w = x.shape
    clip = p[0] > 0 or p[1] > 0
    ho = pool_out_size(h, k[0], s[0], p[0], ceil, clip)
    wo = pool_out_size(w, k[1], s[1], p[1], ceil, clip)
    y = np.zeros((n, c, ho, wo))
    mask = np.zeros((n, c, ho, wo))
    windows = {}
    for i in range(ho):
        for j in range(wo):
            hs, ws = i * s[0] - p[0], j * s[1] - p[1]
            he, we = min(hs + k[0], h + p[0]), min(ws + k[1], w + p[1])
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            win = x[:, :, hs:he, ws:we].reshape(n, c, -1)
            windows[i, j] = (hs, he, ws, we, size)
            if method == "MAX" and win.shape[2] == 0:  # a window past the edge: Caffe's init
                y[:, :, i, j], mask[:, :, i, j] = -np.finfo(np.float32).max, -1
            elif method == "MAX":
                a = win.argmax(axis=2)  # first maximum in row-major order
                y[:, :, i, j] = win.max(axis=2)
                mask[:, :, i, j] = (hs + a // (we - ws)) * w + ws + a % (we - ws)
            else:
                y[:, :, i, j] = win.sum(axis=2) / size
    return y, mask, windows


def _unique_input(shape, seed=0):
    """Values far apart (no ties, no kinks within finite-difference steps)."""
    rng = np.random.default_rng(seed)
    return rng.permutation(np.prod(shape)).reshape(shape) * 0.01 + 0.1


GEOMS = [
    # kernel, stride, pad, shape
    ((2, 2), (2, 2), (0, 0), (2, 3, 6, 6)),
    ((3, 3), (2, 2), (0, 0), (2, 2, 7, 8)),
    ((3, 3), (2, 2), (1, 1), (1, 2, 7, 6)),
    ((2, 2), (2, 2), (1, 1), (1, 2, 5, 7)),
    ((3, 3), (2, 2), (2, 2), (1, 1, 6, 6)),
    ((3, 2), (2, 1), (1, 0), (2, 2, 5, 4)),
    ((3, 3), (1, 1), (1, 1), (1, 2, 4, 5)),
    ((2, 3), (3, 2), (0, 1), (1, 2, 7, 5)),
]


def _text(method, k, s, p, extra=""):
    return (
        f"type: 'Pooling' pooling_param {{ pool: {method} kernel_h: {k[0]} kernel_w: {k[1]} "
        f"stride_h: {s[0]} stride_w: {s[1]} pad_h: {p[0]} pad_w: {p[1]} {extra} }}"
    )


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("k,s,p,shape", GEOMS)
@pytest.mark.parametrize("ceil", [True, False])
def test_forward_matches_reference(method, k, s, p, shape, ceil, chunking):
    x = _unique_input(shape)
    extra = "" if ceil else "round_mode: FLOOR"
    tops = "top: 'y' top: 'mask'" if method == "MAX" else ""
    layer, bottom, top = make_layer(tops + " " + _text(method, k, s, p, extra), [x])
    outs = run_forward(layer, bottom, top)
    ref, mask, _ = reference_pool(x, method, k, s, p, ceil)
    np.testing.assert_allclose(outs[0], ref, rtol=1e-12)
    if method == "MAX":
        np.testing.assert_array_equal(outs[1], mask)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("k,s,p,shape", GEOMS)
def test_gradient(method, k, s, p, shape, chunking):
    x = _unique_input(shape, seed=1)
    layer, bottom, top = make_layer(_text(method, k, s, p), [x])
    check_gradient(layer, bottom, top)


def test_output_size_rules():
    # ceil by default, floor on request; a last window that would start in the padding is dropped
    assert pool_out_size(7, 3, 2, 0, True) == 3
    assert pool_out_size(8, 3, 2, 0, True) == 4 and pool_out_size(8, 3, 2, 0, False) == 3
    assert pool_out_size(5, 2, 2, 1, True) == 3  # ceil gives 4, the 4th starts at 6 >= 5 + 1
    assert pool_out_size(6, 3, 2, 2, True) == 4
    # Caffe tests both pads together: pad_w alone also clips the height
    assert pool_out_size(6, 2, 3, 0, True, clip=True) == 2
    layer, bottom, top = make_layer(_text("MAX", (2, 2), (3, 3), (0, 1)), [np.zeros((1, 1, 6, 6))])
    assert top[0].shape == (1, 1, 2, 3)


def test_max_ties_go_to_first_in_row_major_order():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 0] = x[0, 0, 0, 1] = 1.0  # tie inside the first window: (0, 1) comes first
    for phase in (caffe_pb2.TRAIN, caffe_pb2.TEST):
        layer, bottom, top = make_layer(
            "top: 'y' top: 'm' type: 'Pooling' "
            "pooling_param { pool: MAX kernel_size: 2 stride: 2 }",
            [x],
            phase=phase,
        )
        y, m = run_forward(layer, bottom, top)
        assert m[0, 0, 0, 0] == 1 and m[0, 0, 1, 1] == 10  # all-zero window: its first element
        top[0].diff[...] = 1.0
        layer.backward(top, [True, False], bottom)
        expect = np.zeros((4, 4))
        expect[0, 1] = expect[0, 2] = expect[2, 0] = expect[2, 2] = 1
        np.testing.assert_array_equal(bottom[0].diff[0, 0], expect)


def test_test_phase_backward_recomputes_argmax():
    x = _unique_input((2, 2, 7, 7), seed=3)
    grads = []
    for phase in (caffe_pb2.TRAIN, caffe_pb2.TEST):
        layer, bottom, top = make_layer(_text("MAX", (3, 3), (2, 2), (1, 1)), [x], phase=phase)
        run_forward(layer, bottom, top)
        top[0].diff[...] = np.arange(top[0].count).reshape(top[0].shape)
        top[0].data[...] = -5  # a later in-place layer may change the top: backward must not care
        layer.backward(top, [True], bottom)
        grads.append(bottom[0].diff.copy())
    np.testing.assert_array_equal(grads[0], grads[1])


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_global_pooling(method):
    x = _unique_input((2, 3, 5, 4), seed=4)
    layer, bottom, top = make_layer(
        f"type: 'Pooling' pooling_param {{ pool: {method} global_pooling: true }}", [x]
    )
    (y,) = run_forward(layer, bottom, top)
    assert y.shape == (2, 3, 1, 1)
    want = x.max(axis=(2, 3)) if method == "MAX" else x.mean(axis=(2, 3))
    np.testing.assert_allclose(y[:, :, 0, 0], want)
    check_gradient(layer, bottom, top)


def test_stochastic_test_form():
    x = np.random.default_rng(5).uniform(0.1, 1.0, (2, 2, 5, 5))
    layer, bottom, top = make_layer(
        "type: 'Pooling' pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }",
        [x],
        phase=caffe_pb2.TEST,
    )
    (y,) = run_forward(layer, bottom, top)
    assert y.shape == (2, 2, 2, 2)
    for i in range(2):
        for j in range(2):
            win = x[:, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3]
            np.testing.assert_allclose(
                y[:, :, i, j], (win**2).sum(axis=(2, 3)) / win.sum(axis=(2, 3)), rtol=1e-12
            )
    check_gradient(layer, bottom, top)


def test_stochastic_train_samples_in_proportion():
    x = np.zeros((1, 1, 2, 2))
    x[0, 0] = [[1.0, 3.0], [0.0, 4.0]]
    xs = np.repeat(x, 4000, axis=0)
    layer, bottom, top = make_layer(
        "type: 'Pooling' pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }",
        [xs],
        phase=caffe_pb2.TRAIN,
    )
    (y,) = run_forward(layer, bottom, top)
    vals, counts = np.unique(y, return_counts=True)
    assert set(vals) <= {1.0, 3.0, 4.0}
    freq = dict(zip(vals, counts / counts.sum()))
    assert abs(freq[1.0] - 0.125) < 0.03 and abs(freq[4.0] - 0.5) < 0.04
    top[0].diff[...] = 1.0
    layer.backward(top, [True], bottom)
    dx = bottom[0].diff.reshape(-1, 4)
    np.testing.assert_array_equal(dx.sum(axis=1), 1.0)  # one position per window
    chosen = np.array([1.0, 3.0, 0.0, 4.0])[dx.argmax(axis=1)]
    np.testing.assert_array_equal(chosen, y.reshape(-1))


@pytest.mark.parametrize(
    "text,shape,ntop,err,match",
    [
        ("pool: MAX global_pooling: true kernel_size: 2", (1, 1, 4, 4), 1, LayerError, "global"),
        ("pool: MAX global_pooling: true stride: 2", (1, 1, 4, 4), 1, LayerError, "stride 1"),
        ("pool: MAX kernel_size: 2 pad: 2", (1, 1, 4, 4), 1, LayerError, "smaller than"),
        ("pool: STOCHASTIC kernel_size: 3 pad: 1", (1, 1, 4, 4), 1, LayerError, "MAX and AVE"),
        ("pool: AVE kernel_size: 2", (1, 1, 4, 4), 2, ShapeError, "second"),
        ("pool: MAX kernel_size: 2", (1, 4, 4), 1, ShapeError, "4 axes"),
        ("pool: MAX", (1, 1, 4, 4), 1, LayerError, "kernel_size"),
        ("pool: MAX kernel_h: 2", (1, 1, 4, 4), 1, LayerError, "kernel_size"),
        (
            "pool: MAX kernel_size: 2 kernel_h: 2 kernel_w: 2",
            (1, 1, 4, 4),
            1,
            LayerError,
            "not both",
        ),
        ("pool: MAX kernel_size: 2 stride_h: 2", (1, 1, 4, 4), 1, LayerError, "stride_w"),
        ("pool: MAX kernel_size: 6", (1, 1, 4, 4), 1, ShapeError, "larger than"),
    ],
)
def test_errors(text, shape, ntop, err, match):
    with pytest.raises(err, match=match):
        make_layer(f"type: 'Pooling' pooling_param {{ {text} }}", [np.zeros(shape)], num_tops=ntop)


def test_large_kernel_not_global():
    # kernel 5x5 stride 3 with padding: many offsets, windows clipped on every side
    x = _unique_input((1, 2, 9, 8), seed=6)
    for method in ("MAX", "AVE"):
        layer, bottom, top = make_layer(_text(method, (5, 5), (3, 3), (2, 2)), [x])
        (y,) = run_forward(layer, bottom, top)
        ref, _, _ = reference_pool(x, method, (5, 5), (3, 3), (2, 2))
        np.testing.assert_allclose(y, ref)
        assert math.isfinite(float(y.sum()))


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("k,s,p,shape", GEOMS)
def test_forward_after_backward_is_unchanged(method, k, s, p, shape, chunking):
    """A backward must leave no trace in buffers the next forward reuses (the padded chunk of
    AVE pooling once kept gradients in its border)."""
    x = _unique_input(shape, seed=5)
    layer, bottom, top = make_layer(_text(method, k, s, p), [x])
    first = run_forward(layer, bottom, top)[0].copy()
    top[0].diff[...] = 1.0
    layer.backward(top, [True], bottom)
    again = run_forward(layer, bottom, top)[0]
    np.testing.assert_array_equal(again, first)


@pytest.mark.parametrize("k,s,shape", [((1, 1), (2, 2), (2, 3, 8, 8)),
                                       ((1, 3), (3, 2), (1, 2, 5, 5)),
                                       ((2, 2), (3, 3), (2, 1, 6, 7))])
def test_max_windows_past_the_edge_as_caffe(k, s, shape, chunking):
    """pad 0 with CEIL rounding: the last window can start past the edge and hold no input.
    Caffe leaves it at -FLT_MAX with mask -1; no gradient flows from it (Caffe's own backward
    writes before the plane there, which is undefined), and nothing warns."""
    import warnings

    x = _unique_input(shape, seed=5)
    n, c, h, w = shape
    layer, bottom, top = make_layer("top: 'y' top: 'mask' " + _text("MAX", k, s, (0, 0)), [x],
                                    dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, mask = run_forward(layer, bottom, top)
        ho, wo = y.shape[2:]
        empty = np.logical_or.outer(np.arange(ho) * s[0] >= h, np.arange(wo) * s[1] >= w)
        assert empty.any()
        assert np.all(y[..., empty] == -np.finfo(np.float32).max)
        assert np.all(mask[..., empty] == -1)
        ref, ref_mask, _ = reference_pool(x, "MAX", k, s, (0, 0))
        np.testing.assert_allclose(y, ref, rtol=1e-6)
        np.testing.assert_array_equal(mask, ref_mask)
        top[0].diff[...] = 1.0
        layer.backward(top, [True], bottom)
        dx = bottom[0].diff
        # each window with input sends its 1 to its maximum; the empty ones send nothing
        assert dx.sum() == pytest.approx(n * c * (~empty).sum())
        for name in ("MAX", "AVE"):  # and the layer without the mask top (working layout too)
            layer, bottom, top = make_layer(_text(name, k, s, (0, 0)), [x], dtype=np.float32)
            run_forward(layer, bottom, top)
            top[0].diff[...] = 1.0
            layer.backward(top, [True], bottom)
            assert np.isfinite(bottom[0].diff).all()
