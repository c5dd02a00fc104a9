"""SoftmaxWithLoss: Caffe's worked cases, Mocha's class weights, PyTorch's weighted mean and label
smoothing, finite-difference gradients for every option, and the chunked/threaded NumPy passes."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe import losses
from minicaffe.backend import to_numpy
from tests.helpers import LOSS_CASES, case_input, case_output, check_gradient, make_layer

CASES = LOSS_CASES
RTOL = 1e-9
out, inp = case_output, case_input


def run(text, arrays, xp=np, lam=None, dtype=np.float64, tops=None):
    """Forward + backward; returns (loss, bottom0 diff, layer, bottom, top)."""
    layer, bottom, top = make_layer(text, arrays, xp=xp, dtype=dtype, num_tops=tops)
    layer.forward(bottom, top)
    if lam is not None:
        top[0].diff[...] = lam
    layer.backward(top, [True] + [False] * (len(bottom) - 1), bottom)
    return float(to_numpy(top[0].data)), to_numpy(bottom[0].diff).copy(), layer, bottom, top


def swl(params="", extra=""):
    return f'type: "SoftmaxWithLoss" loss_param {{ {params} }} {extra}'


def gradcheck(layer, bottom, top, **kw):
    layer.fused = False  # check_gradient clears bottom diffs between forward and backward
    check_gradient(layer, bottom, top, check_bottoms=[0], **kw)


# ---------------------------------------------------------------------------- Caffe cases


def test_c01_default_valid_with_prob_top(xp):
    x, y = inp("C01", "bottom0"), inp("C01", "bottom1")
    loss, diff, _, _, top = run(swl() + ' top: "loss" top: "prob"', [x, y], xp)
    np.testing.assert_allclose(loss, out("C01", "top0"), rtol=RTOL)
    np.testing.assert_allclose(to_numpy(top[1].data), out("C01", "prob"), rtol=RTOL)
    np.testing.assert_allclose(diff, out("C01", "bottom0_diff"), rtol=RTOL, atol=1e-15)


@pytest.mark.parametrize("mode", ["FULL", "VALID", "BATCH_SIZE", "NONE"])
def test_c02_spatial_ignore_255_every_mode(xp, mode):
    x, y = inp("C02", "bottom0"), inp("C02", "bottom1")
    loss, diff, *_ = run(swl(f"ignore_label: 255 normalization: {mode}"), [x, y], xp)
    np.testing.assert_allclose(loss, out("C02", f"{mode}: top0"), rtol=RTOL)
    np.testing.assert_allclose(diff, out("C02", f"{mode}: bottom0_diff"), rtol=RTOL, atol=1e-15)
    assert np.all(diff[0, :, 0, 1] == 0)  # the ignored position: exactly zero


@pytest.mark.parametrize(
    "params,key",
    [
        ("normalize: false", "normalize=false -> top0"),
        ("normalize: true", "normalize=true -> top0"),
        ("normalize: false normalization: FULL", "normalize=false + normalization=FULL -> top0"),
        ("normalize: true normalization: NONE", "normalize=true + normalization=NONE -> top0"),
    ],
)
def test_c03_legacy_normalize(params, key):
    x, y = inp("C02", "bottom0"), inp("C02", "bottom1")
    loss, *_ = run(swl(f"ignore_label: 255 {params}"), [x, y])
    np.testing.assert_allclose(loss, out("C03", key), rtol=RTOL)


@pytest.mark.parametrize("mode", ["FULL", "VALID", "BATCH_SIZE", "NONE"])
def test_c04_axis_minus_one_batch_size_is_outer(xp, mode):
    x, y = inp("C04", "bottom0"), inp("C04", "bottom1")
    text = swl(f"ignore_label: 9 normalization: {mode}", "softmax_param { axis: -1 }")
    loss, diff, *_ = run(text, [x, y], xp)
    np.testing.assert_allclose(loss, out("C04", f"{mode}: top0"), rtol=RTOL)
    if mode in ("VALID", "BATCH_SIZE"):
        np.testing.assert_allclose(
            diff, out("C04", f"bottom0_diff ({mode})"), rtol=RTOL, atol=1e-15
        )


@pytest.mark.parametrize("mode", ["FULL", "VALID", "BATCH_SIZE", "NONE", "WEIGHTED"])
def test_c05_c11_all_ignored_gives_zero_not_nan(xp, mode):
    x, y = inp("C05", "bottom0"), inp("C05", "bottom1")
    loss, diff, *_ = run(swl(f"ignore_label: -1 normalization: {mode}"), [x, y], xp)
    assert loss == 0.0
    assert np.all(diff == 0)


def test_c06_loss_weight_scales_gradient_not_top():
    x, y = inp("C06", "bottom0"), inp("C06", "bottom1")
    loss, diff, layer, _, top = run(swl(extra="loss_weight: 3"), [x, y])
    np.testing.assert_allclose(loss, out("C06", "top0"), rtol=RTOL)
    assert float(top[0].diff) == 3.0
    np.testing.assert_allclose(3 * loss, out("C06", "net_loss_contribution"), rtol=RTOL)
    np.testing.assert_allclose(diff, out("C06", "bottom0_diff"), rtol=RTOL)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_c07_probability_clamped_at_flt_min(xp, dtype):
    x, y = inp("C07", "bottom0"), inp("C07", "bottom1")
    loss, diff, *_ = run(swl(), [x, y], xp, dtype=dtype)
    np.testing.assert_allclose(loss, out("C07", "top0"), rtol=1e-6)
    np.testing.assert_allclose(diff, out("C07", "bottom0_diff"), rtol=1e-6)


def test_c08_float_labels_truncate_toward_zero(xp):
    x, y = inp("C08", "bottom0"), inp("C08", "bottom1")
    loss, diff, *_ = run(swl("ignore_label: -1"), [x, y], xp)
    np.testing.assert_allclose(loss, out("C08", "top0"), rtol=RTOL)
    np.testing.assert_allclose(diff, out("C08", "bottom0_diff"), rtol=RTOL)


def test_c23_caffe_ignore_label_identity():
    rs = np.random.RandomState(1701)
    x = rs.normal(0, 10, (10, 5, 2, 3))
    y = rs.randint(0, 5, (10, 1, 2, 3)).astype(np.float64)
    full, *_ = run(swl("normalize: false"), [x, y])
    np.testing.assert_allclose(full, out("C23", "full_loss"), rtol=1e-9)
    total = sum(run(swl(f"normalize: false ignore_label: {k}"), [x, y])[0] for k in range(5))
    np.testing.assert_allclose(total, out("C23", "sum_over_ignored"), rtol=1e-9)
    np.testing.assert_allclose(total, 4 * full, rtol=1e-9)


def test_c24_spatial_ignore_minus_one_matches_pytorch_mean():
    x = inp("C24", "x")
    y = inp("C24", "t").reshape(2, 1, 1, 2)
    loss, *_ = run(swl("ignore_label: -1"), [x, y])
    np.testing.assert_allclose(loss, out("C24", "PyTorch 'mean' ignore_index=-1"), rtol=RTOL)


# ---------------------------------------------------------------------------- class weights

W10 = "class_weight: 0.2 class_weight: 1 class_weight: 3"


@pytest.mark.parametrize(
    "params,key,grad",
    [
        # Chainer normalize=True == Caffe Infogain diag(w) VALID == SegNet: unweighted valid count
        (
            f"{W10} weight_normalization: NO",
            "Chainer normalize=True (divide by valid count 2)",
            "grad Chainer normalize=True (= Infogain VALID = SegNet)",
        ),
        (
            "weight_by_label_freqs: true "
            "class_weighting: 0.2 class_weighting: 1 class_weighting: 3",
            "SegNet class_weighting=w, normalize=true",
            "grad Chainer normalize=True (= Infogain VALID = SegNet)",
        ),
        (
            f"{W10} weight_normalization: NO normalize: false",
            "Chainer normalize=False (divide by len(x)=3)",
            None,
        ),
        # PyTorch's weighted mean, whatever the weight normalization (a rescaling cancels)
        (
            f"{W10} normalization: WEIGHTED",
            "PyTorch reduction='mean' (divide by w[1]+w[2]=4)",
            "grad PyTorch 'mean'",
        ),
        (
            f"{W10} normalization: WEIGHTED weight_normalization: NO",
            "PyTorch reduction='mean' (divide by w[1]+w[2]=4)",
            "grad PyTorch 'mean'",
        ),
        (f"{W10} normalization: NONE weight_normalization: NO", "PyTorch reduction='sum'", None),
    ],
)
def test_c10_class_weights_against_chainer_pytorch_segnet(xp, params, key, grad):
    x, t = inp("C10", "x"), inp("C10", "t")
    loss, diff, *_ = run(swl(f"ignore_label: -1 {params}"), [x, t], xp)
    np.testing.assert_allclose(loss, out("C10", key), rtol=RTOL)
    if grad:
        np.testing.assert_allclose(diff, out("C10", grad), rtol=RTOL, atol=1e-15)


@pytest.mark.parametrize("norm", ["local", "global", "no"])
@pytest.mark.parametrize("as_bottom", [False, True])
def test_c12_mocha_per_class_weights(xp, norm, as_bottom):
    x = inp("C12", "pred_julia_CxN").T  # Julia (C, N) is NumPy (N, C)
    y = inp("C12", "label_julia_1xN").reshape(-1)
    w = inp("C12", "weights")
    mode = f"weight_normalization: {norm.upper()}"
    if as_bottom:
        loss, diff, *_ = run(swl(mode), [x, y, w], xp)
    else:
        params = " ".join(f"class_weight: {v}" for v in w)
        loss, diff, *_ = run(swl(f"{params} {mode}"), [x, y], xp)
    np.testing.assert_allclose(loss, out("C12", f":{norm} loss"), rtol=RTOL)
    np.testing.assert_allclose(diff.T, out("C12", f":{norm} diff (Julia (C,N) layout)"), rtol=RTOL)


@pytest.mark.parametrize("norm", ["local", "global", "no"])
def test_c13_mocha_per_location_weights_of_one_sample(xp, norm):
    x, y = inp("C13", "pred_numpy_NCHW"), inp("C13", "label_numpy_N1HW")
    w = inp("C13", "weights_numpy_CHW")
    loss, diff, *_ = run(swl(f"weight_normalization: {norm.upper()}"), [x, y, w], xp)
    np.testing.assert_allclose(loss, out("C13", f":{norm} loss"), rtol=RTOL)
    np.testing.assert_allclose(
        diff, out("C13", f":{norm} diff, NumPy (N,C,H,W) view"), rtol=RTOL, atol=1e-15
    )


@pytest.mark.parametrize("norm", ["local", "global", "no"])
def test_c13_full_shape_weights_equal_replicated_one_sample(norm):
    x, y = inp("C13", "pred_numpy_NCHW"), inp("C13", "label_numpy_N1HW")
    w = np.broadcast_to(inp("C13", "weights_numpy_CHW"), x.shape).copy()
    loss, diff, *_ = run(swl(f"weight_normalization: {norm.upper()}"), [x, y, w])
    np.testing.assert_allclose(loss, out("C13", f":{norm} loss"), rtol=RTOL)
    np.testing.assert_allclose(
        diff, out("C13", f":{norm} diff, NumPy (N,C,H,W) view"), rtol=RTOL, atol=1e-15
    )


def test_global_normalization_is_per_sample():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((2, 3, 2)), rng.integers(0, 3, (2, 2)).astype(float)
    w = rng.uniform(0.5, 2, (2, 3, 2))
    w_scaled = w.copy()
    w_scaled[1] *= 7  # GLOBAL makes each sample's weights sum to C * spatial: scale drops out
    a = run(swl("weight_normalization: GLOBAL"), [x, y, w])[:2]
    b = run(swl("weight_normalization: GLOBAL"), [x, y, w_scaled])[:2]
    np.testing.assert_allclose(a[0], b[0], rtol=1e-12)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-12)
    c = run(swl("weight_normalization: NO"), [x, y, w_scaled])[0]
    assert abs(c - a[0]) > 1e-3


def test_c14_mocha_dim1_equals_caffe_axis_minus_one_full():
    x = inp("C04", "bottom0")
    y = inp("C14", "label_numpy_NS")
    loss, diff, *_ = run(swl("normalization: FULL", "softmax_param { axis: -1 }"), [x, y])
    np.testing.assert_allclose(loss, out("C14", "caffe_FULL_top0"), rtol=RTOL)
    np.testing.assert_allclose(diff, out("C14", "diff_numpy_view"), rtol=RTOL)


def test_equal_weights_reproduce_unweighted_caffe():
    x, y = inp("C02", "bottom0"), inp("C02", "bottom1")
    plain = run(swl("ignore_label: 255"), [x, y])[:2]
    weighted = run(
        swl("ignore_label: 255 class_weight: 5 class_weight: 5 class_weight: 5"), [x, y]
    )[:2]
    np.testing.assert_allclose(weighted[0], plain[0], rtol=1e-12)
    np.testing.assert_allclose(weighted[1], plain[1], rtol=1e-12)


# ---------------------------------------------------------------------------- label smoothing


@pytest.mark.parametrize(
    "params,key,grad",
    [
        (
            f"{W10} normalization: WEIGHTED",
            "label_smoothing=0.1, weight=w, ignore_index=-1, 'mean'",
            "grad (weight, 'mean')",
        ),
        ("", "label_smoothing=0.1, no weight, ignore_index=-1, 'mean'", "grad (no weight, 'mean')"),
        (
            f"{W10} normalization: NONE weight_normalization: NO",
            "label_smoothing=0.1, weight=w, 'sum'",
            None,
        ),
    ],
)
def test_c21_label_smoothing_as_pytorch(xp, params, key, grad):
    x, t = inp("C21", "x"), inp("C21", "t")
    loss, diff, *_ = run(swl(f"ignore_label: -1 label_smoothing: 0.1 {params}"), [x, t], xp)
    # label_smoothing is a float32 field (0.1 is stored as 0.100000001)
    np.testing.assert_allclose(loss, out("C21", key), rtol=1e-7)
    if grad:
        np.testing.assert_allclose(diff, out("C21", grad), rtol=1e-7, atol=1e-9)


def test_label_smoothing_one_sample_weights_equal_reference():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 3))
    y = rng.integers(0, 4, (2, 3)).astype(float)
    y[0, 1] = 255
    w = rng.uniform(0.1, 2, (4, 3))
    loss, diff, *_ = run(
        swl(
            "ignore_label: 255 label_smoothing: 0.3 weight_normalization: NO "
            "normalization: WEIGHTED"
        ),
        [x, y, w],
    )
    # reference: PyTorch's formula with per-location class weights
    logp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    valid = y != 255
    yi = np.where(valid, y, 0).astype(int)
    wb = np.broadcast_to(w, x.shape)
    wy = np.take_along_axis(wb, yi[:, None], 1)[:, 0] * valid
    nll = -np.take_along_axis(logp, yi[:, None], 1)[:, 0]
    smooth = -(wb * logp).sum(axis=1) * valid
    eps = float(np.float32(0.3))  # the field is a float32
    ref = ((1 - eps) * (wy * nll).sum() + eps / 4 * smooth.sum()) / wy.sum()
    np.testing.assert_allclose(loss, ref, rtol=1e-12)


# ---------------------------------------------------------------------------- gradients

GRAD_OPTIONS = [
    "",
    "ignore_label: 2",
    "ignore_label: 2 normalization: FULL",
    "ignore_label: 2 normalization: BATCH_SIZE",
    "ignore_label: 2 normalization: NONE",
    "ignore_label: 2 normalization: WEIGHTED",
    "normalize: false",
    f"{W10}",
    f"{W10} ignore_label: 0 normalization: WEIGHTED",
    f"{W10} weight_normalization: NO normalization: NONE",
    "label_smoothing: 0.2",
    f"{W10} label_smoothing: 0.2 ignore_label: 1 normalization: WEIGHTED",
]


@pytest.mark.parametrize("params", GRAD_OPTIONS)
def test_gradient_every_option(params):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 2, 2)) * 2
    y = rng.integers(0, 3, (2, 1, 2, 2)).astype(float)
    layer, bottom, top = make_layer(swl(params, "loss_weight: 2.5"), [x, y])
    gradcheck(layer, bottom, top)


@pytest.mark.parametrize("norm", ["LOCAL", "GLOBAL", "NO"])
@pytest.mark.parametrize("wshape", ["class", "sample", "full"])
@pytest.mark.parametrize("mode", ["VALID", "WEIGHTED"])
def test_gradient_weight_bottom(norm, wshape, mode):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 3, 4))
    y = rng.integers(0, 3, (2, 4)).astype(float)
    y[1, 2] = -1
    shape = {"class": (3,), "sample": (3, 4), "full": (2, 3, 4)}[wshape]
    w = rng.uniform(0.2, 2.0, shape)
    layer, bottom, top = make_layer(
        swl(f"ignore_label: -1 weight_normalization: {norm} normalization: {mode}"), [x, y, w]
    )
    gradcheck(layer, bottom, top)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_gradient_any_axis(axis):
    rng = np.random.default_rng(axis + 20)
    x = rng.standard_normal((3, 4, 2))
    shape = list(x.shape)
    C = shape.pop(axis)
    if axis == 0:  # Caffe still asks label.shape[0] == x.shape[0]: 8 labels as (3, ...) fail
        x, C, shape = rng.standard_normal((3, 6)), 3, [3, 2]
    y = rng.integers(0, C, shape).astype(float)
    layer, bottom, top = make_layer(swl("", f"softmax_param {{ axis: {axis} }}"), [x, y])
    gradcheck(layer, bottom, top)


def test_negative_loss_weight_and_zero_loss_weight():
    x, y = inp("C01", "bottom0"), inp("C01", "bottom1")
    _, diff_neg, *_ = run(swl(), [x, y], lam=-2.0)
    np.testing.assert_allclose(diff_neg, -2 * out("C01", "bottom0_diff"), rtol=RTOL)
    _, diff_zero, *_ = run(swl(), [x, y], lam=0.0)
    assert np.all(diff_zero == 0)


def test_prob_top_gets_no_gradient_and_needs_no_loss_weight():
    x, y = inp("C01", "bottom0"), inp("C01", "bottom1")
    layer, bottom, top = make_layer(swl() + ' top: "loss" top: "prob"', [x, y])
    assert layer.loss_weights == [1.0, 0.0]
    layer.forward(bottom, top)
    top[1].diff[...] = 123.0  # ignored, as in Caffe
    layer.backward(top, [True, False], bottom)
    np.testing.assert_allclose(bottom[0].diff, out("C01", "bottom0_diff"), rtol=RTOL)


# ---------------------------------------------------------------------------- engine details


def reference(x, y, axis=1, ignore=None):
    """Straightforward float64 Caffe VALID loss and gradient."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    yv = np.asarray(y).reshape(x.shape[:-1]).astype(int)
    valid = np.ones(yv.shape, bool) if ignore is None else yv != ignore
    yi = np.where(valid, yv, 0)
    m = x.max(axis=-1, keepdims=True)
    p = np.exp(x - m)
    p /= p.sum(axis=-1, keepdims=True)
    py = np.take_along_axis(p, yi[..., None], -1)[..., 0]
    n = max(1, valid.sum())
    loss = -(np.log(np.maximum(py, losses.FLT_MIN)) * valid).sum() / n
    g = p.copy()
    np.put_along_axis(g, yi[..., None], py[..., None] - 1, -1)
    g *= valid[..., None] / n
    return loss, np.moveaxis(g, -1, axis)


