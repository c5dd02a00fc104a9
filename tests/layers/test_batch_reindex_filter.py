"""BatchReindex (gather with scatter-add gradient) and Filter (selector-driven batch subset)."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe.backend import to_numpy
from minicaffe.errors import LabelError, LayerError, ShapeError
from tests.golden import replay
from tests.helpers import check_gradient, make_layer, run_forward

X = np.random.default_rng(0).standard_normal((4, 3, 2))


@pytest.mark.parametrize("case", ["batch_reindex", "filter"])
def test_golden(case, xp):
    replay(case, xp=xp)


def test_batch_reindex_forward_and_gradient(xp):
    idx = np.array([3.0, 0.0, 3.0, 3.0, 1.0])
    layer, bottom, top = make_layer("type: 'BatchReindex'", [X, idx], xp=xp)
    (y,) = run_forward(layer, bottom, top)
    np.testing.assert_array_equal(y, X[[3, 0, 3, 3, 1]])
    dy = np.random.default_rng(1).standard_normal(y.shape)
    top[0].diff[...] = xp.asarray(dy)
    layer.backward(top, [True, False], bottom)
    want = np.zeros_like(X)
    np.add.at(want, [3, 0, 3, 3, 1], dy)
    np.testing.assert_allclose(to_numpy(bottom[0].diff), want, rtol=1e-12)
    assert np.all(to_numpy(bottom[0].diff)[2] == 0)
    if xp is np:
        check_gradient(layer, bottom, top, check_bottoms=[0])
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)


def test_batch_reindex_errors():
    with pytest.raises(LabelError, match=r"'layer' \(BatchReindex\).*\[0, 4\); received 4"):
        layer, bottom, top = make_layer("type: 'BatchReindex'", [X, np.array([0.0, 4.0])])
        run_forward(layer, bottom, top)
    with pytest.raises(ShapeError, match=r"must be 1-D; received shape \(2, 1\)"):
        make_layer("type: 'BatchReindex'", [X, np.zeros((2, 1))])
    layer, bottom, top = make_layer("type: 'BatchReindex'", [X, np.array([1.0])])
    run_forward(layer, bottom, top)
    with pytest.raises(LayerError, match="cannot back-propagate to the indices"):
        layer.backward(top, [True, True], bottom)


def test_filter_two_blobs(xp):
    sel = np.array([[1.0], [0.0], [2.0], [0.0]])
    other = np.arange(8.0).reshape(4, 2)
    layer, bottom, top = make_layer("type: 'Filter'", [X, other, sel], xp=xp, num_tops=2)
    # before the first forward the tops have the whole batch, as Caffe sizes them
    assert top[0].shape == (4, 3, 2)
    y0, y1 = run_forward(layer, bottom, top)
    np.testing.assert_array_equal(y0, X[[0, 2]])
    np.testing.assert_array_equal(y1, other[[0, 2]])
    top[0].diff[...] = 1.0
    top[1].diff[...] = 2.0
    layer.backward(top, [True, True, False], bottom)
    np.testing.assert_array_equal(to_numpy(bottom[0].diff)[:, 0, 0], [1, 0, 1, 0])
    np.testing.assert_array_equal(to_numpy(bottom[1].diff)[:, 0], [2, 0, 2, 0])
    assert not layer.allow_force_backward(2) and layer.allow_force_backward(1)


def test_filter_gradient_and_nothing_kept():
    layer, bottom, top = make_layer("type: 'Filter'", [X, np.array([0.0, 1.0, 1.0, 0.0])])
    check_gradient(layer, bottom, top, check_bottoms=[0])
    bottom[1].data[...] = 0
    (y,) = run_forward(layer, bottom, top)
    assert y.shape == (0, 3, 2)
    layer.backward(top, [True, False], bottom)
    assert np.all(bottom[0].diff == 0)


def test_filter_errors():
    with pytest.raises(ShapeError, match=r"'layer' \(Filter\).*selector.*\(4, 2\)"):
        make_layer("type: 'Filter'", [X, np.zeros((4, 2))])
    with pytest.raises(ShapeError, match=r"bottom 0 must have the selector's 3 items.*\(4, 3, 2\)"):
        make_layer("type: 'Filter'", [X, np.zeros(3)])
    with pytest.raises(ShapeError, match=r"one top per filtered bottom \(1.*received 2"):
        make_layer("type: 'Filter'", [X, np.zeros(4)], num_tops=2)
