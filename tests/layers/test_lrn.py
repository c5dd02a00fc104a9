"""LRN: Caffe goldens (across and within channels), a loop reference, gradients, errors."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe.errors import LayerError, ShapeError
from tests.golden import replay
from tests.helpers import check_gradient, make_layer, run_forward


@pytest.mark.parametrize("case", ["lrn_across", "lrn_within"])
def test_golden(case, xp):
    replay(case, xp=xp)


def reference_lrn(x, size, alpha, beta, k, within):
    n, c, h, w = x.shape
    half = (size - 1) // 2
    scale = np.zeros_like(x)
    if not within:
        for ci in range(c):
            lo, hi = max(0, ci - half), min(c, ci + half + 1)
            scale[:, ci] = k + alpha / size * (x[:, lo:hi] ** 2).sum(axis=1)
    else:
        xp_ = np.pad(x**2, [(0, 0), (0, 0), (half, half), (half, half)])
        for i in range(h):
            for j in range(w):
                win = xp_[:, :, i : i + size, j : j + size].sum(axis=(2, 3))
                scale[:, :, i, j] = 1 + alpha / size**2 * win
    return x * scale**-beta


PARAMS = [
    ("local_size: 5 alpha: 0.5 beta: 0.75 k: 2", False),
    ("local_size: 3 alpha: 1.5 beta: 0.6", False),
    ("local_size: 1 alpha: 0.3 beta: 1 k: 1.5", False),
    ("local_size: 7 alpha: 2 beta: 0.5", False),
    ("local_size: 3 alpha: 0.5 beta: 0.75 k: 5 norm_region: WITHIN_CHANNEL", True),
    ("local_size: 5 alpha: 2 beta: 0.6 norm_region: WITHIN_CHANNEL", True),
]


def _parse(param):
    vals = dict(local_size=5, alpha=1.0, beta=0.75, k=1.0)
    toks = param.split()
    for key, v in zip(toks[::2], toks[1::2]):
        if key.rstrip(":") in vals:
            vals[key.rstrip(":")] = float(v)
    # the proto fields are float32, as in Caffe
    f32 = [float(np.float32(vals[key])) for key in ("alpha", "beta", "k")]
    return (int(vals["local_size"]), *f32)


@pytest.mark.parametrize("param,within", PARAMS)
def test_forward_matches_reference(param, within):
    x = np.random.default_rng(0).standard_normal((2, 6, 4, 5))
    layer, bottom, top = make_layer(f"type: 'LRN' lrn_param {{ {param} }}", [x])
    (y,) = run_forward(layer, bottom, top)
    size, alpha, beta, k = _parse(param)
    np.testing.assert_allclose(y, reference_lrn(x, size, alpha, beta, k, within), rtol=1e-12)


@pytest.mark.parametrize("param,within", PARAMS)
def test_gradient(param, within):
    x = np.random.default_rng(1).standard_normal((2, 5, 3, 4))
    layer, bottom, top = make_layer(f"type: 'LRN' lrn_param {{ {param} }}", [x])
    check_gradient(layer, bottom, top)


def test_errors():
    x = np.zeros((1, 3, 4, 4))
    with pytest.raises(LayerError, match="odd"):
        make_layer("type: 'LRN' lrn_param { local_size: 4 }", [x])
    with pytest.raises(ShapeError, match="4 axes"):
        make_layer("type: 'LRN'", [np.zeros((3, 4))])
