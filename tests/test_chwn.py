"""The batch-innermost (C, H, W, N) working layout between NumPy layers.

Nets run twice, once with the working layout (the default) and once with every blob in Caffe's
order (MINICAFFE_LAYOUT=nchw, the reference path that the layer tests and goldens check): every
blob's data and diff, every parameter gradient and the loss must agree, and blobs read from
outside always come back in NCHW order.
"""

from __future__ import annotations

import numpy as np
import pytest

import minicaffe
from minicaffe.blob import Blob


@pytest.fixture(autouse=True)
def _strided_at_any_batch(monkeypatch):
    """The nets here use small batches: let strided layers take the working layout anyway (the
    batch-size rule itself is tested below)."""
    from minicaffe import chwn

    monkeypatch.setattr(chwn, "MIN_STRIDED_BATCH", 0)


CHAIN = """
name: "chain"
force_backward: true
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 6 dim: 3 dim: 13 dim: 11 } shape { dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1
          weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
        lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
        convolution_param { num_output: 6 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1
          pad_h: 1 pad_w: 0 group: 2
          weight_filler { type: "gaussian" std: 0.3 }
          bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "relu2"
        relu_param { negative_slope: 0.1 } }
layer { name: "pool2" type: "Pooling" bottom: "relu2" top: "pool2"
        pooling_param { pool: AVE kernel_size: 2 stride: 1 pad: 1 } }
layer { name: "conv3" type: "Convolution" bottom: "pool2" top: "conv3"
        convolution_param { num_output: 5 kernel_size: 2 dilation: 2
          weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "pool3" type: "Pooling" bottom: "conv3" top: "pool3"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool3" top: "ip1"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
"""


def _run(text, monkeypatch, layout, phase=minicaffe.TRAIN, steps=2):
    monkeypatch.setenv("MINICAFFE_LAYOUT", layout)
    net = minicaffe.Net(text, phase)
    rng = np.random.default_rng(3)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.standard_normal(b.shape) * 0.3
    results = []
    for _ in range(steps):  # a second pass reuses every buffer and plan
        for name in net.inputs:
            blob = net.blobs[name]
            if name == "label":
                blob.data[...] = rng.integers(0, 4, blob.shape)
            else:
                blob.data[...] = rng.standard_normal(blob.shape)
        net.clear_param_diffs()
        loss = net.forward_prefilled()
        for name in net.outputs:  # outputs without a loss weight: random top gradients
            if not net.blob_loss_weights.get(name):
                net.blobs[name].diff[...] = rng.standard_normal(net.blobs[name].shape)
        net.backward_from_to()
        out = {"loss": np.float64(loss)}
        for name, blob in net.blobs.items():
            out[f"data:{name}"] = blob.data.copy()
            out[f"diff:{name}"] = blob.diff.copy()
        for lname, blobs in net.params.items():
            for i, b in enumerate(blobs):
                out[f"grad:{lname}[{i}]"] = b.diff.copy()
        results.append(out)
    return net, results


def _compare(a, b):
    grads = [k for k in a[0] if k.startswith("grad:")]
    zero = [k for k in grads if not np.any(a[0][k] != 0)]
    assert grads and len(zero) <= 1, f"gradients all zero: {zero}"  # (one frozen weight below)
    for step_a, step_b in zip(a, b):
        assert step_a.keys() == step_b.keys()
        for key in step_a:
            np.testing.assert_allclose(step_a[key], step_b[key], rtol=2e-5, atol=2e-6,
                                       err_msg=key)


def test_chain_matches_caffe_order(monkeypatch):
    net, working = _run(CHAIN, monkeypatch, "auto")
    held = {n for n, b in net.blobs.items() if b.chwn_ok}
    assert held == {"conv1", "pool1", "norm1", "conv2", "relu2", "pool2", "conv3", "pool3"}
    _, reference = _run(CHAIN, monkeypatch, "nchw")
    _compare(working, reference)


