"""Scale and Bias: goldens, axis/num_axes broadcasting, the second-bottom form, Scale's
bias_term, default fillers, gradients to bottoms and params, in place, and shape errors."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe.errors import LayerError, ShapeError
from tests.golden import replay
from tests.helpers import check_gradient, make_layer, run_forward
from tests.layers.test_neurons import check_in_place

SHAPE = (2, 3, 4, 2)


@pytest.mark.parametrize(
    "case", ["scale_2bottom", "scale_bias", "scale_scalar", "bias", "bias_2bottom"]
)
def test_golden(case, xp):
    replay(case, xp=xp)


def _x(seed=0, shape=SHAPE):
    return np.random.default_rng(seed).standard_normal(shape)


# (scale_param / bias_param text, parameter shape, broadcast shape of the parameter)
BROADCASTS = [
    ("", (3,), (1, 3, 1, 1)),
    ("axis: 0 num_axes: 2", (2, 3), (2, 3, 1, 1)),
    ("axis: 1 num_axes: -1", (3, 4, 2), (1, 3, 4, 2)),
    ("axis: -1", (2,), (1, 1, 1, 2)),
    ("axis: -2 num_axes: 2", (4, 2), (1, 1, 4, 2)),
    ("axis: 2 num_axes: 0", (), ()),
    ("num_axes: 0", (), ()),
]


@pytest.mark.parametrize("param, pshape, bshape", BROADCASTS)
def test_scale_broadcast_forward_and_gradient(param, pshape, bshape, xp):
    x = _x()
    text = (
        f"type: 'Scale' scale_param {{ {param} filler {{ type: 'uniform' min: -2 max: 2 }} "
        "bias_term: true bias_filler { type: 'gaussian' } }"
    )
    layer, bottom, top = make_layer(text, [x], xp=xp)
    assert [b.shape for b in layer.blobs] == [pshape, pshape]
    s = np.asarray(layer.blobs[0].data.get() if xp is not np else layer.blobs[0].data)
    b = np.asarray(layer.blobs[1].data.get() if xp is not np else layer.blobs[1].data)
    (y,) = run_forward(layer, bottom, top)
    np.testing.assert_allclose(y, x * s.reshape(bshape) + b.reshape(bshape), rtol=1e-12)
    if xp is np:
        check_gradient(layer, bottom, top)


@pytest.mark.parametrize("param, pshape, bshape", BROADCASTS)
def test_bias_broadcast_forward_and_gradient(param, pshape, bshape):
    x = _x(1)
    text = f"type: 'Bias' bias_param {{ {param} filler {{ type: 'gaussian' }} }}"
    layer, bottom, top = make_layer(text, [x])
    assert layer.blobs[0].shape == pshape
    (y,) = run_forward(layer, bottom, top)
    np.testing.assert_allclose(y, x + layer.blobs[0].data.reshape(bshape), rtol=1e-12)
    check_gradient(layer, bottom, top)


@pytest.mark.parametrize(
    "axis, sshape",
    [(1, (3,)), (1, (3, 4)), (0, (2, 3, 4, 2)), (-2, (4, 2)), (2, ()), (-1, (2,))],
)
def test_two_bottom_forms(axis, sshape):
    x, s = _x(2), _x(3, sshape) if sshape else np.float64(1.7)
    nd = len(sshape)
    start = 0 if nd == 0 else axis % 4
    bshape = (1,) * start + sshape + (1,) * (4 - start - nd)
    s_b = np.reshape(s, bshape)
    layer, bottom, top = make_layer(f"type: 'Scale' scale_param {{ axis: {axis} }}", [x, s])
    assert layer.blobs == []
    np.testing.assert_allclose(run_forward(layer, bottom, top)[0], x * s_b, rtol=1e-12)
    check_gradient(layer, bottom, top)
    layer, bottom, top = make_layer(f"type: 'Bias' bias_param {{ axis: {axis} }}", [x, s])
    np.testing.assert_allclose(run_forward(layer, bottom, top)[0], x + s_b, rtol=1e-12)
    check_gradient(layer, bottom, top)


def test_two_bottom_scale_ignores_num_axes_and_learns_a_bias():
    x, s = _x(4), _x(5, (3, 4))
    text = (
        "type: 'Scale' scale_param { axis: 1 num_axes: 3 bias_term: true "
        "bias_filler { type: 'uniform' min: -1 max: 1 } }"
    )
    layer, bottom, top = make_layer(text, [x, s])
    assert [b.shape for b in layer.blobs] == [(3, 4)]
    b = layer.blobs[0].data
    want = x * s.reshape(1, 3, 4, 1) + b.reshape(1, 3, 4, 1)
    np.testing.assert_allclose(run_forward(layer, bottom, top)[0], want, rtol=1e-12)
    check_gradient(layer, bottom, top)


def test_default_fillers():
    layer, bottom, top = make_layer("type: 'Scale' scale_param { bias_term: true }", [_x()])
    np.testing.assert_array_equal(layer.blobs[0].data, np.ones(3))
    np.testing.assert_array_equal(layer.blobs[1].data, np.zeros(3))
    np.testing.assert_array_equal(run_forward(layer, bottom, top)[0], _x())
    layer, _, _ = make_layer("type: 'Bias'", [_x()])
    np.testing.assert_array_equal(layer.blobs[0].data, np.zeros(3))


def test_param_diffs_accumulate_and_bottom_diffs_are_assigned():
    x, s = _x(6), _x(7, (3,))
    layer, bottom, top = make_layer(
        "type: 'Scale' scale_param { bias_term: true filler { type: 'gaussian' } }", [x]
    )
    run_forward(layer, bottom, top)
    top[0].diff[...] = 1.0
    for b in layer.blobs:
        b.diff[...] = 10.0
    bottom[0].diff[...] = 10.0
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(layer.blobs[0].diff, 10 + x.sum(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(layer.blobs[1].diff, 10 + np.full(3, 16.0), rtol=1e-12)
    np.testing.assert_allclose(
        bottom[0].diff, np.broadcast_to(layer.blobs[0].data.reshape(1, 3, 1, 1), SHAPE)
    )
    layer, bottom, top = make_layer("type: 'Scale'", [x, s])
    run_forward(layer, bottom, top)
    top[0].diff[...] = 1.0
    bottom[1].diff[...] = 10.0
    layer.backward(top, [False, True], bottom)
    np.testing.assert_allclose(bottom[1].diff, x.sum(axis=(0, 2, 3)), rtol=1e-12)


def test_frozen_params_get_no_diff():
    layer, bottom, top = make_layer("type: 'Scale' scale_param { bias_term: true }", [_x()])
    layer.param_propagate_down = [False, False]
    run_forward(layer, bottom, top)
    top[0].diff[...] = 1.0
    layer.backward(top, [True], bottom)
    assert not np.any(layer.blobs[0].diff) and not np.any(layer.blobs[1].diff)


@pytest.mark.parametrize(
    "text, n",
    [
        ("type: 'Scale' scale_param { filler { type: 'gaussian' } }", 1),
        (
            "type: 'Scale' scale_param { bias_term: true filler { type: 'gaussian' } "
            "bias_filler { type: 'gaussian' } }",
            1,
        ),
        (
            "type: 'Scale' scale_param { axis: 0 num_axes: -1 bias_term: true "
            "filler { type: 'gaussian' } }",
            1,
        ),
        ("type: 'Scale' scale_param { bias_term: true bias_filler { type: 'gaussian' } }", 2),
        ("type: 'Scale'", 2),
        ("type: 'Bias' bias_param { filler { type: 'gaussian' } }", 1),
        ("type: 'Bias' bias_param { axis: 2 num_axes: 2 filler { type: 'gaussian' } }", 1),
        ("type: 'Bias'", 2),
    ],
)
def test_in_place(text, n, xp):
    arrays = [_x(8)] + ([_x(9, (3,))] if n == 2 else [])
    check_in_place(text, arrays, xp=xp)


@pytest.mark.parametrize(
    "text, arrays, cls, match",
    [
        (
            "type: 'Scale' scale_param { num_axes: -2 }",
            [_x()],
            ShapeError,
            "num_axes must be >= -1",
        ),
        ("type: 'Scale' scale_param { axis: 4 }", [_x()], ShapeError, "out of range"),
        ("type: 'Scale' scale_param { axis: 3 num_axes: 2 }", [_x()], ShapeError, "at least 5"),
        ("type: 'Bias' bias_param { axis: -5 }", [_x()], ShapeError, "out of range"),
        ("type: 'Scale'", [_x(), np.ones((4,))], ShapeError, r"scale of shape \(4,\)"),
        ("type: 'Bias'", [_x(), np.ones((3, 5))], ShapeError, r"bias of shape \(3, 5\)"),
        ("type: 'Scale' scale_param { axis: 2 }", [_x(), np.ones((4, 2, 2))], ShapeError, "axes"),
        ("type: 'Scale'", [_x(), _x(), _x()], ShapeError, "at most 2 bottom"),
        (
            "type: 'Scale' blobs { shape { dim: 3 } data: [1, 2, 3] } "
            "blobs { shape { dim: 3 } data: [1, 2, 3] }",
            [_x()],
            LayerError,
            "expects 1 parameter blob",
        ),
        (
            "type: 'Bias' blobs { shape { dim: 3 } data: [1, 2, 3] }",
            [_x(), np.ones(3)],
            LayerError,
            "no parameter blob",
        ),
    ],
)
def test_errors(text, arrays, cls, match):
    with pytest.raises(cls, match=match) as info:
        make_layer(text, arrays)
    assert "layer 'layer'" in str(info.value)


def test_reshape_checks_the_second_bottom_again():
    layer, bottom, top = make_layer("type: 'Scale'", [_x(), np.ones(3)])
    bottom[1].reshape((4,))
    with pytest.raises(ShapeError, match=r"scale of shape \(4,\)"):
        layer.reshape(bottom, top)
