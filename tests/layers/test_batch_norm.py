"""BatchNorm: Caffe goldens, batch and global statistics, the running-sum update, gradients,
in-place use (also followed by an in-place Scale), lr_mult forced to 0, and errors."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe import TEST, TRAIN, Net
from minicaffe.errors import LayerError, MinicaffeError, ShapeError
from tests.golden import replay
from tests.helpers import check_gradient, make_layer, run_forward
from tests.layers.test_neurons import check_in_place, make_in_place

SHAPE = (4, 3, 2, 3)


@pytest.mark.parametrize("case", ["bn_train", "bn_train_2d", "bn_test"])
def test_golden(case, xp):
    replay(case, xp=xp)


def _x(seed=0, shape=SHAPE):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape) * 2 + rng.standard_normal(
        (1, shape[1]) + (1,) * (len(shape) - 2)
    )


def _batch_ref(x, eps):
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps), mean.ravel(), var.ravel()


def test_train_forward_and_running_sums():
    x = _x()
    text = "type: 'BatchNorm' batch_norm_param { moving_average_fraction: 0.75 eps: 0.01 }"
    layer, bottom, top = make_layer(text, [x], phase=TRAIN)
    assert [b.shape for b in layer.blobs] == [(3,), (3,), (1,)]
    assert all(np.all(b.data == 0) for b in layer.blobs)
    f, eps = np.float32(0.75), np.float32(0.01)
    (y,) = run_forward(layer, bottom, top)
    want, mean, var = _batch_ref(x, eps)
    np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-12)
    m = x.size // 3
    np.testing.assert_allclose(layer.blobs[2].data, [1.0])
    np.testing.assert_allclose(layer.blobs[0].data, mean, rtol=1e-12)
    np.testing.assert_allclose(layer.blobs[1].data, var * m / (m - 1), rtol=1e-12)
    x2 = _x(1)
    bottom[0].data[...] = x2
    run_forward(layer, bottom, top)
    _, mean2, var2 = _batch_ref(x2, eps)
    np.testing.assert_allclose(layer.blobs[2].data, [f + 1], rtol=1e-12)
    np.testing.assert_allclose(layer.blobs[0].data, f * mean + mean2, rtol=1e-12)
    np.testing.assert_allclose(layer.blobs[1].data, (f * var + var2) * m / (m - 1), rtol=1e-12)


def test_global_stats_use_the_scale_factor():
    x = _x(2)
    layer, bottom, top = make_layer("type: 'BatchNorm'", [x], phase=TEST)
    assert layer.global_stats
    layer.blobs[0].data[...] = [0.5, -1.0, 2.0]
    layer.blobs[1].data[...] = [1.0, 4.0, 0.25]
    layer.blobs[2].data[...] = 2.0
    (y,) = run_forward(layer, bottom, top)
    mean = np.array([0.25, -0.5, 1.0]).reshape(1, 3, 1, 1)
    var = np.array([0.5, 2.0, 0.125]).reshape(1, 3, 1, 1)
    eps = float(np.float32(1e-5))
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + eps), rtol=1e-12)
    before = [b.data.copy() for b in layer.blobs]
    run_forward(layer, bottom, top)
    for b, old in zip(layer.blobs, before, strict=True):  # global stats never update
        np.testing.assert_array_equal(b.data, old)
    # a zero scale factor means zero mean and variance (no division by zero)
    layer.blobs[2].data[...] = 0
    with np.errstate(all="raise"):
        (y,) = run_forward(layer, bottom, top)
    np.testing.assert_allclose(y, x / np.sqrt(eps), rtol=1e-12)


@pytest.mark.parametrize(
    "text, phase, want",
    [
        ("", TRAIN, False),
        ("", TEST, True),
        ("batch_norm_param { use_global_stats: true }", TRAIN, True),
        ("batch_norm_param { use_global_stats: false }", TEST, False),
    ],
)
def test_use_global_stats_defaults_to_phase(text, phase, want):
    layer, _, _ = make_layer(f"type: 'BatchNorm' {text}", [_x()], phase=phase)
    assert layer.global_stats is want


@pytest.mark.parametrize(
    "shape, text, phase",
    [
        (SHAPE, "batch_norm_param { eps: 0.1 }", TRAIN),
        ((6, 4), "", TRAIN),
        ((5,), "", TRAIN),  # 1-D: one channel
        ((2, 3, 2, 2, 2), "", TRAIN),
        (SHAPE, "", TEST),
    ],
)
def test_gradient(shape, text, phase):
    x = _x(3, shape) if len(shape) > 1 else np.random.default_rng(3).standard_normal(shape)
    layer, bottom, top = make_layer(f"type: 'BatchNorm' {text}", [x], phase=phase)
    if phase == TEST:
        layer.blobs[0].data[...] = np.arange(shape[1]) * 0.3
        layer.blobs[1].data[...] = np.arange(shape[1]) + 0.5
        layer.blobs[2].data[...] = 1.5
    check_gradient(layer, bottom, top, check_params=False)


def test_one_dimensional_input_is_one_channel():
    x = np.array([1.0, 2.0, 4.0, 5.0])
    layer, bottom, top = make_layer("type: 'BatchNorm'", [x], phase=TRAIN)
    assert layer.blobs[0].shape == (1,)
    (y,) = run_forward(layer, bottom, top)
    eps = float(np.float32(1e-5))
    np.testing.assert_allclose(y, (x - 3) / np.sqrt(2.5 + eps), rtol=1e-12)
    np.testing.assert_allclose(layer.blobs[1].data, [2.5 * 4 / 3], rtol=1e-12)


@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_in_place(phase, xp):
    check_in_place("type: 'BatchNorm' batch_norm_param { eps: 0.01 }", [_x(4)], phase=phase, xp=xp)


def test_in_place_then_in_place_scale_keeps_the_normalised_values():
    """BN's backward must not read its top blob: an in-place Scale overwrites it (x_norm kept)."""
    x = _x(5)
    bn, b, t = make_in_place("type: 'BatchNorm'", [x], phase=TRAIN)
    scale, _, _ = make_in_place("type: 'Scale' scale_param { bias_term: true }", [x])
    scale.blobs[0].data[...] = [2.0, -1.0, 0.5]
    scale.blobs[1].data[...] = [1.0, 0.0, 3.0]
    ref, rb, rt = make_layer("type: 'BatchNorm'", [x], phase=TRAIN)
    bn.forward(b, t)
    scale.forward(b, t)
    run_forward(ref, rb, rt)
    dy = np.random.default_rng(6).standard_normal(SHAPE)
    t[0].diff[...] = dy
    scale.backward(t, [True], b)
    bn.backward(t, [True], b)
    rt[0].diff[...] = dy * np.array([2.0, -1.0, 0.5]).reshape(1, 3, 1, 1)
    ref.backward(rt, [True], rb)
    np.testing.assert_allclose(b[0].diff, rb[0].diff, rtol=1e-10, atol=1e-12)