def test_chain_test_phase_backward(monkeypatch):
    # TEST phase: MAX pooling skips the argmax in forward and recovers it for a backward
    _, working = _run(CHAIN, monkeypatch, "auto", phase=minicaffe.TEST, steps=1)
    _, reference = _run(CHAIN, monkeypatch, "nchw", phase=minicaffe.TEST, steps=1)
    _compare(working, reference)


def test_exposed_blobs_stay_in_caffe_order(monkeypatch):
    text = CHAIN.replace('top: "loss" }', 'top: "loss" }\nlayer { name: "s" type: "Silence" '
                         'bottom: "conv2" }')
    monkeypatch.setenv("MINICAFFE_LAYOUT", "auto")
    net = minicaffe.Net(text, minicaffe.TRAIN)
    assert not net.blobs["data"].chwn_ok  # a net input
    assert not net.blobs["ip1"].chwn_ok  # read by SoftmaxWithLoss
    assert not net.blobs["conv2"].chwn_ok  # also read by Silence (not a working-order layer)
    net.forward()
    for blob in net.blobs.values():
        assert not blob._data.layout or blob.chwn_ok


def test_user_read_between_forward_and_backward(monkeypatch):
    """Reading a held blob from outside turns it back into NCHW; the backward still works."""
    _, reference = _run(CHAIN, monkeypatch, "nchw", steps=1)
    monkeypatch.setenv("MINICAFFE_LAYOUT", "auto")
    net = minicaffe.Net(CHAIN, minicaffe.TRAIN)
    rng = np.random.default_rng(3)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.standard_normal(b.shape) * 0.3
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
    net.blobs["label"].data[...] = rng.integers(0, 4, net.blobs["label"].shape)
    net.clear_param_diffs()
    net.forward()
    assert net.blobs["pool1"].is_chwn() and net.blobs["norm1"].is_chwn()
    seen = net.blobs["pool1"].data.copy()  # brought back to Caffe's order
    assert not net.blobs["pool1"].is_chwn()
    net.blobs["norm1"].diff  # noqa: B018  (LRN's backward then reads strided views)
    np.testing.assert_allclose(seen, reference[0]["data:pool1"], rtol=2e-5, atol=2e-6)
    net.blobs["conv2"].data  # noqa: B018  (a read between forward and backward)
    net.backward()
    for lname, blobs in net.params.items():
        for i, b in enumerate(blobs):
            np.testing.assert_allclose(b.diff, reference[0][f"grad:{lname}[{i}]"], rtol=2e-5,
                                       atol=2e-6, err_msg=f"{lname}[{i}]")


def _pool_net(pool: str, shape) -> str:
    """data -> 1x1 Convolution -> Pooling (``pool``: its pooling_param) -> InnerProduct: the
    pooling layer between two layers that keep the working layout."""
    dims = " ".join(f"dim: {d}" for d in shape)
    return f"""
    force_backward: true
    layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}
    layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param {{ num_output: 3 kernel_size: 1
              weight_filler {{ type: "gaussian" std: 1 }} }} }}
    layer {{ name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param {{ {pool} }} }}
    layer {{ name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
            inner_product_param {{ num_output: 2 weight_filler {{ type: "gaussian" std: 1 }} }} }}
    """


@pytest.mark.parametrize(
    "pool",
    [
        "pool: MAX kernel_size: 3 stride: 2",  # ceil mode: the last window overhangs
        "pool: MAX kernel_size: 2 stride: 3",  # gaps between windows
        "pool: MAX kernel_size: 3 stride: 1 pad: 1",
        "pool: AVE kernel_size: 3 stride: 2 pad: 1",
        "pool: AVE kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1",
        "pool: MAX global_pooling: true",
        "pool: AVE global_pooling: true",
        "pool: MAX kernel_size: 2 stride: 2 round_mode: FLOOR",
    ],
)
def test_pooling_variants(monkeypatch, pool, width=7):
    text = _pool_net(pool, (5, 2, 8, width))
    net, working = _run(text, monkeypatch, "auto")
    assert net.blobs["conv"].chwn_ok and net.blobs["pool"].chwn_ok
    for _ in range(1):
        net.forward()
        assert net.blobs["pool"].is_chwn()
    _, reference = _run(text, monkeypatch, "nchw")
    _compare(working, reference)


