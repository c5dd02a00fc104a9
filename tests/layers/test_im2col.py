"""Im2col: Caffe golden, the column layout against a loop reference, gradients, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from minicaffe.errors import LayerError
from tests.golden import replay
from tests.helpers import check_gradient, make_layer, run_forward


def test_golden(xp):
    replay("im2col", xp=xp)


def reference_im2col(x, k, s, p, d):
    n, c = x.shape[:2]
    nd = len(k)
    xp_ = np.pad(x, [(0, 0), (0, 0)] + [(q, q) for q in p])
    out = [(x.shape[2 + i] + 2 * p[i] - (d[i] * (k[i] - 1) + 1)) // s[i] + 1 for i in range(nd)]
    col = np.zeros((n, c * int(np.prod(k)), *out))
    for ci in range(c):
        for ki, off in enumerate(itertools.product(*[range(v) for v in k])):
            for pos in itertools.product(*[range(v) for v in out]):
                src = tuple(pos[i] * s[i] + off[i] * d[i] for i in range(nd))
                col[(slice(None), ci * int(np.prod(k)) + ki) + pos] = xp_[(slice(None), ci) + src]
    return col


PARAMS = [
    ("kernel_size: 3 pad: 1 stride: 2", (2, 3, 5, 5), (3, 3), (2, 2), (1, 1), (1, 1)),
    ("kernel_h: 2 kernel_w: 3 pad: 1 dilation: 2", (1, 2, 6, 7), (2, 3), (1, 1), (1, 1), (2, 2)),
    ("kernel_size: 2", (2, 2, 3, 4), (2, 2), (1, 1), (0, 0), (1, 1)),
    (
        "kernel_size: 2 stride: 1 pad: 1",
        (1, 2, 3, 3, 3),
        (2, 2, 2),
        (1, 1, 1),
        (1, 1, 1),
        (1, 1, 1),
    ),
]


@pytest.mark.parametrize("param,shape,k,s,p,d", PARAMS)
def test_forward_matches_reference(param, shape, k, s, p, d):
    x = np.random.default_rng(0).standard_normal(shape)
    layer, bottom, top = make_layer(f"type: 'Im2col' convolution_param {{ {param} }}", [x])
    (y,) = run_forward(layer, bottom, top)
    np.testing.assert_array_equal(y, reference_im2col(x, k, s, p, d))


@pytest.mark.parametrize("param,shape,k,s,p,d", PARAMS)
def test_gradient(param, shape, k, s, p, d):
    x = np.random.default_rng(1).standard_normal(shape)
    layer, bottom, top = make_layer(f"type: 'Im2col' convolution_param {{ {param} }}", [x])
    check_gradient(layer, bottom, top)


def test_errors():
    with pytest.raises(LayerError, match="kernel_size"):
        make_layer("type: 'Im2col' convolution_param { stride: 2 }", [np.zeros((1, 1, 4, 4))])
    with pytest.raises(LayerError, match="does not fit"):
        make_layer("type: 'Im2col' convolution_param { kernel_size: 5 }", [np.zeros((1, 1, 4, 4))])
