"""MVN: goldens, explicit references for every option, Caffe's backward formula (exact as
eps -> 0, checked by finite differences with a tiny eps), in place, and errors."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe.errors import ShapeError
from tests.golden import replay
from tests.helpers import check_gradient, make_layer, run_forward
from tests.layers.test_neurons import check_in_place

SHAPE = (2, 3, 3, 4)


@pytest.mark.parametrize("case", ["mvn", "mvn_nonorm", "mvn_across"])
def test_golden(case, xp):
    replay(case, xp=xp)


def _x(seed=0, shape=SHAPE):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape) * 3 + 1


def _ref(x, normalize, across, eps):
    axes = tuple(range(1 if across else 2, x.ndim))
    y = x - x.mean(axis=axes, keepdims=True)
    if normalize:
        y = y / (np.sqrt((y**2).mean(axis=axes, keepdims=True)) + eps)
    return y


OPTIONS = [
    ("", True, False, 1e-9),
    ("normalize_variance: false", False, False, 1e-9),
    ("across_channels: true", True, True, 1e-9),
    ("across_channels: true normalize_variance: false", False, True, 1e-9),
    ("eps: 0.5", True, False, 0.5),
]


@pytest.mark.parametrize("param, normalize, across, eps", OPTIONS)
def test_forward_reference(param, normalize, across, eps, xp):
    x = _x()
    layer, bottom, top = make_layer(f"type: 'MVN' mvn_param {{ {param} }}", [x], xp=xp)
    (y,) = run_forward(layer, bottom, top)
    np.testing.assert_allclose(
        y, _ref(x, normalize, across, np.float32(eps)), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("param, normalize, across, eps", OPTIONS)
def test_backward_is_caffes_formula(param, normalize, across, eps):
    x = _x(1)
    layer, bottom, top = make_layer(f"type: 'MVN' mvn_param {{ {param} }}", [x])
    (y,) = run_forward(layer, bottom, top)
    dy = np.random.default_rng(2).standard_normal(SHAPE)
    top[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    axes = tuple(range(1 if across else 2, x.ndim))
    mean = lambda a: a.mean(axis=axes, keepdims=True)  # noqa: E731
    if normalize:
        c = x - mean(x)
        std = np.sqrt(mean(c**2)) + np.float32(eps)
        want = (dy - mean(dy) - y * mean(dy * y)) / std
    else:
        want = dy - mean(dy)
    np.testing.assert_allclose(bottom[0].diff, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "param, shape",
    [
        ("eps: 1e-12", SHAPE),
        ("normalize_variance: false", SHAPE),
        ("across_channels: true eps: 1e-12", SHAPE),
        ("across_channels: true normalize_variance: false", SHAPE),
        ("eps: 1e-12", (4, 5)),  # 2-D: one group per (n, c) of a single value
        ("across_channels: true eps: 1e-12", (3, 5)),
        ("across_channels: true eps: 1e-12", (7,)),
    ],
)
def test_gradient_matches_finite_differences(param, shape):
    # Caffe's gradient is the exact derivative when eps is negligible
    layer, bottom, top = make_layer(f"type: 'MVN' mvn_param {{ {param} }}", [_x(3, shape)])
    check_gradient(layer, bottom, top)


@pytest.mark.parametrize("param", [opt[0] for opt in OPTIONS])
def test_in_place(param, xp):
    check_in_place(f"type: 'MVN' mvn_param {{ {param} }}", [_x(4)], xp=xp)


def test_two_dimensional_input_groups_single_values():
    x = _x(5, (4, 5))
    layer, bottom, top = make_layer("type: 'MVN'", [x])
    np.testing.assert_array_equal(run_forward(layer, bottom, top)[0], np.zeros((4, 5)))
    layer, bottom, top = make_layer("type: 'MVN' mvn_param { across_channels: true }", [x])
    np.testing.assert_allclose(run_forward(layer, bottom, top)[0], _ref(x, True, True, 1e-9))


def test_five_axes_are_rejected():
    with pytest.raises(ShapeError, match="1 to 4 axes") as info:
        make_layer("type: 'MVN'", [np.ones((1, 2, 2, 2, 2))])
    assert "layer 'layer' (MVN)" in str(info.value)
