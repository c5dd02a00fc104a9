"""Parameter: one learnable blob exposed as a top, sharing data and diff."""

from __future__ import annotations

import numpy as np

from minicaffe import Net
from minicaffe.proto import caffe_pb2
from tests.golden import replay
from tests.helpers import make_layer, run_forward

NET = """
name: "p"
force_backward: true
layer { name: "w" type: "Parameter" top: "w" parameter_param { shape { dim: 2 dim: 3 } } }
layer { name: "sq" type: "Reduction" bottom: "w" top: "loss" loss_weight: 1
        reduction_param { operation: SUMSQ } }
"""


def test_golden(xp):
    replay("parameter", xp=xp)


def test_top_shares_the_blob():
    layer, bottom, top = make_layer(
        "type: 'Parameter' parameter_param { shape { dim: 3 dim: 4 } }", []
    )
    assert len(layer.blobs) == 1 and layer.blobs[0].shape == (3, 4)
    assert np.all(layer.blobs[0].data == 0)  # Caffe gives it no filler
    layer.blobs[0].data[...] = np.arange(12.0).reshape(3, 4)
    (y,) = run_forward(layer, bottom, top)
    np.testing.assert_array_equal(y, np.arange(12.0).reshape(3, 4))
    top[0].diff[...] = 5
    assert np.all(layer.blobs[0].diff == 5)


def test_learns_in_a_net(tmp_path):
    path = tmp_path / "p.prototxt"
    path.write_text(NET)
    net = Net(str(path), caffe_pb2.TRAIN, dtype=np.float64)
    w = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])
    net.params["w"][0].data[...] = w
    loss = net.forward_prefilled()
    np.testing.assert_allclose(float(loss), (w * w).sum())
    net.clear_param_diffs()
    net.backward_from_to()
    np.testing.assert_allclose(net.params["w"][0].diff, 2 * w)
