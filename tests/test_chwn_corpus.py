"""The corpus nets give the same numbers in the (C, H, W, N) working layout as in Caffe's order.

Each net runs forward and backward twice from the same random weights and inputs: once as built
(the working layout where it applies) and once with MINICAFFE_LAYOUT=nchw. The two paths sum in
different orders, so values agree to float32 rounding; a MAX-pooling window whose two largest
values differ only by that rounding can pick another winner, sending one gradient value to a
neighbouring position (seen in GoogLeNet: 2 of 100,352 values of one pooling gradient, which
then spread through the convolutions below it to a relative L2 difference of 4e-3 to 1.2e-2).
So blob values must match to 1e-4 everywhere, and gradients to a relative L2 difference of 1e-3
(the quick nets, where no such tie occurs) or 5e-2 (the rest); a layout bug gives O(1).
"""

from __future__ import annotations

import numpy as np
import pytest

import minicaffe
from minicaffe import Net
from minicaffe.proto import caffe_pb2 as pb
from tests import test_corpus_nets as corpus

QUICK = {
    "BVLC__caffe/examples/mnist/lenet_train_test.prototxt",
    "BVLC__caffe/examples/cifar10/cifar10_quick_train_test.prototxt",
    "BVLC__caffe/examples/cifar10/cifar10_full_sigmoid_train_test_bn.prototxt",
    "BVLC__caffe/examples/siamese/mnist_siamese_train_test.prototxt",
    "BVLC__caffe/models/bvlc_reference_caffenet/deploy.prototxt",
}


@pytest.fixture(autouse=True)
def _strided_at_any_batch(monkeypatch):
    """These runs use batches of 1-2: let strided layers take the working layout anyway, so the
    comparison covers its kernels (production keeps them in Caffe's order below 16 items)."""
    from minicaffe import chwn

    monkeypatch.setattr(chwn, "MIN_STRIDED_BATCH", 0)


def _in_scope(path) -> bool:
    try:
        return corpus.out_of_scope(corpus.load(path)) is None
    except Exception:  # unparsable files are the parse tests' business
        return False


CASES = [
    pytest.param(p, id=corpus._id(p), marks=() if corpus._id(p) in QUICK else pytest.mark.slow)
    for p in corpus.NETS
    if _in_scope(p)
]


def _run(path, layout: str, monkeypatch):
    monkeypatch.setenv("MINICAFFE_LAYOUT", layout)
    rng = np.random.default_rng(0)
    param = corpus.with_inputs(corpus.load(path))
    train = corpus.has_loss(param)
    if not train:
        param.force_backward = True
    phase = pb.TRAIN if train else pb.TEST
    net = Net(param, phase=phase, stages=corpus._stages(param, phase))
    corpus.randomize(net, rng)
    minicaffe.set_random_seed(5)  # the same Dropout masks both times
    net.forward_prefilled()
    net.clear_param_diffs()
    if not train:
        for name in net.outputs:
            net.blobs[name].diff[...] = rng.standard_normal(net.blobs[name].shape)
    net.backward_from_to()
    values = {f"data {n}": b.data.copy() for n, b in net.blobs.items()}
    grads = {f"diff {n}": b.diff.copy() for n, b in net.blobs.items()}
    for lname, blobs in net.params.items():
        for i, b in enumerate(blobs):
            grads[f"grad {lname}[{i}]"] = b.diff.copy()
    held = [n for n, b in net.blobs.items() if b.chwn_ok]
    return values, grads, held


@pytest.mark.parametrize("path", CASES)
def test_same_numbers_in_both_layouts(path, monkeypatch):
    with corpus.python_layer_modules():
        values, grads, held = _run(path, "auto", monkeypatch)
        ref_values, ref_grads, _ = _run(path, "nchw", monkeypatch)
    for key, ref in ref_values.items():
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        np.testing.assert_allclose(values[key], ref, rtol=1e-4, atol=1e-4 * scale + 1e-12,
                                   err_msg=key)
    limit = 1e-3 if corpus._id(path) in QUICK else 5e-2
    for key, ref in ref_grads.items():
        ref = np.asarray(ref, np.float64)
        norm = float(np.linalg.norm(ref))
        if not norm:
            continue
        err = float(np.linalg.norm(np.asarray(grads[key], np.float64) - ref)) / norm
        assert err <= limit, f"{key}: relative L2 difference {err:.2e} > {limit}"
    if corpus._id(path) in QUICK and "deploy" not in corpus._id(path):
        assert held, "no blob was held in the working layout"
