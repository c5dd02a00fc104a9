"""SPP: Caffe goldens, the pyramid against Pooling layers, gradients, errors."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe.errors import LayerError, ShapeError
from minicaffe.layers.spp import spp_level
from tests.golden import replay
from tests.helpers import check_gradient, make_layer, run_forward


@pytest.mark.parametrize("case", ["spp_max", "spp_ave"])
def test_golden(case, xp):
    replay(case, xp=xp)


def _unique(shape, seed=0):
    return np.random.default_rng(seed).permutation(np.prod(shape)).reshape(shape) * 0.01 + 0.1


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("shape,height", [((2, 3, 7, 6), 3), ((1, 2, 9, 9), 2), ((2, 2, 4, 5), 1)])
def test_matches_concatenated_pooling(method, shape, height):
    x = _unique(shape)
    layer, bottom, top = make_layer(
        f"type: 'SPP' spp_param {{ pyramid_height: {height} pool: {method} }}", [x]
    )
    (y,) = run_forward(layer, bottom, top)
    parts = []
    for level in range(height):
        k, s, p = spp_level(level, shape[2], shape[3])
        pl, pb, pt = make_layer(
            f"type: 'Pooling' pooling_param {{ pool: {method} kernel_h: {k[0]} kernel_w: {k[1]} "
            f"stride_h: {s[0]} stride_w: {s[1]} pad_h: {p[0]} pad_w: {p[1]} }}",
            [x],
        )
        (py,) = run_forward(pl, pb, pt)
        assert py.shape[2:] == (2**level, 2**level)
        parts.append(py.reshape(shape[0], -1))
    if height == 1:
        assert y.shape == (shape[0], shape[1], 1, 1)
        y = y.reshape(shape[0], -1)
    np.testing.assert_allclose(y, np.concatenate(parts, axis=1))


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_gradient(method):
    x = _unique((2, 2, 7, 6), seed=1)
    layer, bottom, top = make_layer(
        f"type: 'SPP' spp_param {{ pyramid_height: 3 pool: {method} }}", [x]
    )
    check_gradient(layer, bottom, top)


def test_errors():
    with pytest.raises(LayerError, match="pyramid_height"):
        make_layer("type: 'SPP'", [np.zeros((1, 1, 4, 4))])
    # width 5 at 4 bins: kernel 2, pad 2 (Caffe's pooling check fails too)
    with pytest.raises(ShapeError, match="pad"):
        make_layer("type: 'SPP' spp_param { pyramid_height: 3 }", [np.zeros((1, 1, 8, 5))])
    with pytest.raises(ShapeError, match="4 axes"):
        make_layer("type: 'SPP' spp_param { pyramid_height: 2 }", [np.zeros((1, 8, 5))])