def test_max_pooling_ties_go_to_the_first_maximum(monkeypatch):
    """Caffe's strict '>' gives a window's gradient to its first maximum in row-major order."""
    text = """
    force_backward: true
    layer { name: "data" type: "Input" top: "data"
            input_param { shape { dim: 3 dim: 1 dim: 4 dim: 4 } } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 2 kernel_size: 1 } }
    layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
            pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
    layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
            inner_product_param { num_output: 1 } }
    """
    monkeypatch.setenv("MINICAFFE_LAYOUT", "auto")
    net = minicaffe.Net(text, minicaffe.TRAIN)
    net.params["conv"][0].data[...] = 0  # every conv output is its bias: all ties
    net.params["conv"][1].data[...] = [1.0, -2.0]
    net.params["ip"][0].data[...] = 1
    net.forward()
    net.blobs["ip"].diff[...] = 1
    net.backward()
    d = net.blobs["conv"].diff
    expected = np.zeros((3, 2, 4, 4))
    expected[:, :, ::2, ::2] = 1
    np.testing.assert_array_equal(d, expected)


def test_blob_working_layout_round_trip():
    b = Blob(2, 3, 4, 5)
    x = np.arange(120, dtype=np.float32).reshape(2, 3, 4, 5)
    b.chwn_ok = True
    b.write_chwn()[...] = x.transpose(1, 2, 3, 0)
    assert b.is_chwn() and not b.is_chwn(diff=True)
    np.testing.assert_array_equal(b.data, x)  # read from outside: Caffe's order again
    assert not b.is_chwn()
    # a reshape to another shape first brings the held buffer back, keeping Caffe's meaning
    b.write_chwn()[...] = x.transpose(1, 2, 3, 0)
    b.reshape(2, 60)
    np.testing.assert_array_equal(b.data, x.reshape(2, 60))
    # zeroing the diff needs no conversion; flat() hands out the buffer in its order
    b.reshape(2, 3, 4, 5)
    b.write_chwn(diff=True)[...] = 1
    b.zero_diff()
    assert not b.is_chwn(diff=True)
    np.testing.assert_array_equal(b.diff, 0)
    flat, layout = b.flat()
    assert layout is None and flat.shape == (120,)
    # a shared buffer carries its order: the sharer sees Caffe's order too
    other = Blob(2, 3, 4, 5)
    other.share_data(b)
    b.write_chwn()[...] = x.transpose(1, 2, 3, 0)
    np.testing.assert_array_equal(other.data, x)


def test_layout_off_switch(monkeypatch):
    monkeypatch.setenv("MINICAFFE_LAYOUT", "nchw")
    net = minicaffe.Net(CHAIN, minicaffe.TRAIN)
    assert not any(b.chwn_ok for b in net.blobs.values())


def test_chain_in_row_tiles(monkeypatch):
    """Layers too large for whole-batch columns run in tiles of output rows through the shared
    workspace (the backward rebuilds each tile's columns)."""
    from minicaffe import chwn

    monkeypatch.setattr(chwn, "WHOLE", 0)
    monkeypatch.setattr(chwn, "TILE_ELEMS", 1)  # one output row per tile
    net, working = _run(CHAIN, monkeypatch, "auto")
    conv = net.layer_dict["conv1"]
    assert conv.chwn and len(conv.plans[0].tiles) == conv.plans[0].ho > 1
    _, reference = _run(CHAIN, monkeypatch, "nchw")
    _compare(working, reference)


