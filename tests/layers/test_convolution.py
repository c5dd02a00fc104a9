"""Convolution: Caffe goldens, a direct reference, gradients over the options, every plan."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from minicaffe import functional
from minicaffe.errors import LayerError, ShapeError
from tests.golden import replay
from tests.helpers import check_gradient, make_layer, run_forward

CASES = [
    "conv_basic",
    "conv_pad1_stride2",
    "conv_rect",
    "conv_dilation",
    "conv_group",
    "conv_nobias",
    "conv_1x1",
    "conv_two_bottoms",
    "conv_nd_3d",
]


@pytest.fixture(params=["auto", "auto-shift", "nchw", "nchw-rows", "chwn", "hybrid"])
def layout(request, monkeypatch):
    """Run with the automatic plan choice and with each 2-D plan forced, tiles of ~300 values
    (many row/image tiles); "nchw-rows": the direct plan's kernel-row forward wherever its
    geometry allows (vertical stride 1), at any size; "auto-shift": the shifted-view forward
    for every stride-1 2-D layer, as in a forward-only net (the backward then rebuilds what it
    needs)."""
    monkeypatch.setattr(functional, "CONV_LAYOUT", request.param.split("-")[0])
    if request.param == "auto-shift":
        from minicaffe.layer import Layer

        monkeypatch.setattr(functional, "SHIFT_MIN_CHANNELS", 1)
        monkeypatch.setattr(functional, "SHIFT_MAX_WASTE", 1e9)
        monkeypatch.setattr(functional, "SHIFT_MAX_OUT", 1 << 62)
        monkeypatch.setattr(functional, "SHIFT_MIN_WIDE", 0)
        monkeypatch.setattr(Layer, "backward_expected", False)
        return request.param
    if request.param == "nchw-rows":
        monkeypatch.setattr(functional, "WHOLE_ELEMS", 0)
        monkeypatch.setattr(functional, "ROWS_MIN_MACS", 1)
        monkeypatch.setattr(functional, "ROWS_MIN_POSITIONS", 1)
    if request.param != "auto":  # many tiles, shared by two threads
        monkeypatch.setattr(functional, "TILE_ELEMS", 300)
        monkeypatch.setattr(functional, "PARALLEL_MIN_ELEMS", 0)
        monkeypatch.setattr(functional, "NUM_THREADS", 2)
    return request.param


@pytest.mark.parametrize("case", CASES)
def test_golden(case, xp, layout):
    replay(case, xp=xp)


def reference_conv(x, w, b, stride, pad, dilation, group):
    """Direct N-d convolution with loops over output positions (test-only reference)."""
    n, c = x.shape[:2]
    o = w.shape[0]
    nd = x.ndim - 2
    xp_ = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pad])
    k = w.shape[2:]
    out = [
        (x.shape[2 + i] + 2 * pad[i] - (dilation[i] * (k[i] - 1) + 1)) // stride[i] + 1
        for i in range(nd)
    ]
    y = np.zeros((n, o, *out))
    cg, og = c // group, o // group
    for pos in itertools.product(*[range(s) for s in out]):
        sl = tuple(
            slice(
                pos[i] * stride[i], pos[i] * stride[i] + dilation[i] * (k[i] - 1) + 1, dilation[i]
            )
            for i in range(nd)
        )
        patch = xp_[(slice(None), slice(None)) + sl]  # (n, c, *k)
        for g in range(group):
            pg = patch[:, g * cg : (g + 1) * cg].reshape(n, -1)
            wg = w[g * og : (g + 1) * og].reshape(og, -1)
            y[(slice(None), slice(g * og, (g + 1) * og)) + pos] = pg @ wg.T
    if b is not None:
        y += b.reshape((1, -1) + (1,) * nd)
    return y


PARAMS = [
    # (convolution_param text, input shape)
    ("num_output: 4 kernel_size: 3", (2, 3, 6, 5)),
    ("num_output: 3 kernel_size: 3 pad: 1 stride: 2", (2, 2, 7, 6)),
    (
        "num_output: 2 kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0 stride_h: 2 stride_w: 1",
        (2, 3, 6, 5),
    ),
    ("num_output: 4 kernel_size: 2 dilation: 2 pad: 1", (2, 2, 6, 6)),
    ("num_output: 4 kernel_size: 3 group: 2 pad: 1", (2, 4, 5, 5)),
    ("num_output: 4 kernel_size: 3 group: 2 pad: 1", (3, 6, 5, 4)),  # auto: batch-innermost
    ("num_output: 3 kernel_size: 3 bias_term: false", (1, 2, 5, 5)),
    ("num_output: 5 kernel_size: 1", (2, 3, 3, 4)),
    ("num_output: 4 kernel_size: 1 group: 2 stride: 2", (2, 4, 5, 5)),
    ("num_output: 2 kernel_size: 2 kernel_size: 3 stride: 1 stride: 2 pad: 0 pad: 1", (2, 2, 4, 5)),
    ("num_output: 3 kernel_size: 3 force_nd_im2col: true pad: 1", (2, 2, 4, 4)),
    ("num_output: 2 kernel_size: 2 kernel_size: 2 kernel_size: 3 pad: 1", (1, 2, 3, 3, 4)),
    ("num_output: 3 kernel_size: 2 axis: 2", (2, 1, 2, 4, 4)),
]


def _weights(layer):
    return [layer.blobs[i].data for i in range(len(layer.blobs))]


def _make(param, shape, seed=0, xp=np):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    text = (
        f"type: 'Convolution' convolution_param {{ {param} "
        "weight_filler { type: 'gaussian' std: 0.5 } "
        "bias_filler { type: 'uniform' min: -1 max: 1 } }"
    )
    layer, bottom, top = make_layer(text, [x], xp=xp)
    return layer, bottom, top, x


def _spatial(layer):
    return layer.stride, layer.pad, layer.dilation, layer.group


@pytest.mark.parametrize("param,shape", PARAMS)
def test_forward_matches_reference(param, shape, layout):
    layer, bottom, top, x = _make(param, shape)
    (y,) = run_forward(layer, bottom, top)
    ws = _weights(layer)
    if layer.channel_axis != 1:  # fold the leading axes into the batch for the reference
        lead = x.shape[: layer.channel_axis]
        x = x.reshape((-1,) + x.shape[layer.channel_axis :])
        y = y.reshape((-1,) + y.shape[layer.channel_axis :])
        assert y.shape[0] == int(np.prod(lead))
    ref = reference_conv(x, ws[0], ws[1] if len(ws) > 1 else None, *_spatial(layer))
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("param,shape", PARAMS[:9])
def test_gradient(param, shape, layout):
    layer, bottom, top, _ = _make(param, shape, seed=1)
    check_gradient(layer, bottom, top)


def test_gradient_two_bottoms_accumulates_weights():
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((1, 2, 4, 4)) for _ in range(2)]
    layer, bottom, top = make_layer(
        "type: 'Convolution' top: 'a' top: 'b' convolution_param { num_output: 2 kernel_size: 3 "
        "pad: 1 weight_filler { type: 'gaussian' std: 0.5 } }",
        xs,
    )
    check_gradient(layer, bottom, top)


def test_weight_gradient_accumulates_and_bottom_is_assigned():
    layer, bottom, top, _ = _make("num_output: 2 kernel_size: 3", (2, 2, 5, 5), seed=4)
    run_forward(layer, bottom, top)
    top[0].diff[...] = 1.0
    for p in layer.blobs:
        p.diff.fill(0)
    layer.backward(top, [True], bottom)
    once = [p.diff.copy() for p in layer.blobs]
    dx_once = bottom[0].diff.copy()
    layer.backward(top, [True], bottom)
    for p, g in zip(layer.blobs, once):
        np.testing.assert_allclose(p.diff, 2 * g)
    np.testing.assert_allclose(bottom[0].diff, dx_once)


def test_reshape_to_new_batch_and_size():
    layer, bottom, top, _ = _make("num_output: 3 kernel_size: 3 pad: 1", (2, 2, 5, 5))
    run_forward(layer, bottom, top)
    bottom[0].reshape((3, 2, 7, 6))
    bottom[0].data[...] = np.random.default_rng(5).standard_normal((3, 2, 7, 6))
    (y,) = run_forward(layer, bottom, top)
    assert y.shape == (3, 3, 7, 6)
    ws = _weights(layer)
    np.testing.assert_allclose(y, reference_conv(bottom[0].data, ws[0], ws[1], *_spatial(layer)))


def test_float32_matches_float64():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 3, 9, 9))
    text = (
        "type: 'Convolution' convolution_param { num_output: 8 kernel_size: 3 pad: 1 "
        "weight_filler { type: 'xavier' } }"
    )
    l64, b64, t64 = make_layer(text, [x])
    l32, b32, t32 = make_layer(text, [x], dtype=np.float32)
    l32.blobs[0].data[...] = l64.blobs[0].data
    np.testing.assert_allclose(
        run_forward(l32, b32, t32)[0], run_forward(l64, b64, t64)[0], rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize(
    "param,shape,err,match",
    [
        ("num_output: 4 kernel_size: 3 group: 2", (1, 3, 5, 5), ShapeError, "divisible by group"),
        ("num_output: 3 kernel_size: 3 group: 2", (1, 4, 5, 5), LayerError, "num_output"),
        ("num_output: 2 kernel_size: 7", (1, 1, 5, 5), ShapeError, "does not fit"),
        ("num_output: 2 kernel_size: 3 dilation: 3", (1, 1, 5, 5), ShapeError, "does not fit"),
        ("num_output: 2", (1, 1, 5, 5), LayerError, "kernel_size"),
        (
            "num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3",
            (1, 1, 5, 5),
            LayerError,
            "not both",
        ),
        ("num_output: 2 kernel_h: 3", (1, 1, 5, 5), LayerError,
         r"kernel_h/kernel_w must be >= 1 .* \(3, 0\)"),
        ("num_output: 2 kernel_size: 3 stride_w: 2", (1, 1, 5, 5), LayerError,
         r"stride_h/stride_w must be >= 1"),
        ("num_output: 2 kernel_size: 3 stride: 0", (1, 1, 5, 5), LayerError, "stride"),
        (
            "num_output: 2 kernel_size: 3 kernel_size: 3",
            (1, 1, 4, 5, 5),
            LayerError,
            "once per spatial axis",
        ),
        ("num_output: 2 kernel_h: 2 kernel_w: 2", (1, 1, 4, 5, 5), LayerError, "2-D"),
        ("kernel_size: 3", (1, 1, 5, 5), LayerError, "num_output"),
        ("num_output: 2 kernel_size: 1 axis: 3", (1, 1, 5, 5), ShapeError, "spatial axis"),
    ],
)
def test_errors(param, shape, err, match):
    with pytest.raises(err, match=match):
        _make(param, shape)


def test_error_names_layer_and_channel_change():
    layer, bottom, top, _ = _make("num_output: 2 kernel_size: 3", (1, 2, 5, 5))
    bottom[0].reshape((1, 3, 5, 5))
    with pytest.raises(ShapeError, match=r"layer 'layer' \(Convolution\).*2 channels"):
        layer.reshape(bottom, top)


def test_given_weights_of_wrong_shape_are_rejected():
    from google.protobuf import text_format

    from minicaffe.backend import CPU_DEVICE
    from minicaffe.blob import Blob
    from minicaffe.proto import caffe_pb2
    from minicaffe.registry import create_layer

    lp = caffe_pb2.LayerParameter()
    text_format.Merge(
        "name: 'c' type: 'Convolution' convolution_param { num_output: 2 kernel_size: 3 } "
        "blobs { shape { dim: 2 dim: 1 dim: 2 dim: 2 } data: [1,2,3,4,5,6,7,8] }",
        lp,
    )
    layer = create_layer(lp, phase=0, device=CPU_DEVICE, dtype=np.float64)
    x = Blob(1, 1, 4, 4, dtype=np.float64)
    with pytest.raises(ShapeError, match="parameter blob 0"):
        layer.set_up([x], [Blob(dtype=np.float64)])


def test_plan_choice():
    def plan(n, c, o, hw, k=5, stride=1, pad=0, group=1):
        geom = functional.ConvGeometry((k, k), (stride,) * 2, (pad,) * 2, (1, 1), (hw, hw))
        return functional.make_conv_plan(np, np.float32, n, c, o, geom, group)

    assert isinstance(plan(64, 1, 20, 28), functional.Conv2dDirectPlan)  # LeNet conv1
    whole = plan(64, 20, 50, 12)  # LeNet conv2: the whole batch in one batch-innermost tile
    assert isinstance(whole, functional.Conv2dPlan) and len(whole.tiles) == 1
    hybrid = plan(100, 32, 32, 16, pad=2)  # cifar10 conv2: columns above WHOLE_ELEMS
    assert isinstance(hybrid, functional.Conv2dHybridPlan)
    assert isinstance(hybrid.bwd, functional.Conv2dPlan)
    caffenet2 = plan(10, 96, 256, 27, pad=2, group=2)  # forward by kernel rows
    assert isinstance(caffenet2, functional.Conv2dDirectPlan) and caffenet2.rows
    # 13x13, grouped: the forward by shifted views (its accumulator fits), the backward the
    # batch-innermost plan
    caffenet4 = plan(10, 384, 384, 13, k=3, pad=1, group=2)
    assert isinstance(caffenet4, functional.Conv2dHybridPlan) and not caffenet4.reuse
    assert isinstance(caffenet4.fwd, functional.Conv2dShiftPlan)
    assert isinstance(caffenet4.bwd, functional.Conv2dPlan)
    # CaffeNet conv3: the accumulator (384 x 13 x 15 x 10) is past SHIFT_MAX_OUT
    assert isinstance(plan(10, 256, 384, 13, k=3, pad=1), functional.Conv2dPlan)
    # whole-batch columns fit: the forward by shifted views only when no backward follows
    grouped = plan(8, 256, 256, 14, k=3, pad=1, group=2)
    assert isinstance(grouped, functional.Conv2dHybridPlan) and grouped.reuse
    assert isinstance(grouped.fwd, functional.Conv2dShiftPlan)
    assert isinstance(grouped.bwd, functional.Conv2dPlan) and len(grouped.bwd.tiles) == 1
    # wide rows 29 % longer than 7x7 outputs; few wide positions (batch 1); too few channels
    # per group; strided
    assert isinstance(plan(10, 192, 384, 7, k=3, pad=1), functional.Conv2dPlan)
    assert isinstance(plan(1, 256, 256, 14, k=3, pad=1), functional.Conv2dPlan)
    assert not isinstance(plan(10, 8, 16, 28, k=3, pad=1), functional.Conv2dHybridPlan)
    assert isinstance(plan(10, 64, 64, 28, k=3, pad=1, stride=2), functional.Conv2dDirectPlan)
    assert isinstance(plan(10, 3, 96, 227, k=11, stride=4), functional.Conv2dDirectPlan)
    assert isinstance(plan(2, 8, 4, 7, k=1), functional.Conv1x1Plan)


@pytest.mark.parametrize("c", [6, 2])  # the batch-innermost plan, the direct NCHW plan
def test_whole_batch_plan_reuses_forward_columns_only_for_the_same_input(c, monkeypatch):
    monkeypatch.setattr(functional, "TILE_ELEMS", 200)  # direct plan: chunks of 1 image
    monkeypatch.setattr(functional, "PARALLEL_MIN_ELEMS", 0)
    monkeypatch.setattr(functional, "NUM_THREADS", 2)
    rng = np.random.default_rng(3)
    geom = functional.ConvGeometry((3, 3), (1, 1), (1, 1), (1, 1), (6, 5))
    plan = functional.make_conv_plan(np, np.float64, 3, c, 4, geom, 1)
    if c > 4:
        assert isinstance(plan, functional.Conv2dPlan) and len(plan.tiles) == 1
    else:
        assert isinstance(plan, functional.Conv2dDirectPlan) and plan.full_col is not None
        assert len(plan.chunks) == 3
    x1, x2 = rng.standard_normal((2, 3, c, 6, 5))
    w2 = rng.standard_normal((4, c * 9))
    dy = rng.standard_normal((3, 4, 6, 5))
    y = np.empty((3, 4, 6, 5))

    def grads(x_fwd, x_bwd):
        dw, dx = np.zeros_like(w2), np.empty_like(x_bwd)
        plan.forward(x_fwd, w2, y)
        plan.backward(w2, dy, dw=dw, dx=dx, x=x_bwd, x_loaded=x_fwd is x_bwd)
        return dw, dx

    ref_dw = np.einsum("nohw,nckhw->ock", dy, _columns(x2, 3)).reshape(4, c * 9)
    # dx: each top-diff value spread back over its 3x3 window (pad 1)
    w5 = w2.reshape(4, c, 3, 3)
    ref_dx = np.zeros((3, c, 8, 7))
    for i in range(3):
        for j in range(3):
            ref_dx[:, :, i : i + 6, j : j + 5] += np.einsum("nohw,oc->nchw", dy, w5[:, :, i, j])
    ref_dx = ref_dx[:, :, 1:7, 1:6]
    for x_fwd in (x2, x1):  # reused columns, then columns rebuilt for another input
        dw, dx = grads(x_fwd, x2)
        np.testing.assert_allclose(dw, ref_dw, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx, ref_dx, rtol=1e-12, atol=1e-12)
    # the data gradient overwrote the columns: a second backward must rebuild them
    plan.forward(x2, w2, y)
    dw1, dw2 = np.zeros_like(w2), np.zeros_like(w2)
    plan.backward(w2, dy, dw=dw1, dx=np.empty_like(x2), x=x2, x_loaded=True)
    plan.backward(w2, dy, dw=dw2, x=x2, x_loaded=True)
    np.testing.assert_allclose(dw2, ref_dw, rtol=1e-12, atol=1e-12)


def _columns(x, k):
    """(N, C, k*k, H, W) columns of a 'same'-padded stride-1 k x k convolution."""
    p = k // 2
    xp_ = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    h, w = x.shape[2:]
    return np.stack([xp_[:, :, i : i + h, j : j + w] for i in range(k) for j in range(k)], axis=2)


def test_parallel_helper_splits_and_nests(monkeypatch):
    monkeypatch.setattr(functional, "PARALLEL_MIN_ELEMS", 0)
    monkeypatch.setattr(functional, "NUM_THREADS", 2)
    seen = []

    def inner(a, b):
        seen.append(("inner", a, b))

    def outer(a, b):
        functional.parallel(inner, 4)  # nested: runs serially instead of waiting on itself
        seen.append(("outer", a, b))

    functional.parallel(outer, 2, gemm=True)
    assert sorted(seen) == [("inner", 0, 4), ("inner", 0, 4), ("outer", 0, 1), ("outer", 1, 2)]


def test_parallel_dynamic_covers_every_unit_once(monkeypatch):
    monkeypatch.setattr(functional, "PARALLEL_MIN_ELEMS", 0)
    monkeypatch.setattr(functional, "NUM_THREADS", 2)
    seen = []
    functional.parallel(lambda a, b: seen.append((a, b)), 7, dynamic=True)
    assert sorted(seen) == [(i, i + 1) for i in range(7)]


@pytest.mark.parametrize(
    "geom_args, group",
    [
        (((3, 3), (1, 1), (1, 1), (1, 1)), 1),  # "same" 3x3
        (((5, 3), (1, 2), (2, 0), (1, 1)), 2),  # rectangular, horizontal stride, groups
        (((3, 3), (1, 1), (0, 0), (2, 2)), 1),  # dilation, no padding (dx written in place)
        (((3, 2), (1, 1), (0, 1), (1, 3)), 2),  # horizontal dilation, one-sided padding
    ],
)
@pytest.mark.parametrize("threads, tile", [(1, 1 << 19), (2, 1)])
def test_kernel_row_direct_plan_matches_whole_kernel_columns(geom_args, group, threads, tile,
                                                             monkeypatch):
    """The direct plan by kernel rows against its whole-kernel columns, over several images per
    thread and two calls with other data (so no buffer may keep the previous call's values)."""
    monkeypatch.setattr(functional, "PARALLEL_MIN_ELEMS", 0)
    monkeypatch.setattr(functional, "NUM_THREADS", threads)
    monkeypatch.setattr(functional, "WHOLE_ELEMS", 0)
    monkeypatch.setattr(functional, "ROWS_MIN_POSITIONS", 1)
    rng = np.random.default_rng(7)
    n, c, o, size = 5, 4, 6, (9, 11)
    geom = functional.ConvGeometry(*geom_args, size)
    plans = []
    for macs in (0, 1):  # whole-kernel columns, kernel rows
        monkeypatch.setattr(functional, "ROWS_MIN_MACS", macs)
        plans.append(functional.Conv2dDirectPlan(np, np.float64, n, c, o, geom, group, tile))
    assert [p.rows for p in plans] == [False, True]
    if tile == 1:
        assert len(plans[1].chunks) == n  # one image per chunk, chunks shared by two threads
    w2 = rng.standard_normal((o, c // group * geom.kernel_count))
    bias = rng.standard_normal(o)
    for _ in range(2):
        x = rng.standard_normal((n, c) + size)
        dy = rng.standard_normal((n, o) + geom.out_size)
        results = []
        for plan in plans:
            y = np.full((n, o) + geom.out_size, np.nan)
            dw, db = np.full_like(w2, 0.5), np.zeros(o)
            dx = np.full_like(x, np.nan)
            plan.forward(x, w2, y, bias)
            plan.backward(w2, dy, dw=dw, dx=dx, db=db, x=x, x_loaded=True)
            dx_only = np.full_like(x, np.nan)
            plan.backward(w2, dy, dx=dx_only)  # the data gradient alone (Deconvolution)
            results.append((y, dw, db, dx, dx_only))
        for whole, rows in zip(*results):
            np.testing.assert_allclose(rows, whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pads, expect", [("pad_w: 1", (0, 1)), ("pad_h: 2", (2, 0))])
def test_one_of_pad_h_and_pad_w_leaves_the_other_zero(pads, expect):
    """Caffe reads pad_h/pad_w as a pair with each field's default (0), so nets converted from
    other frameworks that write only the non-zero pad load."""
    x = np.random.default_rng(3).standard_normal((1, 2, 5, 6))
    layer, bottom, top, _ = _make(f"num_output: 3 kernel_h: 3 kernel_w: 3 {pads}", x.shape)
    bottom[0].data[...] = x
    run_forward(layer, bottom, top)
    ph, pw = expect
    assert top[0].shape == (1, 3, 5 + 2 * ph - 2, 6 + 2 * pw - 2)
    w, b = (blob.data for blob in layer.blobs)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ref = np.zeros(top[0].shape)
    for i in range(ref.shape[2]):
        for j in range(ref.shape[3]):
            ref[0, :, i, j] = np.tensordot(w, xp[0, :, i:i + 3, j:j + 3], axes=3) + b
    np.testing.assert_allclose(top[0].data, ref, rtol=1e-10)


@pytest.mark.parametrize(
    "geom_args, group, size",
    [
        (((3, 3), (1, 1), (1, 1), (1, 1)), 1, (7, 7)),  # "same" 3x3
        (((5, 3), (1, 1), (2, 0), (1, 1)), 2, (9, 8)),  # rectangular, one-sided padding
        (((3, 3), (1, 1), (2, 2), (2, 2)), 1, (6, 9)),  # dilation
        (((2, 3), (1, 1), (0, 1), (1, 3)), 2, (5, 10)),  # horizontal dilation
    ],
)
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_shift_plan_matches_direct_convolution(geom_args, group, size, dtype, tol):
    """The shifted-view forward against the loop reference, twice with other data and other
    weights (no buffer may keep the last call's input or weights), with and without a bias."""
    rng = np.random.default_rng(11)
    n, c, o = 3, 4, 6
    geom = functional.ConvGeometry(*geom_args, size)
    plan = functional.Conv2dShiftPlan(np, dtype, n, c, o, geom, group)
    for bias in (rng.standard_normal(o), None):
        x = rng.standard_normal((n, c) + size)
        w = rng.standard_normal((o, c // group) + geom.kernel)
        y = np.full((n, o) + geom.out_size, np.nan, dtype)
        plan.forward(x.astype(dtype), w.reshape(o, -1).astype(dtype), y,
                     None if bias is None else bias.astype(dtype))
        ref = reference_conv(x, w, bias, geom.stride, geom.pad, geom.dilation, group)
        np.testing.assert_allclose(y, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("whole", [True, False])  # the batch-innermost plan, the direct one
def test_forward_only_layers_take_the_shift_plan_and_gradients_stay_right(whole, monkeypatch):
    """A plan with ``reuse`` runs its backward plan's forward while a backward is expected, the
    shifted-view forward otherwise; either way the backward (told the input is the forward's)
    gives the same gradients, since it does not reuse columns the shift forward never built."""
    monkeypatch.setattr(functional, "SHIFT_MIN_CHANNELS", 1)
    monkeypatch.setattr(functional, "SHIFT_MAX_WASTE", 1.0)
    monkeypatch.setattr(functional, "SHIFT_MIN_WIDE", 0)
    if not whole:
        monkeypatch.setattr(functional, "TILE_ELEMS", 200)
    rng = np.random.default_rng(5)
    n, c, o = (3, 6, 4) if whole else (2, 2, 3)
    geom = functional.ConvGeometry((3, 3), (1, 1), (1, 1), (1, 1), (6, 6) if whole else (40, 40))
    plan = functional.make_conv_plan(np, np.float64, n, c, o, geom, 1)
    assert isinstance(plan, functional.Conv2dHybridPlan) and plan.reuse
    assert isinstance(plan.fwd, functional.Conv2dShiftPlan)
    inner = functional.Conv2dPlan if whole else functional.Conv2dDirectPlan
    assert isinstance(plan.bwd, inner)
    w2 = rng.standard_normal((o, c * 9))
    b = rng.standard_normal(o)
    calls = []
    for name in ("fwd", "bwd"):
        part = getattr(plan, name)
        monkeypatch.setattr(part, "forward",
                            lambda *a, _f=part.forward, _n=name: (calls.append(_n), _f(*a)))
    results = []
    for expected in (True, False, True):
        x0, x = rng.standard_normal((2, n, c, 6 if whole else 40, 6 if whole else 40))
        dy = rng.standard_normal((n, o) + geom.out_size)
        plan.backward_expected = expected
        y = np.empty((n, o) + geom.out_size)
        plan.forward(x0, w2, y, b)  # earlier columns: must not be taken for x's
        plan.forward(x, w2, y, b)
        dw, dx = np.zeros_like(w2), np.empty_like(x)
        plan.backward(w2, dy, dw=dw, dx=dx, x=x, x_loaded=True)
        w4 = w2.reshape(o, c, 3, 3)
        np.testing.assert_allclose(y, reference_conv(x, w4, b, (1, 1), (1, 1), (1, 1), 1),
                                   rtol=1e-12, atol=1e-12)
        results.append((dw, dx, x, dy))
    assert calls == ["bwd", "bwd", "fwd", "fwd", "bwd", "bwd"]
    ref_plan = functional.ConvPlan(np, np.float64, n, c, o, geom, 1)
    for dw, dx, x, dy in results:
        rdw, rdx = np.zeros_like(w2), np.empty_like(x)
        ref_plan.backward(w2, dy, dw=rdw, dx=rdx, x=x)
        np.testing.assert_allclose(dw, rdw, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(dx, rdx, rtol=1e-10, atol=1e-10)


def test_net_tells_layers_whether_a_backward_follows():
    """Deploy nets (no loss) run every layer forward-only; a net with a loss expects the
    backward of the layers under it."""
    from google.protobuf import text_format

    import minicaffe
    from minicaffe.proto import caffe_pb2

    text = """
    input: "data" input_shape { dim: 9 dim: 16 dim: 10 dim: 10 }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 16 kernel_size: 3 pad: 1 } }
    layer { name: "flat" type: "Flatten" bottom: "conv" top: "flat" }
    layer { name: "ip" type: "InnerProduct" bottom: "flat" top: "ip"
            inner_product_param { num_output: 3 } }
    """
    loss = """
    input: "label" input_shape { dim: 9 }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
    """
    for body, expected in ((text, False), (text + loss, True)):
        param = text_format.Merge(body, caffe_pb2.NetParameter())
        net = minicaffe.Net(param, minicaffe.TEST)
        conv = net.layers[net._layer_names.index("conv")]
        assert conv.backward_expected is expected
        net.blobs["data"].data[...] = np.random.default_rng(0).standard_normal((9, 16, 10, 10))
        net.forward()
        assert [type(p).__name__ for p in conv.plans] == ["Conv2dHybridPlan"]
        assert conv.plans[0].backward_expected is expected
