"""Concat and Slice: axes, legacy concat_dim/slice_dim, slice points, one-blob sharing."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe.errors import LayerError, ShapeError
from tests.golden import replay
from tests.helpers import check_gradient, make_layer, run_forward


@pytest.mark.parametrize("case", ["concat_axis1", "concat_axis2", "slice_even", "slice_points"])
def test_golden(case, xp):
    replay(case, xp=xp)


def _arrays(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in shapes]


@pytest.mark.parametrize(
    "param,axis",
    [("", 1), ("concat_param { axis: -1 }", 2), ("concat_param { concat_dim: 0 }", 0)],
)
def test_concat_forward_and_gradient(param, axis, xp):
    base = [2, 3, 4]
    shapes = []
    for n in (1, 2, 3):
        s = list(base)
        s[axis] = n
        shapes.append(tuple(s))
    xs = _arrays(shapes)
    layer, bottom, top = make_layer(f"type: 'Concat' {param}", xs, xp=xp)
    (y,) = run_forward(layer, bottom, top)
    np.testing.assert_array_equal(y, np.concatenate(xs, axis=axis))
    if xp is np:
        check_gradient(layer, bottom, top)


def test_concat_single_bottom_shares():
    (x,) = _arrays([(2, 3)])
    layer, bottom, top = make_layer("type: 'Concat'", [x])
    run_forward(layer, bottom, top)
    np.testing.assert_array_equal(top[0].data, x)
    top[0].diff[...] = 7
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, np.full((2, 3), 7.0))


def test_concat_errors():
    a, b = _arrays([(2, 3, 4), (2, 5, 5)])
    with pytest.raises(ShapeError, match=r"'layer' \(Concat\).*\(2, 3, 4\).*\(2, 5, 5\)"):
        make_layer("type: 'Concat'", [a, b])
    with pytest.raises(ShapeError, match="axis 3 is out of range"):
        make_layer("type: 'Concat' concat_param { axis: 3 }", [a, a])
    with pytest.raises(LayerError, match="not both"):
        make_layer("type: 'Concat' concat_param { axis: 1 concat_dim: 1 }", [a, a])
    with pytest.raises(ShapeError, match=r"\(2, 3, 4\).*\(2, 3\)"):
        make_layer("type: 'Concat'", [a, np.zeros((2, 3))])


@pytest.mark.parametrize(
    "param,axis,sizes",
    [
        ("", 1, [2, 2, 2]),
        ("slice_param { axis: 2 slice_point: 1 slice_point: 4 }", 2, [1, 3, 1]),
        ("slice_param { slice_dim: 0 slice_point: 2 }", 0, [2, 1, None]),
        ("slice_param { axis: -1 }", 2, [5]),
    ],
)
def test_slice_forward_and_gradient(param, axis, sizes, xp):
    sizes = [s for s in sizes if s is not None]
    shape = [3, 6, 5]
    shape[axis] = sum(sizes)
    (x,) = _arrays([tuple(shape)], seed=1)
    layer, bottom, top = make_layer(f"type: 'Slice' {param}", [x], xp=xp, num_tops=len(sizes))
    ys = run_forward(layer, bottom, top)
    cuts = np.cumsum(sizes)[:-1]
    for y, want in zip(ys, np.split(x, cuts, axis=axis), strict=True):
        np.testing.assert_array_equal(y, want)
    if xp is not np:
        return
    if len(sizes) == 1:  # the top shares the bottom's data and diff
        assert np.shares_memory(top[0].diff, bottom[0].diff)
    else:
        check_gradient(layer, bottom, top)


def test_slice_errors():
    (x,) = _arrays([(2, 7, 3)])
    with pytest.raises(ShapeError, match=r"'layer' \(Slice\).*size 7.*\(2, 7, 3\).*3 equal"):
        make_layer("type: 'Slice'", [x], num_tops=3)
    with pytest.raises(ShapeError, match="one value fewer"):
        make_layer("type: 'Slice' slice_param { slice_point: 2 }", [x], num_tops=3)
    with pytest.raises(ShapeError, match="strictly increasing"):
        make_layer("type: 'Slice' slice_param { slice_point: 4 slice_point: 2 }", [x], num_tops=3)
    with pytest.raises(ShapeError, match="strictly increasing"):
        make_layer("type: 'Slice' slice_param { slice_point: 7 }", [x], num_tops=2)
    with pytest.raises(ShapeError, match="slice_dim 3 is out of range"):
        make_layer("type: 'Slice' slice_param { slice_dim: 3 }", [x], num_tops=1)