def test_chain_with_kernel_row_convolutions(monkeypatch):
    """Every convolution the kernel-row plan takes (one group, vertical stride 1: conv1 with
    padding, conv3 with dilation) runs through it; the results match Caffe's order."""
    from minicaffe import blas, chwn

    if not blas.available(np.float32):
        pytest.skip("no OpenBLAS reachable for the accumulating GEMMs")
    monkeypatch.setattr(chwn, "ROW_MIN_K", 1)
    monkeypatch.setattr(chwn, "ROW_MIN_WHOLE", 0)
    monkeypatch.setattr(chwn, "ROW_CHUNK", 50)  # several position chunks per GEMM
    net, working = _run(CHAIN, monkeypatch, "auto")
    kinds = {name: type(net.layer_dict[name].plans[0]).__name__
             for name in ("conv1", "conv2", "conv3")}
    assert kinds == {"conv1": "ChwnRowConvPlan", "conv2": "ChwnConvPlan",
                     "conv3": "ChwnRowConvPlan"}
    _, reference = _run(CHAIN, monkeypatch, "nchw")
    _compare(working, reference)


# (N, C, H, W, O, kernel, stride, pad, dilation)
ROW_CASES = [
    (4, 8, 6, 7, 7, (3, 3), (1, 1), (1, 1), (1, 1)),
    (3, 20, 12, 12, 10, (5, 5), (1, 1), (0, 0), (1, 1)),
    (5, 6, 9, 10, 11, (3, 2), (1, 2), (2, 1), (2, 1)),
    (2, 16, 7, 8, 8, (2, 3), (1, 3), (0, 2), (1, 2)),
    (3, 4, 5, 6, 5, (4, 1), (1, 1), (1, 0), (1, 1)),
]


@pytest.mark.parametrize("case", ROW_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stacked", [False, True])
def test_kernel_row_plan_matches_whole_kernel_plan(monkeypatch, case, dtype, stacked):
    """Forward (per kernel row, or stacked into one GEMM), weight/bias/data gradients, each
    gradient alone, and a backward whose input moved since the forward (the columns are
    rebuilt) against the whole-kernel plan."""
    from minicaffe import blas, chwn
    from minicaffe.functional import ConvGeometry

    if not blas.available(dtype):
        pytest.skip("no OpenBLAS reachable for the accumulating GEMMs")
    monkeypatch.setattr(chwn, "ROW_CHUNK", 37)
    n, c, h, w, o, kernel, stride, pad, dilation = case
    geom = ConvGeometry(kernel, stride, pad, dilation, (h, w))
    ho, wo = geom.out_size
    rng = np.random.default_rng(5)
    x = rng.standard_normal((c, h, w, n)).astype(dtype)
    x2 = rng.standard_normal((c, h, w, n)).astype(dtype)
    wt = rng.standard_normal((o, c * geom.kernel_count)).astype(dtype)
    bias = rng.standard_normal(o).astype(dtype)
    dy = rng.standard_normal((o, ho, wo, n)).astype(dtype)

    def run(plan):
        out = []
        for b in (bias, None):
            y = np.empty((o, ho, wo, n), dtype)
            plan.forward(plan.source(x, True), wt, y, b)
            dw, db, dx = np.ones_like(wt), np.ones_like(bias), np.full_like(x, 7)
            plan.backward(wt, dy, plan.loaded_source(x, True), dw, None if b is None else db, dx)
            out += [y, dw, db, dx]
            dw_only, dx_only = np.zeros_like(wt), np.zeros_like(x)
            plan.backward(wt, dy, plan.loaded_source(x, True), dw_only, None, None)
            plan.backward(wt, dy, plan.loaded_source(x, True), None, None, dx_only)
            moved = np.zeros_like(wt)  # columns of another input than the forward's
            x2c = np.ascontiguousarray(x2)
            plan.backward(wt, dy, plan.source(x2c, True), moved, None, None)
            out += [dw_only, dx_only, moved]
        return out

    monkeypatch.setattr(chwn, "ROW_MIN_WHOLE", 0)
    row = chwn.conv_plan(dtype, n, c, o, geom, 1)
    assert isinstance(row, chwn.ChwnRowConvPlan) == (c * kernel[1] >= chwn.ROW_MIN_K)
    monkeypatch.setattr(chwn, "STACK_MAX_ROWS", 100.0 if stacked else 0.0)
    row = chwn.ChwnRowConvPlan(dtype, n, c, o, geom)
    assert row.stacked == stacked
    whole = chwn.ChwnConvPlan(dtype, n, c, o, geom, 1)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(run(row), run(whole)):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())