@pytest.mark.parametrize("shape", [(37, 11), (5, 7, 3, 13), (3, 40)])
def test_chunked_and_threaded_passes_equal_reference(monkeypatch, shape):
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 64)
    monkeypatch.setattr(losses, "PARALLEL_MIN", 0)
    monkeypatch.setenv("MINICAFFE_NUM_THREADS", "2")
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape) * 3
    lshape = (shape[0],) + shape[2:]
    y = rng.integers(0, shape[1], lshape).astype(float)
    y.reshape(-1)[::5] = 255
    loss, diff, layer, *_ = run(swl("ignore_label: 255"), [x, y])
    assert len(layer.plan.chunks) > 2 and layer.plan.workers == 2
    ref_loss, ref_diff = reference(x, y, ignore=255)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(diff, ref_diff, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chunk_with_far_apart_maxima_stays_exact(monkeypatch, dtype):
    # one chunk holds a row with logits near 500 and rows near -500: the chunk maximum would
    # underflow those rows, so the chunk is redone with per-row maxima
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 1 << 12)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 5))
    x[0] += 500
    x[1:] -= 500
    y = rng.integers(0, 5, 6).astype(float)
    loss, diff, *_ = run(swl(), [x, y], dtype=dtype)
    ref_loss, ref_diff = reference(x.astype(dtype), y)
    # float32 logits near +-500 carry ~3e-5 of absolute rounding: within Caffe's 1e-4 budget
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(loss, ref_loss, rtol=tol)
    np.testing.assert_allclose(diff, ref_diff, rtol=tol, atol=1e-7)


