"""Deconvolution: Caffe goldens, the adjoint of Convolution, gradients, errors."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe import functional
from minicaffe.errors import LayerError, ShapeError
from tests.golden import replay
from tests.helpers import check_gradient, make_layer, run_forward


@pytest.fixture(params=["auto", "nchw", "chwn", "hybrid"])
def layout(request, monkeypatch):
    monkeypatch.setattr(functional, "CONV_LAYOUT", request.param)
    if request.param != "auto":  # many tiles, shared by two threads
        monkeypatch.setattr(functional, "TILE_ELEMS", 300)
        monkeypatch.setattr(functional, "PARALLEL_MIN_ELEMS", 0)
        monkeypatch.setattr(functional, "NUM_THREADS", 2)
    return request.param


@pytest.mark.parametrize("case", ["deconv_upsample", "deconv_group", "deconv_bilinear"])
def test_golden(case, xp, layout):
    replay(case, xp=xp)


def reference_deconv(x, w, b, stride, pad, group):
    """Scatter each input value times its kernel into the (cropped) output; loops, test only."""
    n, c, h, wd = x.shape
    og = w.shape[1]
    o = og * group
    kh, kw = w.shape[2:]
    ho, wo = stride[0] * (h - 1) + kh, stride[1] * (wd - 1) + kw
    y = np.zeros((n, o, ho, wo))
    cg = c // group
    for ci in range(c):
        g = ci // cg
        for i in range(h):
            for j in range(wd):
                r, s = i * stride[0], j * stride[1]
                y[:, g * og : (g + 1) * og, r : r + kh, s : s + kw] += (
                    x[:, ci, i, j][:, None, None, None] * w[ci][None]
                )
    y = y[:, :, pad[0] : ho - pad[0], pad[1] : wo - pad[1]]
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    return y


PARAMS = [
    ("num_output: 3 kernel_size: 3", (2, 2, 3, 4)),
    ("num_output: 2 kernel_size: 4 stride: 2 pad: 1", (2, 3, 3, 3)),
    ("num_output: 4 kernel_size: 3 stride: 2 group: 2", (2, 4, 3, 3)),
    (
        "num_output: 2 kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 bias_term: false",
        (1, 2, 3, 3),
    ),
    ("num_output: 3 kernel_size: 1", (2, 2, 3, 3)),
]


def _make(param, shape, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape)
    text = (
        f"type: 'Deconvolution' convolution_param {{ {param} "
        "weight_filler { type: 'gaussian' std: 0.5 } "
        "bias_filler { type: 'uniform' min: -1 max: 1 } }"
    )
    layer, bottom, top = make_layer(text, [x])
    return layer, bottom, top, x


@pytest.mark.parametrize("param,shape", PARAMS)
def test_forward_matches_reference(param, shape, layout):
    layer, bottom, top, x = _make(param, shape)
    (y,) = run_forward(layer, bottom, top)
    w = layer.blobs[0].data
    assert w.shape[:2] == (shape[1], layer.num_output // layer.group)
    b = layer.blobs[1].data if layer.bias_term else None
    ref = reference_deconv(x, w, b, layer.stride, layer.pad, layer.group)
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("param,shape", PARAMS)
def test_gradient(param, shape, layout):
    layer, bottom, top, _ = _make(param, shape, seed=1)
    check_gradient(layer, bottom, top)


def test_bilinear_upsampling_of_constant_is_constant_inside():
    x = np.ones((1, 2, 4, 4))
    layer, bottom, top = make_layer(
        "type: 'Deconvolution' convolution_param { num_output: 2 group: 2 kernel_size: 4 "
        "stride: 2 pad: 1 bias_term: false weight_filler { type: 'bilinear' } }",
        [x],
    )
    (y,) = run_forward(layer, bottom, top)
    assert y.shape == (1, 2, 8, 8)
    np.testing.assert_allclose(y[:, :, 1:-1, 1:-1], 1.0)


@pytest.mark.parametrize(
    "param,shape,err,match",
    [
        ("num_output: 3 kernel_size: 3 group: 2", (1, 4, 3, 3), LayerError, "num_output"),
        ("num_output: 4 kernel_size: 3 group: 2", (1, 3, 3, 3), ShapeError, "divisible"),
        ("num_output: 2 kernel_size: 2 pad: 2", (1, 1, 1, 1), ShapeError, "not positive"),
    ],
)
def test_errors(param, shape, err, match):
    with pytest.raises(err, match=match):
        _make(param, shape)


def test_weight_gradient_follows_each_new_top_diff(layout):
    # without a bottom gradient the plan must still read this step's top diff
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 4))
    text = (
        "type: 'Deconvolution' convolution_param { num_output: 4 kernel_size: 3 pad: 1 "
        "weight_filler { type: 'gaussian' std: 0.5 } }"
    )
    layer, bottom, top = make_layer(text, [x])
    run_forward(layer, bottom, top)
    rng = np.random.default_rng(3)
    grads = []
    for _ in range(3):
        top[0].diff[...] = rng.standard_normal(top[0].shape)
        layer.blobs[0].diff.fill(0)
        layer.blobs[1].diff.fill(0)
        layer.backward(top, [False], bottom)
        fresh, fb, ft = make_layer(text, [x])
        fresh.blobs[0].data[...] = layer.blobs[0].data
        run_forward(fresh, fb, ft)
        ft[0].diff[...] = top[0].diff
        fresh.blobs[0].diff.fill(0)
        fresh.backward(ft, [True], fb)
        np.testing.assert_allclose(layer.blobs[0].diff, fresh.blobs[0].diff, rtol=1e-10)
        grads.append(layer.blobs[0].diff.copy())
    assert not np.allclose(grads[0], grads[1])
