"""Published nets with Python layers build and run when their modules are supplied.

* FCN (fcn.berkeleyvision.org, voc-fcn-alexnet train/val prototxts, verbatim): the data layer
  module "layers" is a stand-in beside the prototxt (found there, as pycaffe users expect).
* Faster R-CNN (py-faster-rcnn, ZF end-to-end train prototxt, verbatim): stand-ins for its four
  Python layers (packages roi_data_layer and rpn). The full net also needs the fork's C++ layers
  ROIPooling and SmoothL1Loss (and their proto fields); until those exist the test builds the
  part without them: the RPN, its loss and the proposal/target Python layers.
Sources: tests/data/pylayers/README.md.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

import minicaffe
from minicaffe import TEST, TRAIN, Net
from minicaffe.compat.coord_map import crop
from minicaffe.net_spec import NetSpec
from minicaffe.net_spec import layers as L
from minicaffe.net_spec import params as P
from minicaffe.proto import caffe_pb2
from minicaffe.prototxt import read_net_param

PYLAYERS = Path(__file__).parent / "data" / "pylayers"
FCN = PYLAYERS / "fcn"
FRCNN = PYLAYERS / "faster_rcnn"


def _valid_pixels(label):
    return int(np.sum(label != 255))


@pytest.mark.parametrize("name, phase", [
    ("train", TRAIN), pytest.param("val", TEST, marks=pytest.mark.slow)])
def test_fcn_alexnet_builds_and_runs(name, phase):
    net = Net(str(FCN / f"{name}.prototxt"), phase)
    assert type(net.layer_dict["data"]).__name__ == ("SBDDSegDataLayer" if name == "train"
                                                    else "VOCSegDataLayer")
    assert net.params["fc6"][0].shape == (4096, 256, 6, 6)
    assert net.params["upscore"][0].shape == (21, 21, 63, 63)
    for size in ((40, 48), (36, 44)):  # the data layer alternates image sizes
        loss = net.forward()["loss"]
        assert net.blobs["data"].shape == (1, 3) + size
        assert net.blobs["score"].shape == (1, 21) + size  # deconv + Crop(offset 18) align
        # no fillers in FCN's prototxt: all weights 0 -> uniform softmax over 21 classes;
        # normalize: false divides by the batch (1), so loss = ln 21 per non-ignored pixel
        expected = math.log(21) * _valid_pixels(net.blobs["label"].data)
        assert float(loss) == pytest.approx(expected, rel=1e-4)


def fcn_alexnet(layer, param_str):
    """FCN's voc-fcn-alexnet/net.py, with coord_map's crop computing the score offset."""

    def conv_relu(bottom, ks, nout, stride=1, pad=0, group=1):
        conv = L.Convolution(bottom, kernel_size=ks, stride=stride, num_output=nout, pad=pad,
                             group=group)
        return conv, L.ReLU(conv, in_place=True)

    def max_pool(bottom, ks, stride=1):
        return L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=ks, stride=stride)

    n = NetSpec()
    n.data, n.label = L.Python(module="layers", layer=layer, ntop=2, param_str=param_str)
    n.conv1, n.relu1 = conv_relu(n.data, 11, 96, stride=4, pad=100)
    n.pool1 = max_pool(n.relu1, 3, stride=2)
    n.norm1 = L.LRN(n.pool1, local_size=5, alpha=1e-4, beta=0.75)
    n.conv2, n.relu2 = conv_relu(n.norm1, 5, 256, pad=2, group=2)
    n.pool2 = max_pool(n.relu2, 3, stride=2)
    n.norm2 = L.LRN(n.pool2, local_size=5, alpha=1e-4, beta=0.75)
    n.conv3, n.relu3 = conv_relu(n.norm2, 3, 384, pad=1)
    n.conv4, n.relu4 = conv_relu(n.relu3, 3, 384, pad=1, group=2)
    n.conv5, n.relu5 = conv_relu(n.relu4, 3, 256, pad=1, group=2)
    n.pool5 = max_pool(n.relu5, 3, stride=2)
    n.fc6, n.relu6 = conv_relu(n.pool5, 6, 4096)
    n.drop6 = L.Dropout(n.relu6, dropout_ratio=0.5, in_place=True)
    n.fc7, n.relu7 = conv_relu(n.drop6, 1, 4096)
    n.drop7 = L.Dropout(n.relu7, dropout_ratio=0.5, in_place=True)
    n.score_fr = L.Convolution(n.drop7, num_output=21, kernel_size=1, pad=0,
                               param=[dict(lr_mult=1, decay_mult=1),
                                      dict(lr_mult=2, decay_mult=0)])
    n.upscore = L.Deconvolution(n.score_fr, convolution_param=dict(
        num_output=21, kernel_size=63, stride=32, bias_term=False), param=[dict(lr_mult=0)])
    n.score = crop(n.upscore, n.data)
    n.loss = L.SoftmaxWithLoss(n.score, n.label,
                               loss_param=dict(normalize=False, ignore_label=255))
    return n.to_proto()


def test_fcn_net_py_with_coord_map_writes_the_published_prototxt():
    published = read_net_param(str(FCN / "train.prototxt"), upgrade=False)
    ours = fcn_alexnet("SBDDSegDataLayer", published.layer[0].python_param.param_str)
    score = [l for l in ours.layer if l.name == "score"][0]
    assert score.crop_param.axis == 2 and list(score.crop_param.offset) == [18]
    assert ours == published


@pytest.mark.slow
def test_fcn_trains_a_step():
    net = Net(str(FCN / "train.prototxt"), TRAIN)
    # FCN's surgery: upscore starts as per-class bilinear interpolation
    k = 63
    f = (k + 1) // 2
    centre = f - 1 if k % 2 == 1 else f - 0.5
    ramp = 1 - np.abs(np.arange(k) - centre) / f
    weights = net.params["upscore"][0].data
    weights[...] = 0
    weights[np.arange(21), np.arange(21)] = np.outer(ramp, ramp)
    net.forward()
    net.clear_param_diffs()
    net.backward()
    assert np.any(net.params["score_fr"][1].diff != 0)  # bias of the scorer gets a gradient
    assert not np.any(net.params["upscore"][0].diff)  # lr_mult 0: no gradient


# ---------------------------------------------------------------- Faster R-CNN


def _layer_blocks(text: str) -> list[str]:
    """The top-level `layer { ... }` blocks of a prototxt (comments removed)."""
    text = re.sub(r"#[^\n]*", "", text)
    blocks, depth, start = [], 0, None
    for m in re.finditer(r"[{}]", text):
        if m.group() == "{":
            if depth == 0:
                start = text.rfind("layer", 0, m.start())
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                blocks.append(text[start:m.end()])
    return blocks


FORK_ONLY = ("ROIPooling", "SmoothL1Loss")


def _schema_has_fork_fields() -> bool:
    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    return "roi_pooling_param" in fields and "smooth_l1_loss_param" in fields


@pytest.fixture
def frcnn_path(monkeypatch):
    monkeypatch.syspath_prepend(str(FRCNN))
    yield
    import sys

    for mod in [m for m in sys.modules if m.split(".")[0] in ("rpn", "roi_data_layer",
                                                              "_params")]:
        del sys.modules[mod]


@pytest.mark.skipif(not _schema_has_fork_fields() or any(
    t not in minicaffe.layer_type_list() for t in FORK_ONLY),
    reason="the full Faster R-CNN net needs py-faster-rcnn's ROIPooling and SmoothL1Loss "
           "layers (and their proto fields), which BVLC Caffe does not have")
def test_faster_rcnn_full_net_builds(frcnn_path):
    net = Net(str(FRCNN / "train.prototxt"), TRAIN)
    types = {name: type(layer).__name__ for name, layer in net.layer_dict.items()}
    assert types["roi_pool_conv5"] == "ROIPoolingLayer"
    assert types["rpn_loss_bbox"] == types["loss_bbox"] == "SmoothL1LossLayer"
    assert net.layer_dict["rpn_loss_bbox"].sigma2 == 9.0  # sigma: 3.0
    assert net.layer_dict["loss_bbox"].sigma2 == 1.0
    out = net.forward()
    assert net.blobs["roi_pool_conv5"].shape == (10, 256, 6, 6)
    # conv1..conv5 and fc6/fc7 have no fillers (zeros): uniform softmaxes, zero box predictions
    assert float(out["cls_loss"]) == pytest.approx(math.log(21), rel=1e-5)
    assert float(out["rpn_cls_loss"]) == pytest.approx(math.log(2), rel=1e-5)
    assert float(out["bbox_loss"]) == 0.0
    assert np.isfinite(float(out["rpn_loss_bbox"])) and float(out["rpn_loss_bbox"]) > 0
    net.clear_param_diffs()
    net.backward()
    assert np.any(net.params["cls_score"][1].diff != 0)
    assert np.any(net.params["rpn_bbox_pred"][1].diff != 0)


def test_faster_rcnn_python_layers_build_and_run(frcnn_path):
    text = (FRCNN / "train.prototxt").read_text()
    head = text.split("#========= RCNN ============")[0]
    kept = [b for b in _layer_blocks(head) if not any(f"'{t}'" in b or f'"{t}"' in b
                                                      for t in FORK_ONLY)]
    assert len(kept) == 26
    net = Net('name: "ZF"\n' + "\n".join(kept), TRAIN)
    types = {name: type(layer).__name__ for name, layer in net.layer_dict.items()}
    assert types["input-data"] == "RoIDataLayer" and types["rpn-data"] == "AnchorTargetLayer"
    assert types["proposal"] == "ProposalLayer" and types["roi-data"] == "ProposalTargetLayer"
    assert net.layer_dict["rpn-data"].param_str == "'feat_stride': 16"
    loss = net.forward()["rpn_cls_loss"]
    h, w = net.blobs["rpn_cls_score"].shape[-2:]
    assert net.blobs["data"].shape == (1, 3, 64, 80) and (h, w) == (5, 6)  # ceil pooling
    assert net.blobs["rpn_labels"].shape == (1, 1, 9 * h, w)
    assert net.blobs["rpn_cls_score_reshape"].shape == (1, 2, 9 * h, w)
    assert net.blobs["rois"].shape == (8 + 2, 5) and net.blobs["labels"].shape == (10,)
    assert net.blobs["bbox_targets"].shape == (10, 84)
    np.testing.assert_array_equal(net.blobs["labels"].data[-2:], [3, 15])
    # conv1..conv5 have no fillers (zeros): the RPN sees zeros -> uniform 2-way softmax
    assert float(loss) == pytest.approx(math.log(2), rel=1e-5)
    net.clear_param_diffs()
    net.backward()
    assert np.any(net.params["rpn_cls_score"][1].diff != 0)
    assert net.bottom_need_backward[list(net._layer_names).index("rpn_loss_cls")] == [True,
                                                                                        False]
