"""Flatten and Reshape: shape rules, memory shared with the bottom (no copy), error messages."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe.backend import to_numpy
from minicaffe.errors import LayerError, ShapeError
from tests.golden import replay
from tests.helpers import make_layer, run_forward

X = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)


@pytest.mark.parametrize("case", ["flatten", "reshape", "reshape_axis"])
def test_golden(case, xp):
    replay(case, xp=xp)


def _assert_shares(layer, bottom, top, shape, xp):
    (y,) = run_forward(layer, bottom, top)
    assert top[0].shape == shape
    np.testing.assert_array_equal(y, X.reshape(shape))
    # no copy: writes through either blob show in the other, for data and diff
    top[0].diff[...] = xp.asarray(np.arange(X.size, dtype=np.float64).reshape(shape))
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(to_numpy(bottom[0].diff).reshape(-1), np.arange(X.size))
    bottom[0].data[...] = 5
    assert float(top[0].data.sum()) == 5 * X.size


@pytest.mark.parametrize(
    "param,shape",
    [
        ("", (2, 60)),
        ("flatten_param { axis: 2 }", (2, 3, 20)),
        ("flatten_param { axis: 1 end_axis: 2 }", (2, 12, 5)),
        ("flatten_param { axis: -3 end_axis: -2 }", (2, 12, 5)),
        ("flatten_param { axis: 0 end_axis: 0 }", (2, 3, 4, 5)),
        ("flatten_param { axis: 0 }", (120,)),
    ],
)
def test_flatten(param, shape, xp):
    layer, bottom, top = make_layer(f"type: 'Flatten' {param}", [X], xp=xp)
    _assert_shares(layer, bottom, top, shape, xp)


@pytest.mark.parametrize(
    "param,shape",
    [
        ("shape { dim: 0 dim: -1 dim: 5 }", (2, 12, 5)),
        ("shape { dim: 6 dim: 20 }", (6, 20)),
        ("shape { dim: -1 }", (120,)),
        ("shape { dim: 0 dim: 0 dim: 0 dim: 0 }", (2, 3, 4, 5)),
        ("shape { dim: -1 } axis: 1 num_axes: 2", (2, 12, 5)),
        ("shape { dim: 1 dim: 1 } axis: 1 num_axes: 0", (2, 1, 1, 3, 4, 5)),
        ("shape { dim: 5 dim: 1 } axis: -2", (2, 3, 4, 5, 1)),
        ("shape { dim: 0 dim: -1 dim: 1 } axis: -3 num_axes: 1", (2, 3, 4, 1, 1, 5)),
        ("shape { dim: 1 } axis: -1", (2, 3, 4, 5, 1)),
        ("shape { dim: 1 } axis: 0 num_axes: 0", (1, 2, 3, 4, 5)),
        ("shape { dim: 10 dim: -1 } axis: 1", (2, 10, 6)),
    ],
)
def test_reshape(param, shape, xp):
    layer, bottom, top = make_layer(f"type: 'Reshape' reshape_param {{ {param} }}", [X], xp=xp)
    _assert_shares(layer, bottom, top, shape, xp)


@pytest.mark.parametrize(
    "param,match",
    [
        ("shape { dim: -1 dim: -1 }", r"at most one -1; received \[-1, -1\]"),
        ("shape { dim: 7 dim: -1 }", r"\(2, 3, 4, 5\) has 120 values, not a multiple of 7"),
        ("shape { dim: 7 dim: 3 }", r"shape \(7, 3\) with 21 values; .*\(2, 3, 4, 5\) has 120"),
        ("shape { dim: 0 dim: 0 dim: 0 dim: 0 dim: 0 }", r"dim 4 is 0 \(copy\).*\(2, 3, 4, 5\)"),
        ("shape { dim: -2 dim: -60 }", r"must be >= -1"),
        ("shape { dim: 1 } axis: 5", r"axis 5 is out of range .*\(2, 3, 4, 5\)"),
        ("shape { dim: 1 } axis: 2 num_axes: 3", r"go past the 4 axes .*\(2, 3, 4, 5\)"),
    ],
)
def test_reshape_errors(param, match):
    with pytest.raises(ShapeError, match=r"layer 'layer' \(Reshape\): " + f".*{match}"):
        make_layer(f"type: 'Reshape' reshape_param {{ {param} }}", [X])


def test_flatten_errors():
    with pytest.raises(ShapeError, match=r"'layer' \(Flatten\).*end_axis.*before axis"):
        make_layer("type: 'Flatten' flatten_param { axis: 2 end_axis: 1 }", [X])
    with pytest.raises(ShapeError, match=r"axis 4 is out of range .*\(2, 3, 4, 5\)"):
        make_layer("type: 'Flatten' flatten_param { axis: 4 }", [X])


def test_in_place_is_refused():
    for text in ("type: 'Flatten'", "type: 'Reshape' reshape_param { shape { dim: -1 } }"):
        layer, bottom, top = make_layer(text, [X])
        with pytest.raises(LayerError, match="cannot run in place"):
            layer.reshape(bottom, [bottom[0]])


def test_reshape_follows_bottom_shape_changes():
    layer, bottom, top = make_layer(
        "type: 'Reshape' reshape_param { shape { dim: 0 dim: -1 } }", [X]
    )
    bottom[0].reshape((4, 3, 2))
    bottom[0].data[...] = np.arange(24.0).reshape(4, 3, 2)
    (y,) = run_forward(layer, bottom, top)
    np.testing.assert_array_equal(y, np.arange(24.0).reshape(4, 6))