def _net(tmp_path, bn_extra=""):
    text = f"""
    layer {{ name: "data" type: "Input" top: "data"
             input_param {{ shape {{ dim: 2 dim: 3 dim: 2 dim: 2 }} }} }}
    layer {{ name: "bn" type: "BatchNorm" bottom: "data" top: "data" {bn_extra} }}
    """
    path = tmp_path / "bn.prototxt"
    path.write_text(text)
    return str(path)


def test_net_forces_lr_mult_zero(tmp_path):
    net = Net(_net(tmp_path), TRAIN)
    assert net.params_lr[-3:] == [0.0, 0.0, 0.0]
    assert net.layer_dict["bn"].param_propagate_down == [False, False, False]
    net = Net(_net(tmp_path, "param { lr_mult: 0 }"), TRAIN)
    assert net.params_lr[-3:] == [0.0, 0.0, 0.0]


def test_net_rejects_a_learned_statistic(tmp_path):
    with pytest.raises(MinicaffeError, match="lr_mult 0"):
        Net(_net(tmp_path, "param { lr_mult: 1 }"), TRAIN)


def test_channel_change_after_setup_is_an_error():
    layer, bottom, top = make_layer("type: 'BatchNorm'", [_x()], phase=TRAIN)
    bottom[0].reshape((4, 5, 2, 3))
    with pytest.raises(ShapeError, match="3 channels"):
        layer.reshape(bottom, top)


