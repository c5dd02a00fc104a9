"""Dropout: inverted scaling at TRAIN (statistics with a fixed seed), identity at TEST."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe import backend
from minicaffe.backend import to_numpy
from minicaffe.errors import LayerError
from minicaffe.proto import caffe_pb2
from tests.helpers import make_layer, run_forward
from tests.layers.test_neurons import make_in_place

SHAPE = (8, 5, 10, 10)  # 4000 values


def _x(seed=0):
    return np.random.default_rng(seed).uniform(0.5, 1.5, size=SHAPE)


@pytest.mark.parametrize("ratio", [0.5, 0.2, 0.9])
def test_train_mask_fraction_and_scaling(ratio, xp):
    x = _x()
    layer, bottom, top = make_layer(
        f"type: 'Dropout' dropout_param {{ dropout_ratio: {ratio} }}", [x], xp=xp
    )
    (y,) = run_forward(layer, bottom, top)
    kept = y != 0
    p = np.float32(ratio)  # the proto stores a float32
    # kept values are exactly x / (1 - p); dropped are exactly 0
    np.testing.assert_allclose(y[kept], x[kept] / (1 - float(p)), rtol=1e-12)
    frac = kept.mean()
    sigma = np.sqrt(ratio * (1 - ratio) / x.size)
    assert abs(frac - (1 - ratio)) < 5 * sigma, frac
    # backward routes through the same mask and scale
    dy = np.random.default_rng(1).standard_normal(SHAPE)
    top[0].diff[...] = xp.asarray(dy)
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(to_numpy(bottom[0].diff), np.where(kept, dy / (1 - float(p)), 0))


def test_default_ratio_is_half_and_mask_changes_every_forward():
    layer, bottom, top = make_layer("type: 'Dropout'", [_x()])
    assert layer.ratio == 0.5 and layer.scale == 2.0
    y1 = run_forward(layer, bottom, top)[0] != 0
    y2 = run_forward(layer, bottom, top)[0] != 0
    assert (y1 != y2).mean() > 0.3  # two independent masks differ in ~half the places


def test_seed_reproduces_the_mask():
    masks = []
    for _ in range(2):
        backend.set_random_seed(123)
        layer, bottom, top = make_layer("type: 'Dropout'", [_x()])
        masks.append(run_forward(layer, bottom, top)[0] != 0)
    np.testing.assert_array_equal(masks[0], masks[1])


def test_test_phase_is_identity(xp):
    x = _x()
    layer, bottom, top = make_layer(
        "type: 'Dropout' dropout_param { dropout_ratio: 0.7 }", [x], phase=caffe_pb2.TEST, xp=xp
    )
    np.testing.assert_array_equal(run_forward(layer, bottom, top)[0], x)
    top[0].diff[...] = xp.asarray(x * 3)
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(to_numpy(bottom[0].diff), x * 3)


def test_layer_phase_overrides_net_phase():
    layer, bottom, top = make_layer("type: 'Dropout' phase: TEST", [_x()], phase=caffe_pb2.TRAIN)
    np.testing.assert_array_equal(run_forward(layer, bottom, top)[0], _x())


def test_zero_ratio_keeps_everything():
    x = _x()
    layer, bottom, top = make_layer("type: 'Dropout' dropout_param { dropout_ratio: 0 }", [x])
    np.testing.assert_array_equal(run_forward(layer, bottom, top)[0], x)


@pytest.mark.parametrize("phase", [caffe_pb2.TRAIN, caffe_pb2.TEST])
def test_in_place(phase, xp):
    x = _x()
    backend.set_random_seed(7)
    layer, bottom, top = make_in_place("type: 'Dropout'", [x], phase=phase, xp=xp)
    layer.forward(bottom, top)
    y = to_numpy(top[0].data).copy()
    kept = y != 0
    if phase == caffe_pb2.TRAIN:
        np.testing.assert_allclose(y[kept], 2 * x[kept])
        assert 0.4 < kept.mean() < 0.6
    else:
        np.testing.assert_array_equal(y, x)
    dy = np.random.default_rng(2).standard_normal(SHAPE)
    top[0].diff[...] = xp.asarray(dy)
    layer.backward(top, [True], bottom)
    want = np.where(kept, 2 * dy, 0) if phase == caffe_pb2.TRAIN else dy
    np.testing.assert_allclose(to_numpy(bottom[0].diff), want)


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_bad_ratio(ratio):
    with pytest.raises(LayerError, match="dropout_ratio must be in"):
        make_layer(f"type: 'Dropout' dropout_param {{ dropout_ratio: {ratio} }}", [_x()])


def test_scale_train_false_moves_the_scaling_to_test():
    """py-faster-rcnn's scale_train: false: TRAIN keeps the mask unscaled, TEST scales by 1-p."""
    x = np.random.default_rng(3).standard_normal((4, 50)) + 3.0
    text = 'type: "Dropout" dropout_param { dropout_ratio: 0.25 scale_train: false }'
    layer, bottom, top = make_layer(text, [x], phase=caffe_pb2.TRAIN)
    y = run_forward(layer, bottom, top)[0]
    kept = y != 0
    np.testing.assert_array_equal(y[kept], x[kept])  # no 1/(1-p) factor
    top[0].diff[...] = 1.0
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, kept.astype(float))
    layer, bottom, top = make_layer(text, [x], phase=caffe_pb2.TEST)
    np.testing.assert_allclose(run_forward(layer, bottom, top)[0], 0.75 * x)
    top[0].diff[...] = 2.0
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, 1.5)
