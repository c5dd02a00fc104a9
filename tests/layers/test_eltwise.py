"""Eltwise: SUM with coefficients, PROD (both gradient forms), MAX with Caffe's tie routing."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe.backend import to_numpy
from minicaffe.errors import LayerError, ShapeError
from tests.golden import replay
from tests.helpers import check_gradient, make_layer, run_forward

SHAPE = (2, 3, 2, 3)


@pytest.mark.parametrize("case", ["eltwise_sum_coeff", "eltwise_prod", "eltwise_max"])
def test_golden(case, xp):
    replay(case, xp=xp)


def _inputs(k, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(SHAPE) for _ in range(k)]


def test_sum_coeff_forward(xp):
    xs = _inputs(3)
    layer, bottom, top = make_layer(
        "type: 'Eltwise' eltwise_param { operation: SUM coeff: 2 coeff: -1 coeff: 0.5 }", xs, xp=xp
    )
    (y,) = run_forward(layer, bottom, top)
    np.testing.assert_allclose(y, 2 * xs[0] - xs[1] + 0.5 * xs[2], rtol=1e-12)


def test_prod_and_max_forward(xp):
    xs = _inputs(3, seed=1)
    layer, bottom, top = make_layer("type: 'Eltwise' eltwise_param { operation: PROD }", xs, xp=xp)
    np.testing.assert_allclose(run_forward(layer, bottom, top)[0], xs[0] * xs[1] * xs[2])
    layer, bottom, top = make_layer("type: 'Eltwise' eltwise_param { operation: MAX }", xs, xp=xp)
    np.testing.assert_allclose(run_forward(layer, bottom, top)[0], np.maximum.reduce(xs))


@pytest.mark.parametrize(
    "param",
    [
        "operation: SUM",
        "operation: SUM coeff: 1.5 coeff: -1 coeff: 0.25",
        "operation: PROD",
        "operation: PROD stable_prod_grad: false",
        "operation: MAX",
    ],
)
def test_gradient(param):
    xs = _inputs(3, seed=2)
    layer, bottom, top = make_layer(f"type: 'Eltwise' eltwise_param {{ {param} }}", xs)
    check_gradient(layer, bottom, top)


def test_max_ties_route_like_caffe():
    # x1 wins ties against x0; a later bottom must be strictly larger to win.
    x0 = np.array([1.0, 2.0, 5.0, 0.0])
    x1 = np.array([1.0, 3.0, 5.0, 0.0])
    x2 = np.array([1.0, 3.0, 4.0, 0.5])
    layer, bottom, top = make_layer(
        "type: 'Eltwise' eltwise_param { operation: MAX }", [x0, x1, x2]
    )
    run_forward(layer, bottom, top)
    top[0].diff[...] = np.array([10.0, 20.0, 30.0, 40.0])
    layer.backward(top, [True] * 3, bottom)
    np.testing.assert_array_equal(bottom[0].diff, [0, 0, 0, 0])
    np.testing.assert_array_equal(bottom[1].diff, [10, 20, 30, 0])
    np.testing.assert_array_equal(bottom[2].diff, [0, 0, 0, 40])


def test_in_place_sum_and_max_match_out_of_place():
    xs = _inputs(2, seed=3)
    dy = np.random.default_rng(4).standard_normal(SHAPE)
    for op in ("SUM coeff: 2 coeff: -3", "MAX"):
        text = f"type: 'Eltwise' eltwise_param {{ operation: {op} }}"
        ref, rb, rt = make_layer(text, xs)
        run_forward(ref, rb, rt)
        rt[0].diff[...] = dy
        ref.backward(rt, [True, True], rb)
        layer, bottom, _ = make_layer(text, xs)
        top = [bottom[0]]
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        np.testing.assert_allclose(bottom[0].data, rt[0].data)
        bottom[0].diff[...] = dy
        layer.backward(top, [True, True], bottom)
        np.testing.assert_allclose(bottom[0].diff, rb[0].diff)
        np.testing.assert_allclose(bottom[1].diff, rb[1].diff)


def test_errors():
    xs = _inputs(2)
    with pytest.raises(ShapeError, match=r"layer 'layer' \(Eltwise\).*\(2, 3, 2, 3\).*\(2, 3\)"):
        make_layer("type: 'Eltwise'", [xs[0], np.zeros((2, 3))])
    with pytest.raises(LayerError, match="once per bottom"):
        make_layer("type: 'Eltwise' eltwise_param { coeff: 1 }", xs)
    with pytest.raises(LayerError, match="only allowed with operation SUM"):
        make_layer("type: 'Eltwise' eltwise_param { operation: MAX coeff: 1 coeff: 2 }", xs)
    with pytest.raises(ShapeError, match="at least 2 bottom"):
        make_layer("type: 'Eltwise'", xs[:1])


def test_max_mask_survives_reshape(xp):
    layer, bottom, top = make_layer(
        "type: 'Eltwise' eltwise_param { operation: MAX }", _inputs(2), xp=xp
    )
    for shape in [(4, 5), (1, 2)]:
        rng = np.random.default_rng(5)
        a, b = rng.standard_normal(shape), rng.standard_normal(shape)
        for blob, v in zip(bottom, (a, b), strict=True):
            blob.reshape(shape)
            blob.data[...] = xp.asarray(v)
        (y,) = run_forward(layer, bottom, top)
        np.testing.assert_allclose(y, np.maximum(a, b))
        top[0].diff[...] = 1
        layer.backward(top, [True, True], bottom)
        np.testing.assert_array_equal(to_numpy(bottom[0].diff), a > b)