def test_given_blobs_must_match_the_channels():
    text = (
        "type: 'BatchNorm' blobs { shape { dim: 4 } data: [0, 0, 0, 0] } "
        "blobs { shape { dim: 4 } data: [1, 1, 1, 1] } blobs { shape { dim: 1 } data: 1 }"
    )
    with pytest.raises(ShapeError, match=r"shape \(3,\)"):
        make_layer(text, [_x()], phase=TEST)
    # as Caffe's Blob::FromProto, a blob with a shape needs its values
    with pytest.raises(LayerError, match=r"\(BatchNorm\).*needs 4 values but holds 0"):
        make_layer("type: 'BatchNorm' blobs { shape { dim: 4 } }", [_x()], phase=TEST)


def test_scalar_input_is_an_error():
    with pytest.raises(ShapeError, match="at least 1 axis"):
        make_layer("type: 'BatchNorm'", [np.float64(1.0)])


def test_float32_batch_stats_close_to_float64():
    x = _x(7, (8, 4, 5, 5)).astype(np.float32)
    layer, bottom, top = make_layer("type: 'BatchNorm'", [x], phase=TRAIN, dtype=np.float32)
    (y,) = run_forward(layer, bottom, top)
    np.testing.assert_allclose(y, _batch_ref(x.astype(np.float64), 1e-5)[0], rtol=1e-4, atol=1e-5)
    assert top[0].dtype == np.float32


def _chain(tmp_path, in_place: bool, phase_name: str) -> str:
    names = ["x", "x", "x", "x"] if in_place else ["x", "bn", "sc", "act"]
    text = f"""
    force_backward: true
    layer {{ name: "data" type: "Input" top: "x"
             input_param {{ shape {{ dim: 3 dim: 4 dim: 2 dim: 2 }} }} }}
    layer {{ name: "bn" type: "BatchNorm" bottom: "{names[0]}" top: "{names[1]}" }}
    layer {{ name: "sc" type: "Scale" bottom: "{names[1]}" top: "{names[2]}"
             scale_param {{ bias_term: true }} }}
    layer {{ name: "act" type: "PReLU" bottom: "{names[2]}" top: "{names[3]}" }}
    layer {{ name: "sig" type: "Sigmoid" bottom: "{names[3]}" top: "out" }}
    """
    path = tmp_path / f"chain_{in_place}_{phase_name}.prototxt"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_in_place_chain_in_a_net_matches_distinct_tops(tmp_path, phase):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 4, 2, 2)) * 2 + 0.5
    dy = rng.standard_normal((3, 4, 2, 2))
    nets = [
        Net(_chain(tmp_path, flag, str(phase)), phase, dtype=np.float64) for flag in (False, True)
    ]
    for net in nets:
        net.params["bn"][0].data[...] = [0.2, -0.4, 1.0, 0.0]
        net.params["bn"][1].data[...] = [1.0, 2.0, 0.5, 3.0]
        net.params["bn"][2].data[...] = 2.0
        net.params["sc"][0].data[...] = [1.5, -0.5, 2.0, 0.7]
        net.params["sc"][1].data[...] = [0.1, 0.2, -0.3, 0.0]
        net.params["act"][0].data[...] = [0.1, 0.3, -0.2, 0.25]
        net.blobs["x"].data[...] = x
        net.forward_prefilled()
        net.clear_param_diffs()
        net.blobs["out"].diff[...] = dy
        net.backward_from_to()
    ref, inp = nets
    np.testing.assert_allclose(inp.blobs["out"].data, ref.blobs["out"].data, rtol=1e-12)
    np.testing.assert_allclose(inp.blobs["x"].diff, ref.blobs["x"].diff, rtol=1e-10, atol=1e-12)
    for name in ("bn", "sc", "act"):
        for p, q in zip(ref.params[name], inp.params[name], strict=True):
            np.testing.assert_allclose(q.data, p.data, rtol=1e-12)
            if name != "bn":
                np.testing.assert_allclose(q.diff, p.diff, rtol=1e-10, atol=1e-12)