def test_kernel_row_plan_needs_reachable_blas(monkeypatch):
    from minicaffe import blas, chwn
    from minicaffe.functional import ConvGeometry

    geom = ConvGeometry((5, 5), (1, 1), (2, 2), (1, 1), (16, 16))
    # a floor on the whole-kernel columns (MINICAFFE_ROW_MIN_WHOLE) keeps smaller layers on
    # the whole-kernel plan; by default (0) every supported layer takes kernel rows
    monkeypatch.setattr(chwn, "ROW_MIN_WHOLE", (32 * 25 + 1) * 16 * 16 * 8)
    assert isinstance(chwn.conv_plan(np.float32, 8, 32, 32, geom, 1), chwn.ChwnConvPlan)
    monkeypatch.setattr(chwn, "ROW_MIN_WHOLE", (32 * 25 + 1) * 16 * 16 * 8 - 1)
    assert isinstance(chwn.conv_plan(np.float32, 8, 32, 32, geom, 1), chwn.ChwnRowConvPlan)
    monkeypatch.setattr(chwn, "ROW_MIN_WHOLE", 0)
    monkeypatch.setattr(blas, "available", lambda dtype=None: False)
    assert isinstance(chwn.conv_plan(np.float32, 8, 32, 32, geom, 1), chwn.ChwnConvPlan)
    monkeypatch.setattr(blas, "available", lambda dtype=None: True)
    assert isinstance(chwn.conv_plan(np.float32, 8, 32, 32, geom, 1), chwn.ChwnRowConvPlan)
    # not for groups, vertical strides, one kernel row or few values per kernel row
    assert isinstance(chwn.conv_plan(np.float32, 8, 32, 32, geom, 2), chwn.ChwnConvPlan)
    for g in (ConvGeometry((5, 5), (2, 1), (2, 2), (1, 1), (16, 16)),
              ConvGeometry((1, 5), (1, 1), (0, 2), (1, 1), (16, 16)),
              ConvGeometry((5, 5), (1, 1), (2, 2), (1, 1), (16, 16))):
        channels = 3 if g.kernel == (5, 5) and g.stride == (1, 1) else 32
        assert isinstance(chwn.conv_plan(np.float32, 8, channels, 32, g, 1), chwn.ChwnConvPlan)


def test_conv_without_bias_and_frozen_weights(monkeypatch):
    """No bias term, and weights with lr_mult 0 (bias gradient only): the fused bias path
    must not be taken where it does not apply."""
    text = CHAIN.replace("force_backward: true", "").replace(  # (it would unfreeze the weights)
        'convolution_param { num_output: 8 kernel_size: 3 pad: 1',
        'param { lr_mult: 0 } param { lr_mult: 1 }\n'
        'convolution_param { num_output: 8 kernel_size: 3 pad: 1',
    ).replace(
        'convolution_param { num_output: 5 kernel_size: 2 dilation: 2',
        'convolution_param { num_output: 5 kernel_size: 2 dilation: 2 bias_term: false',
    )
    net, working = _run(text, monkeypatch, "auto")
    assert net.layer_dict["conv1"].chwn and net.layer_dict["conv3"].chwn
    assert net.layers[1].param_propagate_down == [False, True]
    assert not np.any(working[0]["grad:conv1[0]"]) and np.any(working[0]["grad:conv1[1]"])
    _, reference = _run(text, monkeypatch, "nchw")
    _compare(working, reference)


