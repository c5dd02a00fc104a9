"""Neuron layers: PReLU, ELU, Sigmoid, TanH, AbsVal, BNLL, Power, Exp, Log, Threshold, Swish, Clip.

Goldens from real Caffe, explicit float64 references for every option, finite-difference
gradients (dodging kinks), in-place runs equal to out-of-place runs, and user errors.
"""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from minicaffe.backend import to_numpy
from minicaffe.blob import Blob
from minicaffe.errors import LayerError, ShapeError
from minicaffe.proto import caffe_pb2
from minicaffe.registry import create_layer
from tests.golden import replay
from tests.helpers import check_gradient, device_for, make_layer, run_forward

SHAPE = (2, 3, 3, 2)

GOLDENS = [
    "prelu",
    "prelu_shared",
    "elu",
    "sigmoid",
    "tanh",
    "absval",
    "bnll",
    "power_frac",
    "power_int",
    "power_linear",
    "exp_default",
    "exp_base_scale_shift",
    "log_default",
    "log_base_scale_shift",
    "threshold",
    "swish",
    "clip",
]


@pytest.mark.parametrize("case", GOLDENS)
def test_golden(case, xp):
    replay(case, xp=xp)


def _x(seed=0, shape=SHAPE, low=None, high=None, away_from=()):
    """Random input; uniform in [low, high) when given; nudged away from the kinks listed."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) if low is None else rng.uniform(low, high, size=shape)
    for k in away_from:
        near = np.abs(x - k) < 0.05
        x[near] = k + np.where(x[near] >= k, 0.1, -0.1)
    return x


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


# (prototxt, input kwargs, float64 reference of the forward)
CASES = {
    "sigmoid": ("type: 'Sigmoid'", {}, _sigmoid),
    "tanh": ("type: 'TanH'", {}, np.tanh),
    "absval": ("type: 'AbsVal'", {"away_from": [0]}, np.abs),
    "bnll": ("type: 'BNLL'", {}, lambda x: np.log1p(np.exp(x))),
    "bnll_wide": ("type: 'BNLL'", {"low": -40, "high": 40}, lambda x: np.logaddexp(0, x)),
    "elu": (
        "type: 'ELU'",
        {"away_from": [0]},
        lambda x: np.where(x > 0, x, np.exp(x) - 1),
    ),
    "elu_alpha": (
        "type: 'ELU' elu_param { alpha: 0.3 }",
        {"away_from": [0]},
        lambda x: np.where(x > 0, x, 0.3 * (np.exp(x) - 1)),
    ),
    "elu_neg_alpha": (
        "type: 'ELU' elu_param { alpha: -0.5 }",
        {"away_from": [0]},
        lambda x: np.where(x > 0, x, -0.5 * (np.exp(x) - 1)),
    ),
    "power_default": ("type: 'Power'", {}, lambda x: x),
    "power_square": (
        "type: 'Power' power_param { power: 2 scale: 0.5 shift: 1 }",
        {},
        lambda x: (1 + 0.5 * x) ** 2,
    ),
    "power_frac": (
        "type: 'Power' power_param { power: 1.5 scale: 0.8 shift: 3 }",
        {"low": -2, "high": 2},
        lambda x: (3 + 0.8 * x) ** 1.5,
    ),
    "power_noshift": (
        "type: 'Power' power_param { power: 3 scale: -1.5 }",
        {},
        lambda x: (-1.5 * x) ** 3,
    ),
    "power_neg": (
        "type: 'Power' power_param { power: -0.5 scale: 2 shift: 5 }",
        {"low": -1, "high": 1},
        lambda x: (5 + 2 * x) ** -0.5,
    ),
    "power_linear": (
        "type: 'Power' power_param { power: 1 scale: 2 shift: -1 }",
        {},
        lambda x: 2 * x - 1,
    ),
    "exp_default": ("type: 'Exp'", {}, np.exp),
    "exp_base": (
        "type: 'Exp' exp_param { base: 2 scale: 0.5 shift: 0.3 }",
        {},
        lambda x: 2.0 ** (0.3 + 0.5 * x),
    ),
    "exp_shift_only": (
        "type: 'Exp' exp_param { shift: -0.7 }",
        {},
        lambda x: np.exp(x - 0.7),
    ),
    "log_default": ("type: 'Log'", {"low": 0.2, "high": 3}, np.log),
    "log_base": (
        "type: 'Log' log_param { base: 10 scale: 0.5 shift: 2 }",
        {"low": -2, "high": 2},
        lambda x: np.log10(2 + 0.5 * x),
    ),
    "log_scale_only": (
        "type: 'Log' log_param { scale: 3 }",
        {"low": 0.1, "high": 2},
        lambda x: np.log(3 * x),
    ),
    "swish": ("type: 'Swish'", {}, lambda x: x * _sigmoid(x)),
    "swish_beta": (
        "type: 'Swish' swish_param { beta: 1.5 }",
        {},
        lambda x: x * _sigmoid(1.5 * x),
    ),
    "clip": (
        "type: 'Clip' clip_param { min: -0.5 max: 0.8 }",
        {"away_from": [-0.5, 0.8]},
        lambda x: np.clip(x, -0.5, 0.8),
    ),
    "prelu": (
        "type: 'PReLU' prelu_param { filler { type: 'constant' value: 0.25 } }",
        {"away_from": [0]},
        lambda x: np.where(x > 0, x, 0.25 * x),
    ),
    "prelu_default_filler": (
        "type: 'PReLU'",
        {"away_from": [0]},
        lambda x: np.where(x > 0, x, 0.25 * x),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_reference(name, xp):
    text, kw, ref = CASES[name]
    x = _x(1, **kw)
    layer, bottom, top = make_layer(text, [x], xp=xp)
    # params are float32 in the proto (0.8 is 0.800000011920929), hence rtol 1e-6
    np.testing.assert_allclose(run_forward(layer, bottom, top)[0], ref(x), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient(name):
    text, kw, _ = CASES[name]
    layer, bottom, top = make_layer(text, [_x(2, **kw)])
    check_gradient(layer, bottom, top)


def make_in_place(text, arrays, *, phase=caffe_pb2.TRAIN, xp=np, dtype=np.float64):
    """(layer, bottoms, tops) with top 0 the very same blob as bottom 0 (Caffe's in place)."""
    lp = caffe_pb2.LayerParameter()
    text_format.Merge(text, lp)
    lp.name = lp.name or "inplace"
    bottom = []
    for i, arr in enumerate(arrays):
        blob = Blob(*np.shape(arr), xp=xp, dtype=dtype, name=f"b{i}")
        blob.data[...] = xp.asarray(np.asarray(arr, dtype=dtype))
        bottom.append(blob)
    layer = create_layer(lp, phase=phase, device=device_for(xp), dtype=dtype)
    top = [bottom[0]]
    layer.set_up(bottom, top)
    layer.param_propagate_down = [True] * len(layer.blobs)
    return layer, bottom, top


def check_in_place(text, arrays, *, phase=caffe_pb2.TRAIN, xp=np, steps=2, seed=5):
    """Run forward+backward out of place and in place; tops, bottom diffs, param diffs agree."""
    rng = np.random.default_rng(seed)
    ref, rb, rt = make_layer(text, arrays, phase=phase, xp=xp)
    inp, ib, it = make_in_place(text, arrays, phase=phase, xp=xp)
    for p, q in zip(ref.blobs, inp.blobs, strict=True):
        q.data[...] = p.data
    for _ in range(steps):  # a second pass catches state left behind by the first
        for b, i in zip(rb, ib, strict=True):
            i.data[...] = b.data
        ref.reshape(rb, rt)
        ref.forward(rb, rt)
        inp.reshape(ib, it)
        inp.forward(ib, it)
        np.testing.assert_allclose(to_numpy(it[0].data), to_numpy(rt[0].data), rtol=1e-12)
        dy = xp.asarray(rng.standard_normal(rt[0].shape))
        rt[0].diff[...] = dy
        it[0].diff[...] = dy
        for p in ref.blobs + inp.blobs:
            p.diff.fill(0)
        down = [True] * len(rb)
        ref.backward(rt, down, rb)
        inp.backward(it, down, ib)
        for b, i in zip(rb, ib, strict=True):
            np.testing.assert_allclose(to_numpy(i.diff), to_numpy(b.diff), rtol=1e-12, atol=1e-14)
        for p, q in zip(ref.blobs, inp.blobs, strict=True):
            np.testing.assert_allclose(to_numpy(q.diff), to_numpy(p.diff), rtol=1e-12)
            np.testing.assert_allclose(to_numpy(q.data), to_numpy(p.data), rtol=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_in_place(name, xp):
    text, kw, _ = CASES[name]
    check_in_place(text, [_x(3, **kw)], xp=xp)


def test_prelu_per_channel_and_shared_gradients():
    x = _x(4, shape=(2, 4, 3), away_from=[0])
    for shared in ("false", "true"):
        layer, bottom, top = make_layer(
            f"type: 'PReLU' prelu_param {{ channel_shared: {shared} "
            "filler { type: 'uniform' min: -0.5 max: 0.9 } }",
            [x],
        )
        assert layer.blobs[0].shape == (() if shared == "true" else (4,))
        a = layer.blobs[0].data.reshape(1, -1, 1) if shared == "false" else layer.blobs[0].data
        (y,) = run_forward(layer, bottom, top)
        np.testing.assert_allclose(y, np.where(x > 0, x, a * x), rtol=1e-12)
        check_gradient(layer, bottom, top)


def test_prelu_2d_and_5d_inputs():
    for shape in [(5, 3), (2, 3, 2, 2, 2)]:
        x = _x(6, shape=shape, away_from=[0])
        layer, bottom, top = make_layer("type: 'PReLU'", [x])
        assert layer.blobs[0].shape == (3,)
        check_gradient(layer, bottom, top)


def test_power_constant_cases():
    x = _x(7)
    layer, bottom, top = make_layer("type: 'Power' power_param { power: 0 scale: 2 }", [x])
    np.testing.assert_array_equal(run_forward(layer, bottom, top)[0], np.ones(SHAPE))
    check_gradient(layer, bottom, top)
    layer, bottom, top = make_layer("type: 'Power' power_param { power: 3 scale: 0 shift: 2 }", [x])
    np.testing.assert_array_equal(run_forward(layer, bottom, top)[0], np.full(SHAPE, 8.0))
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 0)


def test_threshold_forward_is_strict_and_has_no_backward():
    x = np.array([[-1.0, 0.3, 0.30001, 2.0]])
    layer, bottom, top = make_layer("type: 'Threshold' threshold_param { threshold: 0.3 }", [x])
    np.testing.assert_array_equal(run_forward(layer, bottom, top)[0], [[0, 0, 1, 1]])
    layer, bottom, top = make_in_place("type: 'Threshold'", [x])
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, [[0, 1, 1, 1]])
    with pytest.raises(LayerError, match="Threshold"):
        layer.backward(top, [True], bottom)


