"""MultinomialLogistic, Infogain, SigmoidCrossEntropy, Euclidean, Hinge and Contrastive losses:
worked cases, finite-difference gradients for every option, and Net-level behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe.backend import to_numpy
from minicaffe.prototxt import write_binaryproto
from tests.helpers import LOSS_CASES, case_input, case_output, check_gradient, make_layer

CASES = LOSS_CASES
RTOL = 1e-9
out, inp = case_output, case_input


def run(text, arrays, xp=np, propagate=None, dtype=np.float64, num_tops=None):
    layer, bottom, top = make_layer(text, arrays, xp=xp, dtype=dtype, num_tops=num_tops)
    layer.forward(bottom, top)
    propagate = propagate or [True] + [False] * (len(bottom) - 1)
    layer.backward(top, propagate, bottom)
    diffs = [to_numpy(b.diff).copy() if p else None for b, p in zip(bottom, propagate)]
    return float(to_numpy(top[0].data)), diffs, layer, bottom, top


# ---------------------------------------------------------------------------- MultinomialLogistic


def test_c16_multinomial_logistic_clamp(xp):
    loss, (diff, _), *_ = run(
        'type: "MultinomialLogisticLoss"', [inp("C16", "bottom0"), inp("C16", "bottom1")], xp
    )
    np.testing.assert_allclose(loss, out("C16", "top0"), rtol=RTOL)
    np.testing.assert_allclose(diff, out("C16", "bottom0_diff"), rtol=RTOL)


def softmax(x, axis=1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize(
    "params",
    [
        "",
        "ignore_label: 1",
        "ignore_label: 1 normalization: VALID",
        "normalization: FULL",
        "class_weight: 1 class_weight: 2 class_weight: 0.5 ignore_label: 0 normalization: WEIGHTED",
        "label_smoothing: 0.2 ignore_label: 2",
    ],
)
def test_multinomial_equals_softmax_loss_on_probabilities(params):
    # MultinomialLogistic(softmax(x)) == SoftmaxWithLoss(x) (no clamp reached), with Caffe's
    # default divisor N for the former: give both the same explicit normalization
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 2, 2))
    y = rng.integers(0, 3, (4, 2, 2)).astype(float)
    norm = "" if "normalization" in params else "normalization: BATCH_SIZE"
    mll, *_ = run(
        f'type: "MultinomialLogisticLoss" loss_param {{ {params} {norm} }}', [softmax(x), y]
    )
    swl, *_ = run(f'type: "SoftmaxWithLoss" loss_param {{ {params} {norm} }}', [x, y])
    np.testing.assert_allclose(mll, swl, rtol=1e-7)  # float32 label_smoothing field rounding


@pytest.mark.parametrize(
    "params,weights",
    [
        ("", None),
        ("ignore_label: 2 normalization: VALID", None),
        ("class_weight: 1 class_weight: 2 class_weight: 0.5", None),
        ("label_smoothing: 0.3 ignore_label: 0", None),
        ("weight_normalization: GLOBAL normalization: WEIGHTED", (4, 3, 2)),
        ("weight_normalization: NO label_smoothing: 0.1", (3, 2)),
    ],
)
def test_multinomial_gradient(params, weights):
    rng = np.random.default_rng(1)
    p = softmax(rng.standard_normal((4, 3, 2)))
    y = rng.integers(0, 3, (4, 2)).astype(float)
    arrays = [p, y] + ([rng.uniform(0.5, 2, weights)] if weights else [])
    layer, bottom, top = make_layer(
        f'type: "MultinomialLogisticLoss" loss_param {{ {params} }} loss_weight: 1.5', arrays
    )
    check_gradient(layer, bottom, top, check_bottoms=[0])


def test_multinomial_caffe_flattens_non_batch_axes():
    rng = np.random.default_rng(2)
    p = softmax(rng.standard_normal((3, 12))).reshape(3, 2, 2, 3)
    y = np.array([5.0, 11.0, 0.0])  # N labels: classes are the 12 values of each item
    loss, (diff, _), *_ = run('type: "MultinomialLogisticLoss"', [p, y])
    flat = p.reshape(3, 12)
    ref = -np.log(flat[np.arange(3), y.astype(int)]).sum() / 3
    np.testing.assert_allclose(loss, ref, rtol=1e-12)
    expect = np.zeros((3, 12))
    expect[np.arange(3), y.astype(int)] = -1 / (3 * flat[np.arange(3), y.astype(int)])
    np.testing.assert_allclose(diff.reshape(3, 12), expect, rtol=1e-12)


# ---------------------------------------------------------------------------- Infogain


def test_c09_infogain_axis2_h_bottom(xp):
    loss, (diff, _, _), *_ = run(
        'type: "InfogainLoss" infogain_loss_param { axis: 2 }',
        [inp("C09", "bottom0"), inp("C09", "bottom1"), inp("C09", "bottom2_H")],
        xp,
    )
    np.testing.assert_allclose(loss, out("C09", "top0"), rtol=RTOL)
    np.testing.assert_allclose(diff, out("C09", "bottom0_diff"), rtol=RTOL)


@pytest.mark.parametrize(
    "mode,key",
    [
        ("VALID", "Caffe InfogainLoss H=diag(w), VALID"),
        ("BATCH_SIZE", "Caffe InfogainLoss H=diag(w), BATCH_SIZE"),
    ],
)
def test_c10_infogain_diagonal_h_is_class_weighting(tmp_path, mode, key):
    h = tmp_path / "H.binaryproto"
    write_binaryproto(h, np.diag(inp("C10", "class_weight")).reshape(1, 1, 3, 3), legacy=True)
    loss, (diff, _), *_ = run(
        f'type: "InfogainLoss" infogain_loss_param {{ source: "{h}" }} '
        f"loss_param {{ ignore_label: -1 normalization: {mode} }}",
        [inp("C10", "x"), inp("C10", "t")],
    )
    np.testing.assert_allclose(loss, out("C10", key), rtol=1e-7)  # H stored as float32
    if mode == "VALID":
        np.testing.assert_allclose(
            diff,
            out("C10", "grad Chainer normalize=True (= Infogain VALID = SegNet)"),
            rtol=1e-7,
            atol=1e-12,
        )


def test_infogain_identity_h_equals_softmax_loss_and_prob_top():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 2))
    y = rng.integers(0, 4, (3, 2)).astype(float)
    text = (
        'type: "InfogainLoss" top: "loss" top: "prob" '
        "loss_param { ignore_label: 3 normalization: FULL }"
    )
    loss, (diff, _, _), layer, _, top = run(text, [x, y, np.eye(4)])
    assert layer.loss_weights == [1.0, 0.0]
    swl, (sdiff, _), *_ = run(
        'type: "SoftmaxWithLoss" loss_param { ignore_label: 3 normalization: FULL }', [x, y]
    )
    np.testing.assert_allclose(loss, swl, rtol=1e-12)
    np.testing.assert_allclose(diff, sdiff, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(to_numpy(top[1].data), softmax(x), rtol=1e-12)


@pytest.mark.parametrize(
    "params",
    ["", "ignore_label: 1", "normalization: NONE", "normalization: BATCH_SIZE ignore_label: 0"],
)
def test_infogain_gradient(params):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 2, 5, 2))
    y = rng.integers(0, 5, (4, 2, 1, 2)).astype(float)
    H = rng.uniform(0.1, 2, (1, 1, 5, 5))
    layer, bottom, top = make_layer(
        f'type: "InfogainLoss" infogain_loss_param {{ axis: 2 }} loss_param {{ {params} }} '
        "loss_weight: 1.7",
        [x, y, H],
    )
    check_gradient(layer, bottom, top, check_bottoms=[0])


# ---------------------------------------------------------------------------- SigmoidCrossEntropy


@pytest.mark.parametrize(
    "mode", ["default (BATCH_SIZE)", "VALID", "FULL", "NONE", "normalize=true (VALID)"]
)
def test_c15_sigmoid_cross_entropy_modes(xp, mode):
    param = {"default (BATCH_SIZE)": "", "normalize=true (VALID)": "normalize: true"}.get(
        mode, f"normalization: {mode}"
    )
    loss, (diff, _), *_ = run(
        f'type: "SigmoidCrossEntropyLoss" loss_param {{ ignore_label: -1 {param} }}',
        [inp("C15", "bottom0"), inp("C15", "bottom1")],
        xp,
    )
    np.testing.assert_allclose(loss, out("C15", f"{mode}: top0"), rtol=RTOL)
    if mode.startswith("default"):
        np.testing.assert_allclose(diff, out("C15", "default: bottom0_diff"), rtol=RTOL)
        assert diff[0, 2] == 0  # the ignored target


def test_sigmoid_cross_entropy_is_stable_for_large_logits():
    x = np.array([[800.0, -800.0, 30.0]])
    t = np.array([[0.0, 1.0, 1.0]])
    loss, (diff, _), *_ = run('type: "SigmoidCrossEntropyLoss"', [x, t], dtype=np.float32)
    np.testing.assert_allclose(loss, 1600 + np.log1p(np.exp(-30.0)), rtol=1e-6)
    np.testing.assert_allclose(diff, [[1.0, -1.0, -np.exp(-30.0)]], rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize(
    "params",
    ["", "ignore_label: -1 normalization: VALID", "normalization: FULL", "normalize: false"],
)
def test_sigmoid_cross_entropy_gradient(params):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 5)) * 2
    t = rng.uniform(0, 1, (4, 5))
    t[0, :2] = -1
    layer, bottom, top = make_layer(
        f'type: "SigmoidCrossEntropyLoss" loss_param {{ {params} }} loss_weight: 3.7', [x, t]
    )
    check_gradient(layer, bottom, top, check_bottoms=[0])


# ---------------------------------------------------------------------------- Euclidean / Hinge


def test_c17_euclidean_both_bottoms(xp):
    loss, (d0, d1), *_ = run(
        'type: "EuclideanLoss"', [inp("C17", "bottom0"), inp("C17", "bottom1")], xp, [True, True]
    )
    np.testing.assert_allclose(loss, out("C17", "top0"), rtol=RTOL)
    np.testing.assert_allclose(d0, out("C17", "bottom0_diff"), rtol=RTOL)
    np.testing.assert_allclose(d1, out("C17", "bottom1_diff"), rtol=RTOL)


def test_euclidean_gradient_and_force_backward_reaches_both():
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((3, 2, 2)), rng.standard_normal((3, 4))
    layer, bottom, top = make_layer('type: "EuclideanLoss" loss_weight: 0.7', [a, b])
    assert layer.allow_force_backward(0) and layer.allow_force_backward(1)
    check_gradient(layer, bottom, top)


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_c18_hinge(xp, norm):
    text = f'type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}'
    loss, (diff, _), *_ = run(text, [inp("C18", "bottom0"), inp("C18", "bottom1")], xp)
    np.testing.assert_allclose(loss, out("C18", f"{norm}: top0"), rtol=RTOL)
    np.testing.assert_allclose(diff, out("C18", f"{norm}: bottom0_diff"), rtol=RTOL)


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_gradient_away_from_kinks(norm):
    rng = np.random.default_rng(7)
    x = rng.uniform(-2, 2, (5, 4))
    y = rng.integers(0, 4, 5).astype(float)
    layer, bottom, top = make_layer(
        f'type: "HingeLoss" hinge_loss_param {{ norm: {norm} }} loss_weight: 2', [x, y]
    )
    check_gradient(
        layer, bottom, top, check_bottoms=[0], kink=lambda v, i: np.abs(np.abs(v) - 1) < 0.02
    )


# ---------------------------------------------------------------------------- Contrastive


@pytest.mark.parametrize("legacy", ["false", "true"])
def test_c19_contrastive(xp, legacy):
    arrays = [inp("C19", "bottom0"), inp("C19", "bottom1"), inp("C19", "bottom2_sim")]
    loss, (d0, d1, _), *_ = run(
        f'type: "ContrastiveLoss" contrastive_loss_param {{ legacy_version: {legacy} }}',
        arrays,
        xp,
        [True, True, False],
    )
    key = f"legacy_version={legacy}"
    np.testing.assert_allclose(loss, out("C19", f"{key}: top0"), rtol=RTOL)
    np.testing.assert_allclose(d0, out("C19", f"{key}: bottom0_diff"), rtol=RTOL)
    np.testing.assert_allclose(d1, out("C19", f"{key}: bottom1_diff"), rtol=RTOL)


def test_contrastive_legacy_gradient_and_margin():
    rng = np.random.default_rng(8)
    a, b = rng.uniform(-1, 1, (6, 2)), rng.uniform(-1, 1, (6, 2))
    sim = np.array([1, 0, 0, 1, 0, 0], float)
    text = (
        'type: "ContrastiveLoss" contrastive_loss_param { margin: 1.5 legacy_version: true }'
        " loss_weight: 1.3"
    )
    layer, bottom, top = make_layer(text, [a, b, sim])
    d2 = ((a - b) ** 2).sum(axis=1)
    kink = np.abs(1.5 - d2) < 0.05
    check_gradient(
        layer,
        bottom,
        top,
        check_bottoms=[0, 1],
        kink=lambda v, i: np.broadcast_to(kink[:, None], v.shape) if i < 2 else None,
    )
    layer.forward(bottom, top)
    loss = float(top[0].data)
    ref = np.where(sim == 1, d2, np.maximum(1.5 - d2, 0)).sum() / 12
    np.testing.assert_allclose(loss, ref, rtol=1e-12)


def test_contrastive_non_legacy_matches_caffe_inexact_backward():
    rng = np.random.default_rng(9)
    a, b = rng.uniform(-1, 1, (5, 3)), rng.uniform(-1, 1, (5, 3))
    sim = np.array([0, 0, 1, 0, 0.7], float)  # 0.7 truncates to 0: dissimilar
    loss, (d0, d1, _), *_ = run(
        'type: "ContrastiveLoss"', [a, b, sim], propagate=[True, True, False]
    )
    d = np.sqrt(((a - b) ** 2).sum(axis=1))
    similar = sim.astype(int) != 0
    ref = np.where(similar, d**2, np.maximum(1 - d, 0) ** 2).sum() / 10
    np.testing.assert_allclose(loss, ref, rtol=1e-12)
    c = np.where(similar, 1.0, np.where(1 - d > 0, -(1 - d) / (d + 1e-4), 0))
    np.testing.assert_allclose(d0, c[:, None] * (a - b) / 5, rtol=1e-12)
    np.testing.assert_allclose(d1, -d0, rtol=1e-12)


# ---------------------------------------------------------------------------- inside a Net

NET = """
name: "losses"
force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label"
        top: "loss" top: "prob" softmax_param { engine: CAFFE } loss_weight: 2 loss_weight: 0 }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" }