def test_mixed_chain_with_a_layer_outside_the_working_layout(monkeypatch):
    """conv3 feeds a Sigmoid (Caffe's order only), so conv3 runs its NCHW plan and its bottom
    pool2 is not held either (a convolution gains from the working order only when its top
    keeps it); pool2 then reads a held bottom and writes Caffe's order, and pool3 takes an
    NCHW bottom. Every number still matches."""
    text = CHAIN.replace(
        'layer { name: "pool3" type: "Pooling" bottom: "conv3" top: "pool3"',
        'layer { name: "sig" type: "Sigmoid" bottom: "conv3" top: "sig" }\n'
        'layer { name: "pool3" type: "Pooling" bottom: "sig" top: "pool3"',
    )
    net, working = _run(text, monkeypatch, "auto")
    assert net.blobs["relu2"].chwn_ok and not net.blobs["pool2"].chwn_ok
    assert not net.blobs["conv3"].chwn_ok
    assert not net.layer_dict["conv3"].chwn and net.layer_dict["conv2"].chwn
    _, reference = _run(text, monkeypatch, "nchw")
    _compare(working, reference)


@pytest.mark.parametrize("pool", ["pool: MAX kernel_size: 2 stride: 2",
                                  "pool: AVE kernel_size: 2 stride: 2"])
def test_pooling_windows_tiling_the_input(monkeypatch, pool):
    """2x2 windows covering an 8x8 input exactly (LeNet's case: each offset writes its own
    positions of the gradient; MAX runs as a tournament of pairs)."""
    test_pooling_variants(monkeypatch, pool, width=8)


def test_batch_size_change(monkeypatch):
    """A new batch size (net.reshape, or forward with a differently sized input) re-plans the
    working-layout layers; the numbers still match Caffe's order."""
    outs = {}
    for layout in ("auto", "nchw"):
        monkeypatch.setenv("MINICAFFE_LAYOUT", layout)
        net = minicaffe.Net(CHAIN.replace("force_backward: true", ""), minicaffe.TEST)
        rng = np.random.default_rng(11)
        for blobs in net.params.values():
            for b in blobs:
                b.data[...] = rng.standard_normal(b.shape) * 0.3
        results = []
        for batch in (6, 2, 5):
            x = rng.standard_normal((batch, 3, 13, 11))
            label = rng.integers(0, 4, batch)
            out = net.forward(data=x, label=label)
            results.append((float(out["loss"]), net.blobs["pool3"].data.copy()))
        outs[layout] = results
    for (loss_a, pool_a), (loss_b, pool_b) in zip(outs["auto"], outs["nchw"], strict=True):
        assert pool_a.shape == pool_b.shape
        np.testing.assert_allclose(pool_a, pool_b, rtol=2e-5, atol=2e-6)
        assert loss_a == pytest.approx(loss_b, rel=1e-5)


def test_convolutions_whose_tops_leave_the_working_layout_keep_nchw(monkeypatch):
    """GoogLeNet's pattern: a 1x1 reduce feeding a 3x3 convolution whose top goes to a Concat.
    Holding the reduce's top would only add transposes (the 1x1 NCHW plan needs none), so
    neither blob is held."""
    text = """
    layer { name: "data" type: "Input" top: "data"
            input_param { shape { dim: 2 dim: 4 dim: 6 dim: 6 } } }
    layer { name: "reduce" type: "Convolution" bottom: "data" top: "reduce"
            convolution_param { num_output: 3 kernel_size: 1 } }
    layer { name: "relu" type: "ReLU" bottom: "reduce" top: "reduce" }
    layer { name: "conv" type: "Convolution" bottom: "reduce" top: "conv"
            convolution_param { num_output: 5 kernel_size: 3 pad: 1 } }
    layer { name: "other" type: "Convolution" bottom: "data" top: "other"
            convolution_param { num_output: 2 kernel_size: 1 } }
    layer { name: "cat" type: "Concat" bottom: "conv" bottom: "other" top: "cat" }
    """
    monkeypatch.setenv("MINICAFFE_LAYOUT", "auto")
    net = minicaffe.Net(text, minicaffe.TEST)
    assert not any(b.chwn_ok for b in net.blobs.values())