def test_clip_gradient_passes_at_the_bounds():
    x = np.array([[-0.5, 0.8, -0.6, 0.9, 0.1]])
    layer, bottom, top = make_layer("type: 'Clip' clip_param { min: -0.5 max: 0.8 }", [x])
    run_forward(layer, bottom, top)
    top[0].diff[...] = 2
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, [[2, 2, 0, 0, 2]])


def test_absval_sign_of_zero_and_in_place():
    x = np.array([[-2.0, 0.0, 3.0]])
    layer, bottom, top = make_in_place("type: 'AbsVal'", [x])
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, [[-1, 0, 1]])


def test_bnll_stable_for_large_inputs():
    x = np.array([[-1000.0, -60.0, 0.0, 60.0, 1000.0]], dtype=np.float32)
    layer, bottom, top = make_layer("type: 'BNLL'", [x], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        (y,) = run_forward(layer, bottom, top)
        top[0].diff[...] = 1
        layer.backward(top, [True], bottom)
    np.testing.assert_allclose(y, [[0, np.exp(-60), np.log(2), 60, 1000]], rtol=1e-6)
    np.testing.assert_allclose(bottom[0].diff, [[0, np.exp(-60), 0.5, 1, 1]], rtol=1e-5)


def test_sigmoid_saturates_without_overflow():
    x = np.array([[-1000.0, 1000.0]], dtype=np.float32)
    layer, bottom, top = make_layer("type: 'Sigmoid'", [x], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        np.testing.assert_array_equal(run_forward(layer, bottom, top)[0], [[0, 1]])


@pytest.mark.parametrize(
    "text, cls, match",
    [
        ("type: 'Exp' exp_param { base: -2 }", LayerError, "base"),
        ("type: 'Exp' exp_param { base: 0 }", LayerError, "base"),
        ("type: 'Log' log_param { base: 1 }", LayerError, "base"),
        ("type: 'Log' log_param { base: -3 }", LayerError, "base"),
        ("type: 'Clip' clip_param { min: 1 }", LayerError, "required"),
        ("type: 'Clip' clip_param { min: 1 max: 0 }", LayerError, "min must be <= max"),
        (
            "type: 'PReLU' blobs { shape { dim: 4 } data: [1, 2, 3, 4] }",
            ShapeError,
            r"shape \(3,\)",
        ),
    ],
)
def test_param_errors(text, cls, match):
    with pytest.raises(cls, match=match) as info:
        make_layer(text, [_x(8)])
    assert "layer 'layer'" in str(info.value)


def test_prelu_needs_two_axes():
    with pytest.raises(ShapeError, match="at least 2 axes"):
        make_layer("type: 'PReLU'", [np.ones(4)])


def test_neuron_blob_counts():
    with pytest.raises(ShapeError, match="exactly 1 bottom"):
        make_layer("type: 'TanH'", [np.ones(3), np.ones(3)])
