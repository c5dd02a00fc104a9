"""Stride-1 convolution through the frequency domain (minicaffe.spectral).

The plan must give the direct convolution's forward and gradients to float32 rounding for every
padding, dilation, kernel shape and size parity, keep Caffe's accumulate-into semantics of the
parameter gradients, and be taken only where it pays.
"""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe import chwn, spectral
from minicaffe.functional import ConvGeometry

# (N, C, H, W, O, kernel, pad, dilation)
CASES = [
    (4, 8, 6, 7, 7, (3, 3), (1, 1), (1, 1)),
    (3, 20, 12, 12, 10, (5, 5), (0, 0), (1, 1)),
    (5, 6, 9, 10, 11, (3, 2), (2, 1), (2, 1)),
    (2, 16, 7, 8, 8, (2, 3), (0, 2), (1, 2)),
    (3, 4, 5, 6, 5, (4, 1), (1, 0), (1, 1)),
    (2, 3, 4, 4, 2, (1, 1), (0, 0), (1, 1)),
    (3, 5, 5, 4, 6, (3, 3), (4, 3), (1, 1)),  # padding wider than the kernel
    (6, 32, 16, 16, 32, (5, 5), (2, 2), (1, 1)),  # cifar10_quick's conv2, smaller batch
]


def _data(case, dtype, seed=5):
    n, c, h, w, o, kernel, pad, dilation = case
    geom = ConvGeometry(kernel, (1, 1), pad, dilation, (h, w))
    ho, wo = geom.out_size
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((c, h, w, n)).astype(dtype)
    x2 = rng.standard_normal((c, h, w, n)).astype(dtype)
    wt = rng.standard_normal((o, c * geom.kernel_count)).astype(dtype)
    bias = rng.standard_normal(o).astype(dtype)
    dy = rng.standard_normal((o, ho, wo, n)).astype(dtype)
    return geom, x, x2, wt, bias, dy


def _run(plan, geom, x, x2, wt, bias, dy):
    """Forward with and without bias; the full backward into gradients that already hold
    values (they must be added to); each gradient alone, in the order that reuses the
    forward's input spectrum after a data gradient spent it; a backward of another input."""
    o, n = wt.shape[0], x.shape[-1]
    ho, wo = geom.out_size
    out = []
    for b in (bias, None):
        y = np.empty((o, ho, wo, n), x.dtype)
        plan.forward(plan.source(x, True), wt, y, b)
        dw, db, dx = np.ones_like(wt), np.ones_like(bias), np.full_like(x, 7)
        plan.backward(wt, dy, plan.loaded_source(x, True), dw, None if b is None else db, dx)
        out += [y, dw, db, dx]
        dw_only, dx_only, db_only = np.zeros_like(wt), np.zeros_like(x), np.zeros_like(bias)
        plan.backward(wt, dy, plan.loaded_source(x, True), dw_only, None, None)
        plan.backward(wt, dy, plan.loaded_source(x, True), None, None, dx_only)
        plan.backward(wt, dy, plan.loaded_source(x, True), None, db_only, None)
        moved = np.zeros_like(wt)
        plan.backward(wt, dy, plan.source(np.ascontiguousarray(x2), True), moved, None, None)
        out += [dw_only, dx_only, db_only, moved]
    return out


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_the_direct_convolution(case, dtype):
    geom, *arrays = _data(case, dtype)
    n, c, _, _, o = case[:5]
    spec = spectral.SpectralConvPlan(dtype, n, c, o, geom)
    direct = chwn.ChwnConvPlan(dtype, n, c, o, geom, 1)
    tol = 3e-6 if dtype == np.float32 else 1e-12
    names = ["y", "dw", "db", "dx", "dw alone", "dx alone", "db alone", "dw of another input"]
    for i, (a, b) in enumerate(zip(_run(spec, geom, *arrays), _run(direct, geom, *arrays))):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max(),
                                   err_msg=names[i % len(names)])


