"""Accuracy: top_k with ties counted against the true class, axis, ignore_label, per-class top."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe.backend import to_numpy
from minicaffe.errors import LabelError, LayerError, ShapeError
from tests.helpers import LOSS_CASES, make_layer

C20 = LOSS_CASES["C20"]


def accuracy(params, arrays, xp=np, tops=1):
    text = f'type: "Accuracy" accuracy_param {{ {params} }}'
    text += ' top: "acc"' + (' top: "per_class"' if tops == 2 else "")
    layer, bottom, top = make_layer(text, arrays, xp=xp)
    layer.forward(bottom, top)
    return [to_numpy(t.data) for t in top], layer


@pytest.mark.parametrize("k", [1, 2, 3])
def test_c20_top_k_ties_ignore_and_per_class(xp, k):
    x, y = np.asarray(C20["inputs"]["bottom0"]), np.asarray(C20["inputs"]["bottom1"])
    (acc, per_class), layer = accuracy(f"top_k: {k} ignore_label: -1", [x, y], xp, tops=2)
    np.testing.assert_allclose(acc, C20["outputs"][f"top_k={k}: accuracy"], rtol=1e-12)
    np.testing.assert_allclose(
        per_class, C20["outputs"][f"top_k={k}: per_class (top[1])"], rtol=1e-12
    )
    assert layer.loss_weights == [0.0, 0.0]


def test_c20_all_ignored_gives_zero(xp):
    x = np.asarray(C20["inputs"]["bottom0"])
    (acc,), _ = accuracy("ignore_label: -1", [x, -np.ones(5)], xp)
    assert float(acc) == C20["outputs"]["all labels ignored: accuracy"] == 0


def test_spatial_axis_and_reference():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 10, 4, 5))
    y = rng.integers(0, 10, (2, 1, 4, 5)).astype(float)
    y[0, 0, 0, :3] = 7.5  # truncates to 7
    for k in (1, 3):
        (acc, per), _ = accuracy(f"top_k: {k}", [x, y], tops=2)
        yi = y.astype(int)[:, 0]
        true = np.take_along_axis(x, yi[:, None], 1)[:, 0]
        correct = (x >= true[:, None]).sum(axis=1) <= k
        np.testing.assert_allclose(acc, correct.mean(), rtol=1e-12)
        for c in range(10):
            sel = yi == c
            np.testing.assert_allclose(per[c], correct[sel].mean() if sel.any() else 0)


def test_axis_minus_one():
    x = np.array([[[0.1, 0.9], [0.8, 0.2]], [[0.3, 0.7], [0.6, 0.4]]])
    y = np.array([[1, 1], [1, 0]], float)
    (acc,), _ = accuracy("axis: -1", [x, y])
    assert float(acc) == 0.75


def test_bad_inputs():
    x = np.zeros((2, 3))
    with pytest.raises(
        ShapeError,
        match=r"top_k must be between 1 and the number of classes "
        r"\(3\); received 4",
    ):
        accuracy("top_k: 4", [x, np.zeros(2)])
    with pytest.raises(ShapeError, match=r"expected 2 labels .* received label shape \(3,\)"):
        accuracy("", [x, np.zeros(3)])
    with pytest.raises(LabelError, match=r"'layer' \(Accuracy\): label 3 at index \(1,\)"):
        accuracy("", [x, np.array([0.0, 3.0])])


def test_no_gradient():
    layer, bottom, top = make_layer('type: "Accuracy"', [np.zeros((2, 3)), np.zeros(2)])
    assert not layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    layer.backward(top, [False, False], bottom)
    with pytest.raises(LayerError, match="Accuracy has no gradient"):
        layer.backward(top, [True, False], bottom)