def test_float32_matches_float64_reference():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((8, 21, 5, 6)) * 4
    y = rng.integers(0, 21, (8, 1, 5, 6)).astype(float)
    y[y == 3] = 255
    loss, diff, *_ = run(swl("ignore_label: 255"), [x, y], dtype=np.float32)
    ref_loss, ref_diff = reference(x.astype(np.float32), y, ignore=255)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(diff, ref_diff, rtol=1e-4, atol=1e-9)


def test_repeated_forward_backward_reuses_buffers():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 3, 5))
    y = rng.integers(0, 3, (4, 5)).astype(float)
    layer, bottom, top = make_layer(swl(), [x, y])
    layer.forward(bottom, top)
    layer.backward(top, [True, False], bottom)
    first = bottom[0].diff.copy()
    lse_buf = layer._scratch["lse"]
    layer.forward(bottom, top)
    layer.backward(top, [True, False], bottom)
    assert layer._scratch["lse"] is lse_buf
    np.testing.assert_array_equal(bottom[0].diff, first)


def test_backward_after_a_test_phase_forward():
    # the TEST phase keeps no exponentials; a backward (saliency maps) recomputes them
    from minicaffe.proto import caffe_pb2

    x, y = inp("C02", "bottom0"), inp("C02", "bottom1")
    layer, bottom, top = make_layer(swl("ignore_label: 255"), [x, y], phase=caffe_pb2.TEST)
    layer.forward(bottom, top)
    np.testing.assert_allclose(float(top[0].data), out("C02", "VALID: top0"), rtol=RTOL)
    layer.backward(top, [True, False], bottom)
    np.testing.assert_allclose(
        bottom[0].diff, out("C02", "VALID: bottom0_diff"), rtol=RTOL, atol=1e-15
    )


