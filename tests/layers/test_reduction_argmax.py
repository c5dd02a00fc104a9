"""Reduction (SUM, ASUM, SUMSQ, MEAN over the tail axes) and ArgMax (top_k, values, ties)."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe.errors import LayerError, ShapeError
from tests.golden import replay
from tests.helpers import check_gradient, make_layer, run_forward


@pytest.mark.parametrize(
    "case",
    [
        "reduction_sum",
        "reduction_asum",
        "reduction_sumsq",
        "reduction_mean",
        "argmax_default",
        "argmax_topk2_maxval",
        "argmax_axis_topk",
        "argmax_axis_maxval",
    ],
)
def test_golden(case, xp):
    replay(case, xp=xp)


X = np.random.default_rng(0).standard_normal((2, 3, 4))
REFERENCE = {
    "SUM": lambda v: v.sum(axis=1),
    "ASUM": lambda v: np.abs(v).sum(axis=1),
    "SUMSQ": lambda v: (v * v).sum(axis=1),
    "MEAN": lambda v: v.mean(axis=1),
}


@pytest.mark.parametrize("op", list(REFERENCE))
@pytest.mark.parametrize("axis,coeff", [(0, 1.0), (1, -0.5), (2, 2.0), (-1, 1.5)])
def test_reduction(op, axis, coeff, xp):
    layer, bottom, top = make_layer(
        f"type: 'Reduction' reduction_param {{ operation: {op} axis: {axis} coeff: {coeff} }}",
        [X],
        xp=xp,
    )
    (y,) = run_forward(layer, bottom, top)
    a = axis % 3
    assert y.shape == X.shape[:a]
    want = coeff * REFERENCE[op](X.reshape(int(np.prod(X.shape[:a])), -1))
    np.testing.assert_allclose(y.reshape(-1), want, rtol=1e-12)
    if xp is np:
        kink = (lambda v, i: np.abs(v) < 1e-3) if op == "ASUM" else None
        check_gradient(layer, bottom, top, kink=kink)


def test_reduction_defaults_give_scalar_sum():
    layer, bottom, top = make_layer("type: 'Reduction'", [X])
    (y,) = run_forward(layer, bottom, top)
    assert y.shape == ()
    np.testing.assert_allclose(y, X.sum())


def test_reduction_asum_gradient_is_zero_at_zero():
    x = np.array([[0.0, 2.0, -3.0]])
    layer, bottom, top = make_layer(
        "type: 'Reduction' reduction_param { operation: ASUM axis: 1 }", [x]
    )
    run_forward(layer, bottom, top)
    top[0].diff[...] = 2.0
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, [[0.0, 2.0, -2.0]])


def test_reduction_errors():
    with pytest.raises(
        ShapeError, match=r"'layer' \(Reduction\).*axis 3 is out of range.*\(2, 3, 4\)"
    ):
        make_layer("type: 'Reduction' reduction_param { axis: 3 }", [X])


def _argmax(param, x, xp=np):
    layer, bottom, top = make_layer(f"type: 'ArgMax' argmax_param {{ {param} }}", [x], xp=xp)
    return run_forward(layer, bottom, top)[0]


def test_argmax_shapes_and_values(xp):
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 5))
    flat = x.reshape(2, -1)
    order = np.argsort(-flat, axis=1)[:, :3]
    y = _argmax("top_k: 3 out_max_val: true", x, xp)
    assert y.shape == (2, 2, 3, 1)
    np.testing.assert_array_equal(y[:, 0, :, 0], order)
    np.testing.assert_allclose(y[:, 1, :, 0], np.take_along_axis(flat, order, 1))
    y = _argmax("top_k: 2 axis: 2", x, xp)
    assert y.shape == (2, 3, 2, 5)
    np.testing.assert_array_equal(y, np.moveaxis(np.argsort(-x, axis=2)[:, :, :2], 2, 2))
    y = _argmax("out_max_val: true axis: 0", x, xp)
    np.testing.assert_allclose(y, x.max(axis=0, keepdims=True))
    assert _argmax("", x[:, :, 0, 0], xp).shape == (2, 1, 1)


def test_argmax_ties_prefer_the_larger_index(xp):
    x = np.array([[1.0, 3.0, 3.0, 0.0, 3.0], [2.0, 2.0, 1.0, 1.0, 0.0]])
    y = _argmax("top_k: 4", x, xp)
    np.testing.assert_array_equal(y[:, 0, :], [[4, 2, 1, 0], [1, 0, 3, 2]])
    y = _argmax("axis: 1", x, xp)
    np.testing.assert_array_equal(y, [[4], [1]])


def test_argmax_errors():
    with pytest.raises(
        ShapeError, match=r"'layer' \(ArgMax\).*top_k 6 exceeds the 5 values.*\(2, 5\)"
    ):
        _argmax("top_k: 6", np.zeros((2, 5)))
    with pytest.raises(ShapeError, match=r"top_k 3 exceeds the 2 values.*\(2, 5\)"):
        _argmax("top_k: 3 axis: 0", np.zeros((2, 5)))
    with pytest.raises(ShapeError, match="axis 2 is out of range"):
        _argmax("axis: 2", np.zeros((2, 5)))
    with pytest.raises(LayerError, match="top_k must be >= 1"):
        _argmax("top_k: 0", np.zeros((2, 5)))