def test_strided_layers_need_a_large_enough_batch(monkeypatch):
    """With few items per window position (N contiguous values), strided convolution and
    pooling run faster in Caffe's order: below MIN_STRIDED_BATCH they are not held; stride-1
    layers are held at any batch."""
    from minicaffe import chwn

    monkeypatch.setattr(chwn, "MIN_STRIDED_BATCH", 16)
    monkeypatch.setenv("MINICAFFE_LAYOUT", "auto")
    text = """
    layer { name: "data" type: "Input" top: "data"
            input_param { shape { dim: BATCH dim: 2 dim: 12 dim: 12 } } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 3 kernel_size: 3 } }
    layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
            pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
    layer { name: "conv2" type: "Convolution" bottom: "pool" top: "conv2"
            convolution_param { num_output: 3 kernel_size: 3 } }
    layer { name: "ip" type: "InnerProduct" bottom: "conv2" top: "ip"
            inner_product_param { num_output: 2 } }
    """
    small = minicaffe.Net(text.replace("BATCH", "4"), minicaffe.TEST)
    assert not small.blobs["conv"].chwn_ok and small.blobs["pool"].chwn_ok
    large = minicaffe.Net(text.replace("BATCH", "16"), minicaffe.TEST)
    assert large.blobs["conv"].chwn_ok and large.blobs["pool"].chwn_ok


@pytest.mark.parametrize(
    "pool",
    [
        "pool: MAX kernel_size: 3 stride: 2",  # overlapping windows, the last one overhangs
        "pool: MAX kernel_size: 3 stride: 1 pad: 1",  # padding: first valid position wins
        "pool: MAX kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 0 pad_w: 1",
    ],
)
@pytest.mark.parametrize("value", [1.0, -2.5])
def test_overlapping_max_pooling_ties(monkeypatch, pool, value):
    """All inputs equal: every window's gradient goes to its first position inside the image
    in row-major order, and overlapping windows add up, as in the NCHW layout (Caffe's
    strict '>' from the window's first element)."""
    text = _pool_net(pool, (4, 2, 7, 7))
    grads = {}
    for layout in ("auto", "nchw"):
        monkeypatch.setenv("MINICAFFE_LAYOUT", layout)
        net = minicaffe.Net(text, minicaffe.TRAIN)
        net.params["conv"][0].data[...] = 0
        net.params["conv"][1].data[...] = value
        ip = net.params["ip"][0].data
        ip[...] = np.arange(ip.size).reshape(ip.shape) + 1.0
        net.forward()
        assert net.blobs["pool"].is_chwn() == (layout == "auto")
        net.blobs["ip"].diff[...] = 1
        net.backward()
        grads[layout] = net.blobs["conv"].diff.copy()
    np.testing.assert_array_equal(grads["auto"], grads["nchw"])
    assert np.count_nonzero(grads["auto"]) > 0


def test_max_pooling_with_many_kernel_offsets(monkeypatch):
    """More than 126 offsets in a window (12x12 here): the winner index is int16, not int8."""
    text = _pool_net("pool: MAX kernel_size: 12 stride: 1", (16, 2, 14, 13))
    net, working = _run(text, monkeypatch, "auto")
    plan = net.layer_dict["pool"].chwn_plan
    assert net.blobs["pool"].chwn_ok and plan.win.dtype == np.int16
    _, reference = _run(text, monkeypatch, "nchw")
    _compare(working, reference)


def test_chain_split_between_two_threads(monkeypatch):
    """With two threads (the default where OpenBLAS leaves a core free) and tiny blocks, the
    channel blocks of copies, pooling passes and scatters run on both threads; the results
    match Caffe's order as on one."""
    from minicaffe import chwn, functional

    monkeypatch.setattr(functional, "NUM_THREADS", 2)
    monkeypatch.setattr(chwn, "NUM_THREADS", 2)
    monkeypatch.setattr(functional, "PARALLEL_MIN_ELEMS", 0)
    monkeypatch.setattr(chwn, "CHUNK_BYTES", 1024)  # one channel per pooling block
    monkeypatch.setattr(chwn, "ROW_MIN_K", 1)  # kernel rows where they apply, columns threaded
    _, working = _run(CHAIN, monkeypatch, "auto")
    _, reference = _run(CHAIN, monkeypatch, "nchw")
    _compare(working, reference)
