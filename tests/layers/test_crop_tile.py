"""Crop (offset forms, reference bottom without gradient) and Tile."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe.errors import LayerError, ShapeError
from tests.golden import replay
from tests.helpers import check_gradient, make_layer, run_forward


@pytest.mark.parametrize("case", ["crop", "crop_single_offset", "tile"])
def test_golden(case, xp):
    replay(case, xp=xp)


X = np.random.default_rng(0).standard_normal((2, 3, 6, 7))


@pytest.mark.parametrize(
    "param,ref_shape,index",
    [
        ("", (1, 1, 4, 5), np.s_[:, :, 0:4, 0:5]),
        ("crop_param { offset: 2 }", (2, 3, 3, 4), np.s_[:, :, 2:5, 2:6]),
        (
            "crop_param { axis: 1 offset: 1 offset: 2 offset: 3 }",
            (9, 2, 3, 4),
            np.s_[:, 1:3, 2:5, 3:7],
        ),
        ("crop_param { axis: -1 offset: 1 }", (5, 5, 5, 6), np.s_[:, :, :, 1:7]),
        ("crop_param { axis: 0 offset: 1 }", (1, 2, 5, 6), np.s_[1:2, 1:3, 1:6, 1:7]),
    ],
)
def test_crop_forward_and_gradient(param, ref_shape, index, xp):
    ref = np.zeros(ref_shape)
    layer, bottom, top = make_layer(f"type: 'Crop' {param}", [X, ref], xp=xp)
    (y,) = run_forward(layer, bottom, top)
    np.testing.assert_array_equal(y, X[index])
    if xp is np:
        grads = check_gradient(layer, bottom, top, check_bottoms=[0])
        outside = np.ones(X.shape, bool)
        outside[index] = False
        assert np.all(grads[("bottom", 0)][outside] == 0)


def test_crop_reference_takes_no_gradient():
    layer, bottom, top = make_layer("type: 'Crop'", [X, np.zeros((2, 3, 2, 2))])
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    run_forward(layer, bottom, top)
    top[0].diff[...] = 1
    bottom[1].diff[...] = 42
    layer.backward(top, [True, True], bottom)
    assert np.all(bottom[1].diff == 42)
    assert bottom[0].diff.sum() == 2 * 3 * 2 * 2


def test_crop_errors():
    with pytest.raises(
        ShapeError,
        match=r"'layer' \(Crop\).*axis 3: offset 2 \+ reference size 6 "
        r"exceeds size 7 .*\(2, 3, 6, 7\).*\(2, 3, 4, 6\)",
    ):
        make_layer("type: 'Crop' crop_param { offset: 2 }", [X, np.zeros((2, 3, 4, 6))])
    with pytest.raises(ShapeError, match="0, 1 or 2 values"):
        make_layer(
            "type: 'Crop' crop_param { offset: 0 offset: 1 offset: 1 }", [X, np.zeros((2, 3, 2, 2))]
        )
    with pytest.raises(ShapeError, match=r"same number of axes.*\(2, 3, 6, 7\).*\(2, 3, 6\)"):
        make_layer("type: 'Crop'", [X, np.zeros((2, 3, 6))])
    with pytest.raises(ShapeError, match="axis 4 is out of range"):
        make_layer("type: 'Crop' crop_param { axis: 4 }", [X, np.zeros((2, 3, 6, 7))])


@pytest.mark.parametrize("axis,tiles", [(1, 3), (0, 2), (-1, 4), (2, 1)])
def test_tile_forward_and_gradient(axis, tiles, xp):
    x = np.random.default_rng(1).standard_normal((2, 3, 2))
    layer, bottom, top = make_layer(
        f"type: 'Tile' tile_param {{ axis: {axis} tiles: {tiles} }}", [x], xp=xp
    )
    (y,) = run_forward(layer, bottom, top)
    a = axis % 3
    want = np.tile(x.reshape(x.shape[:a] + (1, -1)), (1,) * a + (tiles, 1))
    want = want.reshape(x.shape[:a] + (x.shape[a] * tiles,) + x.shape[a + 1 :])
    np.testing.assert_array_equal(y, want)
    if xp is np:
        check_gradient(layer, bottom, top)


def test_tile_repeats_whole_trailing_block():
    x = np.array([[[1.0, 2.0], [3.0, 4.0]]])  # (1, 2, 2)
    layer, bottom, top = make_layer("type: 'Tile' tile_param { axis: 1 tiles: 2 }", [x])
    (y,) = run_forward(layer, bottom, top)
    np.testing.assert_array_equal(y, [[[1, 2], [3, 4], [1, 2], [3, 4]]])


def test_tile_errors():
    x = np.zeros((2, 3))
    with pytest.raises(LayerError, match=r"'layer' \(Tile\).*tiles must be set and > 0"):
        make_layer("type: 'Tile'", [x])
    with pytest.raises(ShapeError, match=r"axis 2 is out of range.*\(2, 3\)"):
        make_layer("type: 'Tile' tile_param { axis: 2 tiles: 2 }", [x])