def test_large_then_small_logits_switch_between_shifted_and_plain_passes(monkeypatch):
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 32)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((12, 5)) * 3
    y = rng.integers(0, 5, 12).astype(float)
    layer, bottom, top = make_layer(swl(), [x + 300, y], dtype=np.float32)
    for shift in (300, 0, -300, 0):
        bottom[0].data[...] = x + shift
        layer.forward(bottom, top)
        layer.backward(top, [True, False], bottom)
        ref_loss, ref_diff = reference((x + shift).astype(np.float32), y)
        np.testing.assert_allclose(float(top[0].data), ref_loss, rtol=1e-5)
        np.testing.assert_allclose(bottom[0].diff, ref_diff, rtol=1e-4, atol=1e-7)
        assert any(layer.plan.shifted) == (shift != 0)


def test_bad_label_found_by_a_worker_thread_is_raised(monkeypatch):
    from minicaffe.errors import LabelError

    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 64)
    monkeypatch.setattr(losses, "PARALLEL_MIN", 0)
    monkeypatch.setenv("MINICAFFE_NUM_THREADS", "2")
    x = np.zeros((40, 7))
    y = np.zeros(40)
    y[37] = 7  # in the second thread's chunks
    layer, bottom, top = make_layer(swl(), [x, y])
    assert layer.plan.workers == 2
    with pytest.raises(LabelError, match=r"label 7 at index \(37,\)"):
        layer.forward(bottom, top)


def test_exponentials_wait_in_the_bottom_diff_and_a_changed_diff_is_noticed(monkeypatch):
    x, y = inp("C02", "bottom0"), inp("C02", "bottom1")
    layer, bottom, top = make_layer(swl("ignore_label: 255"), [x, y])
    passes = []
    real = losses.softmax_pass
    monkeypatch.setattr(
        "minicaffe.layers.softmax_with_loss.softmax_pass",
        lambda *a, **k: passes.append(1) or real(*a, **k),
    )
    expect = out("C02", "VALID: bottom0_diff")
    layer.forward(bottom, top)
    layer.backward(top, [True, False], bottom)  # scales the kept exponentials in place
    np.testing.assert_allclose(bottom[0].diff, expect, rtol=RTOL, atol=1e-15)
    assert len(passes) == 1
    layer.forward(bottom, top)
    bottom[0].diff[...] = 7.0  # someone writes the diff between forward and backward
    layer.backward(top, [True, False], bottom)
    np.testing.assert_allclose(bottom[0].diff, expect, rtol=RTOL, atol=1e-15)
    assert len(passes) == 3  # the pass was redone