"""


def test_net_two_top_loss_force_backward_and_accuracy(tmp_path):
    from minicaffe import TRAIN, Net

    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    net = Net(str(path), TRAIN)
    rng = np.random.default_rng(10)
    net.blobs["data"].data[...] = rng.standard_normal((4, 3))
    net.blobs["label"].data[...] = [0, 1, 2, 1]
    net.forward()
    ip = net.blobs["ip"].data.copy()
    expect, (grad, _), *_ = run('type: "SoftmaxWithLoss"', [ip, [0, 1, 2, 1]], dtype=np.float32)
    np.testing.assert_allclose(float(net.blobs["loss"].data), expect, rtol=1e-5)
    np.testing.assert_allclose(float(net.loss), 2 * expect, rtol=1e-5)  # loss_weight 2
    np.testing.assert_allclose(net.blobs["prob"].data, softmax(ip), rtol=1e-5)
    acc = np.mean(ip.argmax(axis=1) == [0, 1, 2, 1])
    np.testing.assert_allclose(float(net.blobs["acc"].data), acc)
    net.backward()
    np.testing.assert_allclose(net.blobs["ip"].diff, 2 * grad, rtol=1e-4, atol=1e-7)
    assert not np.any(net.blobs["label"].diff)  # force_backward never reaches the label


def test_net_softmax_engine_cudnn_falls_back_to_numpy_with_a_warning(tmp_path, monkeypatch):
    from minicaffe import TRAIN, Net, backend

    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_checked", True)  # as on a machine without a GPU
    path = tmp_path / "net.prototxt"
    path.write_text(NET.replace("engine: CAFFE", "engine: CUDNN"))
    with pytest.warns(RuntimeWarning, match="engine CUDNN requested.*layers loss"):
        net = Net(str(path), TRAIN)
    assert net.layer_dict["loss"].xp is np
    net.blobs["label"].data[...] = [0, 1, 2, 1]
    net.forward()
    assert np.isfinite(float(net.blobs["loss"].data))
