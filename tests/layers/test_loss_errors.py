"""Bad input to a loss layer is a typed minicaffe error that names the layer, what was expected
and what was received (Caffe aborts, or reads out of bounds for bad labels)."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe.errors import LabelError, LayerError, MinicaffeError, ShapeError, WeightsError
from tests.helpers import make_layer

X = np.zeros((2, 3, 2))
Y = np.zeros((2, 2))


def build(text, arrays, **kw):
    return make_layer(text, arrays, name="loss", **kw)


def forward(text, arrays, **kw):
    layer, bottom, top = build(text, arrays, **kw)
    layer.forward(bottom, top)
    return layer, bottom, top


SWL = 'type: "SoftmaxWithLoss"'


def test_label_count_mismatch():
    with pytest.raises(
        ShapeError,
        match=r"layer 'loss' \(SoftmaxWithLoss\): the number of labels "
        r"must equal the number of positions.*N\*H\*W.*expected "
        r"4 labels for prediction shape \(2, 3, 2\), received "
        r"label shape \(2, 3\) \(6 values\)",
    ):
        build(SWL, [X, np.zeros((2, 3))])


def test_first_dimension_mismatch():
    with pytest.raises(
        ShapeError,
        match=r"same first dimension; received \(2, 3, 2\) and "
        r"\(4,\)",
    ):
        build(SWL, [X, np.zeros(4)])


def test_label_above_range():
    y = Y.copy()
    y[1, 0] = 3
    with pytest.raises(
        LabelError,
        match=r"layer 'loss' \(SoftmaxWithLoss\): label 3 at index "
        r"\(1, 0\) of the label blob \(shape \(2, 2\)\) is "
        r"outside the valid range \[0, 2\] \(3 classes\) and no "
        r"ignore_label is set",
    ):
        forward(SWL, [X, y])


def test_negative_label_that_is_not_the_ignore_label():
    y = Y.copy()
    y[0, 1] = -2
    with pytest.raises(LabelError, match=r"label -2 at index \(0, 1\).*the ignore label is 255"):
        forward(SWL + " loss_param { ignore_label: 255 }", [X, y])


def test_nan_label():
    y = Y.copy()
    y[0, 0] = np.nan
    with pytest.raises(LabelError, match=r"label nan at index \(0, 0\)"):
        forward(SWL, [X, y])


def test_class_weight_wrong_length():
    with pytest.raises(
        ShapeError,
        match=r"loss_param.class_weight has 2 values but the "
        r"prediction has 3 classes",
    ):
        build(SWL + " loss_param { class_weight: 1 class_weight: 2 }", [X, Y])


def test_class_weight_negative():
    with pytest.raises(
        LayerError,
        match=r"loss_param.class_weight must be finite and >= 0; "
        r"received \[1.0, -2.0, 1.0\]",
    ):
        build(SWL + " loss_param { class_weight: 1 class_weight: -2 class_weight: 1 }", [X, Y])


def test_weight_bottom_wrong_shape():
    with pytest.raises(
        ShapeError,
        match=r"the weight bottom must have shape \(3,\) \(one weight "
        r"per class\), \(3, 2\) \(one sample\) or \(2, 3, 2\) "
        r"\(like the prediction\); received \(2, 2\)",
    ):
        build(SWL, [X, Y, np.ones((2, 2))])


def test_weight_bottom_negative():
    w = np.ones(3)
    w[1] = -0.5
    with pytest.raises(LayerError, match=r"finite and >= 0; the weight bottom holds -0.5"):
        forward(SWL, [X, Y, w])
    w[1] = np.nan
    with pytest.raises(LayerError, match=r"finite and >= 0; the weight bottom holds a NaN"):
        forward(SWL, [X, Y, w])


def test_weights_given_twice():
    with pytest.raises(LayerError, match="class weights are given twice"):
        build(
            SWL + " loss_param { class_weight: 1 class_weight: 1 class_weight: 1 }",
            [X, Y, np.ones(3)],
        )


def test_segnet_weights_without_flag():
    with pytest.raises(
        LayerError, match="class_weighting is given but weight_by_label_freqs is false"
    ):
        build(
            SWL + " loss_param { class_weighting: 1 class_weighting: 1 class_weighting: 1 }", [X, Y]
        )


def test_weight_normalization_without_weights():
    with pytest.raises(LayerError, match="weight_normalization is set but no class weights"):
        build(SWL + " loss_param { weight_normalization: GLOBAL }", [X, Y])


def test_label_smoothing_out_of_range():
    with pytest.raises(LayerError, match=r"label_smoothing must be in \[0, 1\]; received 1.5"):
        build(SWL + " loss_param { label_smoothing: 1.5 }", [X, Y])


def test_axis_out_of_range():
    with pytest.raises(ShapeError, match=r"class axis 3 is out of range for a 3-axis prediction"):
        build(SWL + " softmax_param { axis: 3 }", [X, Y])


@pytest.mark.parametrize(
    "text,arrays,index,what",
    [
        (SWL, [X, Y], 1, "label"),
        (SWL, [X, Y, np.ones(3)], 2, "class weight"),
        ('type: "MultinomialLogisticLoss"', [X, Y], 1, "label"),
        ('type: "InfogainLoss"', [X, Y, np.eye(3)], 2, "infogain matrix H"),
        ('type: "SigmoidCrossEntropyLoss"', [X, X], 1, "label"),
        ('type: "HingeLoss"', [X, np.zeros(2)], 1, "label"),
        ('type: "ContrastiveLoss"', [X, X, np.zeros(2)], 2, "similarity"),
    ],
)
def test_gradient_into_label_bottom(text, arrays, index, what):
    layer, bottom, top = forward(text, arrays)
    assert not layer.allow_force_backward(index)
    propagate = [i in (0, index) for i in range(len(bottom))]
    with pytest.raises(
        LayerError,
        match=rf"cannot back-propagate to the {what} input \(bottom "
        rf"{index}\)",
    ):
        layer.backward(top, propagate, bottom)


def test_unsupported_loss_param_field():
    with pytest.raises(
        LayerError,
        match=r"loss_param.class_weight is not supported by "
        r"SigmoidCrossEntropyLoss; it accepts ignore_label, "
        r"normalization, normalize",
    ):
        build('type: "SigmoidCrossEntropyLoss" loss_param { class_weight: 1 }', [X, X])


def test_loss_weight_count():
    with pytest.raises(LayerError, match=r"loss_weight must be given once per top \(2\)"):
        build(SWL + ' top: "loss" top: "prob" loss_weight: 1', [X, Y])


# ---------------------------------------------------------------------------- other layers


def test_multinomial_label_count():
    with pytest.raises(ShapeError, match=r"expected 4 labels for prediction shape \(2, 3, 2\)"):
        build('type: "MultinomialLogisticLoss"', [X, np.zeros((2, 3))])


def test_multinomial_label_out_of_range():
    with pytest.raises(
        LabelError,
        match=r"\(MultinomialLogisticLoss\): label 6 at index \(0,\) "
        r".*\[0, 5\] \(6 classes\)",
    ):
        forward('type: "MultinomialLogisticLoss"', [X, np.array([6.0, 0.0])])


def test_infogain_h_wrong_size():
    with pytest.raises(
        ShapeError,
        match=r"H must be C x C = 3 x 3 \(9 values\) for 3 classes; "
        r"the H bottom has shape \(2, 2\)",
    ):
        build('type: "InfogainLoss"', [X, Y, np.eye(2)])


def test_infogain_missing_source():
    with pytest.raises(LayerError, match="the infogain matrix H is missing"):
        build('type: "InfogainLoss"', [X, Y])


def test_infogain_unreadable_source(tmp_path):
    with pytest.raises(MinicaffeError):
        build(f'type: "InfogainLoss" infogain_loss_param {{ source: "{tmp_path}/none" }}', [X, Y])
    bad = tmp_path / "bad.binaryproto"
    bad.write_bytes(b"\x0a\xff\xff")
    with pytest.raises(WeightsError):
        build(f'type: "InfogainLoss" infogain_loss_param {{ source: "{bad}" }}', [X, Y])


def test_infogain_refuses_legacy_normalize():
    with pytest.raises(LayerError, match="normalize is deprecated and refused by InfogainLoss"):
        build('type: "InfogainLoss" loss_param { normalize: true }', [X, Y, np.eye(3)])


def test_infogain_label_out_of_range():
    with pytest.raises(LabelError, match=r"\(InfogainLoss\): label 4 at index \(1, 1\)"):
        forward('type: "InfogainLoss"', [X, np.array([[0.0, 1.0], [2.0, 4.0]]), np.eye(3)])


def test_weighted_normalization_needs_weights():
    with pytest.raises(LayerError, match="normalization WEIGHTED needs class weights"):
        build('type: "SigmoidCrossEntropyLoss" loss_param { normalization: WEIGHTED }', [X, X])


def test_sigmoid_cross_entropy_count():
    with pytest.raises(
        ShapeError,
        match=r"same count; received shapes \(2, 3, 2\) \(12\) and "
        r"\(2, 5\) \(10\)",
    ):
        build('type: "SigmoidCrossEntropyLoss"', [X, np.zeros((2, 5))])


def test_euclidean_count():
    with pytest.raises(
        ShapeError,
        match=r"same dimension .* received shapes \(2, 3, 2\) and "
        r"\(2, 5\)",
    ):
        build('type: "EuclideanLoss"', [X, np.zeros((2, 5))])


def test_hinge_label_count_and_range():
    with pytest.raises(
        ShapeError,
        match=r"one class index per item \(N = 2\); received label "
        r"shape \(2, 2\)",
    ):
        build('type: "HingeLoss"', [X, Y])
    with pytest.raises(LabelError, match=r"\(HingeLoss\): label -1 at index \(1,\).*\[0, 5\]"):
        forward('type: "HingeLoss"', [X, np.array([0.0, -1.0])])


def test_contrastive_shapes():
    with pytest.raises(
        ShapeError,
        match=r"two inputs must have the same shape; received "
        r"\(2, 3, 2\) and \(2, 6\)",
    ):
        build('type: "ContrastiveLoss"', [X, np.zeros((2, 6)), np.zeros(2)])
    with pytest.raises(ShapeError, match=r"one value per pair \(N = 2\); received shape \(3,\)"):
        build('type: "ContrastiveLoss"', [X, X, np.zeros(3)])


def test_blob_counts():
    with pytest.raises(ShapeError, match=r"takes at most 3 bottom blob\(s\); received 4"):
        build(SWL, [X, Y, np.ones(3), np.ones(3)])
    with pytest.raises(ShapeError, match=r"takes exactly 3 bottom blob\(s\); received 2"):
        build('type: "ContrastiveLoss"', [X, X])


def test_net_propagate_down_to_label_is_refused(tmp_path):
    from minicaffe import TRAIN, Net

    path = tmp_path / "net.prototxt"
    path.write_text("""
        force_backward: true
        layer { name: "in" type: "Input" top: "x" top: "y"
                input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "loss"
                propagate_down: true propagate_down: true }
    """)
    net = Net(str(path), TRAIN)
    net.forward()
    with pytest.raises(
        LayerError,
        match=r"layer 'loss' \(SoftmaxWithLoss\): cannot "
        r"back-propagate to the label input",
    ):
        net.backward()