def test_input_in_caffe_order():
    """A bottom held as (N, C, H, W) is read through a transposed copy."""
    case = CASES[2]
    geom, x, _, wt, bias, dy = _data(case, np.float64)
    n, c, _, _, o = case[:5]
    plan = spectral.SpectralConvPlan(np.float64, n, c, o, geom)
    ref = chwn.ChwnConvPlan(np.float64, n, c, o, geom, 1)
    nchw = np.ascontiguousarray(x.transpose(3, 0, 1, 2))
    ys = []
    for p, src in ((plan, plan.source(nchw, False)), (ref, ref.source(x, True))):
        y = np.empty((o, *geom.out_size, n))
        p.forward(src, wt, y, bias)
        dw = np.zeros_like(wt)
        p.backward(wt, dy, p.loaded_source(nchw, False) if p is plan else src, dw, None, None)
        ys += [y, dw]
    np.testing.assert_allclose(ys[0], ys[2], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ys[1], ys[3], rtol=1e-12, atol=1e-10)


def test_weights_changed_between_forward_and_backward():
    """The data gradient reuses the forward's weight spectra only while the weights are the
    same: weights changed in place after the forward give the new weights' gradient."""
    case = CASES[0]
    geom, x, _, wt, bias, dy = _data(case, np.float64)
    n, c, _, _, o = case[:5]
    plan = spectral.SpectralConvPlan(np.float64, n, c, o, geom)
    ref = chwn.ChwnConvPlan(np.float64, n, c, o, geom, 1)
    y = np.empty((o, *geom.out_size, n))
    plan.forward(plan.source(x, True), wt, y, bias)
    wt *= -0.5
    grads = []
    for p in (plan, ref):
        dx = np.empty_like(x)
        p.backward(wt, dy, p.loaded_source(x, True), None, None, dx)
        grads.append(dx)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-12, atol=1e-12)


def _geom(h, k, pad, stride=1):
    return ConvGeometry((k, k), (stride, stride), (pad, pad), (1, 1), (h, h))


def test_taken_where_it_pays():
    # cifar10_quick's conv2 and conv3 (batch 100), LeNet's conv2 (batch 64)
    assert spectral.pays(100, 32, 32, _geom(16, 5, 2), 1)
    assert spectral.pays(100, 32, 64, _geom(8, 5, 2), 1)
    assert spectral.pays(64, 20, 50, _geom(12, 5, 0), 1)
    # few input channels (cifar10_quick's conv1): the transforms cost more than they save
    assert not spectral.pays(100, 3, 32, _geom(32, 5, 2), 1)
    # wide layers: the weight spectra alone would outweigh the direct convolution
    assert not spectral.pays(128, 256, 384, _geom(13, 3, 1), 1)
    # large maps: transforms by matrix products grow with the map's side
    assert not spectral.pays(32, 64, 64, _geom(56, 3, 1), 1)
    # strided, grouped, small batches
    assert not spectral.pays(100, 32, 32, _geom(16, 5, 2, stride=2), 1)
    assert not spectral.pays(100, 32, 32, _geom(16, 5, 2), 2)
    assert not spectral.pays(16, 32, 32, _geom(16, 5, 2), 1)


def test_plan_choice_and_off_switch(monkeypatch):
    geom = _geom(16, 5, 2)
    plan = chwn.conv_plan(np.float32, 100, 32, 32, geom, 1)
    assert isinstance(plan, spectral.SpectralConvPlan)
    monkeypatch.setattr(spectral, "MIN_GAIN", 0.0)  # MINICAFFE_SPECTRAL=0
    plan = chwn.conv_plan(np.float32, 100, 32, 32, geom, 1)
    assert not isinstance(plan, spectral.SpectralConvPlan)


def test_whole_net_matches_caffe_order(monkeypatch):
    """Every stride-1, one-group convolution of the working-layout test chain through the
    spectral plan: every blob, gradient and the loss match the NCHW reference run."""
    from tests import test_chwn

    monkeypatch.setattr(chwn, "MIN_STRIDED_BATCH", 0)
    monkeypatch.setattr(spectral, "MIN_BATCH", 0)
    monkeypatch.setattr(spectral, "MIN_GAIN", 1e-9)
    net, working = test_chwn._run(test_chwn.CHAIN, monkeypatch, "auto")
    kinds = {name: type(net.layer_dict[name].plans[0]).__name__
             for name in ("conv1", "conv2", "conv3")}
    assert kinds == {"conv1": "SpectralConvPlan", "conv2": "ChwnConvPlan",
                     "conv3": "SpectralConvPlan"}
    _, reference = test_chwn._run(test_chwn.CHAIN, monkeypatch, "nchw")
    test_chwn._compare(working, reference)
