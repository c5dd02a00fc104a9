"""minicaffe.upgrade: each legacy step on small nets, then old corpus nets against master."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from minicaffe.errors import UpgradeError
from minicaffe.proto import caffe_pb2 as pb
from minicaffe.upgrade import (
    V0_LAYER_TYPES,
    V1_LAYER_TYPES,
    net_needs_upgrade,
    solver_needs_upgrade,
    upgrade_net,
    upgrade_solver,
)

CORPUS = Path(__file__).parent / "data" / "corpus"


def net_from(text: str) -> pb.NetParameter:
    return text_format.Merge(text, pb.NetParameter())


def upgraded(text: str) -> tuple[pb.NetParameter, list[str]]:
    return upgrade_net(net_from(text), "snippet.prototxt")


def layer_by_name(net: pb.NetParameter, name: str) -> pb.LayerParameter:
    (layer,) = [layer for layer in net.layer if layer.name == name]
    return layer


# ---------------------------------------------------------------------------- V0 -> V1 -> V2


V0_CONV_NET = """
name: "tiny"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 8 input_dim: 8
layers {
  layer {
    name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 2 pad: 1 group: 1
    biasterm: false
    weight_filler { type: "gaussian" std: 0.02 }
    blobs_lr: 1.5 weight_decay: 0.5
  }
  bottom: "data" top: "conv1"
}
layers {
  layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 pad: 1 }
  bottom: "conv1" top: "pool1"
}
layers {
  layer {
    name: "ip1" type: "innerproduct" num_output: 10
    weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 }
    blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  }
  bottom: "pool1" top: "ip1"
}
layers { layer { name: "relu1" type: "relu" } bottom: "ip1" top: "ip1" }
layers { layer { name: "drop1" type: "dropout" dropout_ratio: 0.25 } bottom: "ip1" top: "ip1" }
layers {
  layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.5 beta: 0.5 k: 2 }
  bottom: "ip1" top: "norm1"
}
layers { layer { name: "prob" type: "softmax" } bottom: "norm1" top: "prob" }
"""


def test_v0_net_becomes_current_format():
    net, notes = upgraded(V0_CONV_NET)
    assert len(net.layers) == 0
    assert [(layer.name, layer.type) for layer in net.layer] == [
        ("input", "Input"),
        ("conv1", "Convolution"),
        ("pool1", "Pooling"),
        ("ip1", "InnerProduct"),
        ("relu1", "ReLU"),
        ("drop1", "Dropout"),
        ("norm1", "LRN"),
        ("prob", "Softmax"),
    ]
    assert any("V0" in note for note in notes)
    assert not net_needs_upgrade(net)

    conv = layer_by_name(net, "conv1")
    cp = conv.convolution_param
    assert (cp.num_output, list(cp.kernel_size), list(cp.stride), list(cp.pad)) == (
        4,
        [3],
        [2],
        [1],
    )
    assert cp.group == 1 and cp.HasField("group")
    assert cp.bias_term is False
    assert cp.weight_filler.type == "gaussian"
    assert cp.weight_filler.std == pytest.approx(0.02)
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1.5, 0.5)]

    pp = layer_by_name(net, "pool1").pooling_param
    assert (pp.pool, pp.kernel_size, pp.stride, pp.pad) == (pb.PoolingParameter.AVE, 2, 2, 1)

    ip = layer_by_name(net, "ip1")
    assert ip.inner_product_param.num_output == 10
    assert ip.inner_product_param.bias_filler.value == pytest.approx(0.1)
    assert [(p.lr_mult, p.decay_mult) for p in ip.param] == [(1, 1), (2, 0)]

    assert layer_by_name(net, "drop1").dropout_param.dropout_ratio == 0.25
    lrn = layer_by_name(net, "norm1").lrn_param
    assert (lrn.local_size, lrn.alpha, lrn.beta, lrn.k) == (3, 0.5, 0.5, 2)


def test_v0_data_layers_and_their_transform_fields():
    net, _ = upgraded(
        """
        layers {
          layer {
            name: "d" type: "data" source: "db" batchsize: 32 rand_skip: 5
            scale: 0.5 meanfile: "mean.binaryproto" cropsize: 7 mirror: true
          }
          top: "data" top: "label"
        }
        layers {
          layer {
            name: "img" type: "images" source: "list.txt" batchsize: 4 shuffle_images: true
            new_height: 20 new_width: 30 rand_skip: 2
          }
          top: "img" top: "img_label"
        }
        layers {
          layer {
            name: "win" type: "window_data" source: "windows.txt" batchsize: 8
            det_fg_threshold: 0.6 det_bg_threshold: 0.4 det_fg_fraction: 0.3
            det_context_pad: 16 det_crop_mode: "square"
          }
          top: "win" top: "win_label"
        }
        layers {
          layer { name: "h5" type: "hdf5_data" source: "h5.txt" batchsize: 2 }
          top: "h5"
        }
        layers {
          layer { name: "out" type: "hdf5_output" hdf5_output_param { file_name: "o.h5" } }
          bottom: "h5" bottom: "h5"
        }
        layers {
          layer { name: "cat" type: "concat" concat_dim: 0 }
          bottom: "data" bottom: "img" top: "cat"
        }
        layers {
          layer { name: "info" type: "infogain_loss" source: "H.binaryproto" }
          bottom: "cat" bottom: "label"
        }
        """
    )
    d = layer_by_name(net, "d")
    assert d.type == "Data"
    assert (d.data_param.source, d.data_param.batch_size, d.data_param.rand_skip) == ("db", 32, 5)
    tp = d.transform_param
    assert (tp.scale, tp.mean_file, tp.crop_size, tp.mirror) == (
        0.5,
        "mean.binaryproto",
        7,
        True,
    )
    for name in ("scale", "mean_file", "crop_size", "mirror"):
        assert not d.data_param.HasField(name)

    img = layer_by_name(net, "img")
    ip = img.image_data_param
    assert img.type == "ImageData"
    assert (ip.source, ip.batch_size, ip.shuffle, ip.new_height, ip.new_width, ip.rand_skip) == (
        "list.txt",
        4,
        True,
        20,
        30,
        2,
    )

    win = layer_by_name(net, "win")
    wp = win.window_data_param
    assert win.type == "WindowData"
    assert (wp.source, wp.batch_size, wp.context_pad, wp.crop_mode) == (
        "windows.txt",
        8,
        16,
        "square",
    )
    assert (wp.fg_threshold, wp.bg_threshold, wp.fg_fraction) == pytest.approx((0.6, 0.4, 0.3))

    h5 = layer_by_name(net, "h5")
    assert (h5.type, h5.hdf5_data_param.source, h5.hdf5_data_param.batch_size) == (
        "HDF5Data",
        "h5.txt",
        2,
    )
    out = layer_by_name(net, "out")
    assert (out.type, out.hdf5_output_param.file_name) == ("HDF5Output", "o.h5")
    cat = layer_by_name(net, "cat")
    assert (cat.type, cat.concat_param.concat_dim) == ("Concat", 0)
    info = layer_by_name(net, "info")
    assert (info.type, info.infogain_loss_param.source) == ("InfogainLoss", "H.binaryproto")


def test_v0_type_table_covers_every_v0_type():
    v0_types = set(V0_LAYER_TYPES)
    assert v0_types == {
        "accuracy", "bnll", "concat", "conv", "data", "dropout", "euclidean_loss", "flatten",
        "hdf5_data", "hdf5_output", "im2col", "images", "infogain_loss", "innerproduct", "lrn",
        "multinomial_logistic_loss", "pool", "relu", "sigmoid", "softmax", "softmax_loss",
        "split", "tanh", "window_data",
    }  # fmt: skip
    text = "\n".join(
        f'layers {{ layer {{ name: "l{i}" type: "{t}" }} }}' for i, t in enumerate(sorted(v0_types))
    )
    net, _ = upgraded(text)
    assert [layer.type for layer in net.layer] == [
        V1_LAYER_TYPES[V0_LAYER_TYPES[t]] for t in sorted(v0_types)
    ]
    assert all(net.layer[i].type for i in range(len(v0_types)))


def test_v0_field_on_the_wrong_type_is_dropped_with_a_warning():
    net, notes = upgraded(
        'input: "x" layers { layer { name: "r" type: "relu" num_output: 3 kernelsize: 2 } '
        'bottom: "x" top: "x" }'
    )
    relu = layer_by_name(net, "r")
    assert not relu.HasField("convolution_param")
    warnings = [n for n in notes if n.startswith("warning")]
    assert len(warnings) == 2
    assert "'num_output'" in warnings[0] and "'r'" in warnings[0]


def test_unknown_v0_type_names_the_layer_and_the_known_types():
    with pytest.raises(UpgradeError) as err:
        upgraded('layers { layer { name: "weird1" type: "convolution" } }')
    message = str(err.value)
    assert message.startswith("snippet.prototxt")
    assert "'weird1'" in message and "'convolution'" in message
    assert "conv" in message and "innerproduct" in message and "padding" in message


V0_PADDING_NET = """
input: "data"
input_dim: 1 input_dim: 3 input_dim: 9 input_dim: 9
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers {
  layer { name: "conv1" type: "conv" num_output: 2 kernelsize: 5 }
  bottom: "pad1" top: "conv1"
}
layers { layer { name: "pad2" type: "padding" pad: 1 } bottom: "conv1" top: "pad2" }
layers {
  layer { name: "pool1" type: "pool" kernelsize: 3 stride: 2 }
  bottom: "pad2" top: "pool1"
}
"""


def test_v0_padding_layers_fold_into_the_next_conv_or_pool():
    net, notes = upgraded(V0_PADDING_NET)
    assert [(layer.name, list(layer.bottom), list(layer.top)) for layer in net.layer] == [
        ("input", [], ["data"]),
        ("conv1", ["data"], ["conv1"]),
        ("pool1", ["conv1"], ["pool1"]),
    ]
    assert list(layer_by_name(net, "conv1").convolution_param.pad) == [2]
    assert layer_by_name(net, "pool1").pooling_param.pad == 1
    assert sum("folded padding" in note for note in notes) == 2


def test_v0_padding_into_another_type_is_an_error():
    with pytest.raises(UpgradeError, match="'relu'"):
        upgraded(
            'input: "x" input_dim: 1 input_dim: 1 input_dim: 2 input_dim: 2 '
            'layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "p" } '
            'layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }'
        )


def test_v0_padding_into_a_two_bottom_layer_is_an_error():
    with pytest.raises(UpgradeError, match="2 bottoms"):
        upgraded(
            'input: "x" input_dim: 1 input_dim: 1 input_dim: 2 input_dim: 2 '
            'layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "p" } '
            'layers { layer { name: "c" type: "conv" } bottom: "p" bottom: "x" top: "c" }'
        )


def test_v0_unknown_bottom_is_an_error():
    with pytest.raises(UpgradeError, match="'nowhere'"):
        upgraded('layers { layer { name: "c" type: "conv" } bottom: "nowhere" top: "c" }')


def test_mixed_v0_and_v1_entries_are_an_error():
    with pytest.raises(UpgradeError, match="mixes V0"):
        upgraded('layers { layer { name: "a" type: "relu" } } layers { name: "b" type: RELU }')


# ---------------------------------------------------------------------------- V1 -> V2


def test_v1_layer_types_become_strings():
    enum = pb.V1LayerParameter.LayerType
    assert set(V1_LAYER_TYPES) == set(enum.values())
    text = "\n".join(
        f'layers {{ name: "l{i}" type: {name} }}' for i, name in enumerate(enum.keys())
    )
    net, _ = upgraded(text)
    got = {layer.name: layer.type for layer in net.layer}
    for i, name in enumerate(enum.keys()):
        assert got[f"l{i}"] == V1_LAYER_TYPES[enum.Value(name)]
    assert got[f"l{enum.keys().index('SOFTMAX_LOSS')}"] == "SoftmaxWithLoss"
    assert got[f"l{enum.keys().index('NONE')}"] == ""


def test_v1_param_specs_from_names_share_modes_rates_and_decays():
    net, notes = upgraded(
        """
        layers {
          name: "ip" type: INNER_PRODUCT bottom: "x" top: "y"
          param: "w_shared" param: "b_shared"
          blob_share_mode: PERMISSIVE
          blobs_lr: 1 blobs_lr: 2 blobs_lr: 3
          weight_decay: 0.5
          loss_weight: 0.25
          include { phase: TRAIN stage: "s" }
          exclude { min_level: 2 }
          blobs { shape { dim: 1 dim: 2 } data: 3 data: 4 }
          inner_product_param { num_output: 2 axis: 2 }
        }
        """
    )
    (ip,) = net.layer
    assert [(p.name, p.HasField("share_mode"), p.lr_mult, p.decay_mult) for p in ip.param] == [
        ("w_shared", True, 1, 0.5),
        ("b_shared", False, 2, 1),
        ("", False, 3, 1),
    ]
    assert ip.param[0].share_mode == pb.ParamSpec.PERMISSIVE
    assert list(ip.loss_weight) == [0.25]
    assert ip.include[0].phase == pb.TRAIN and list(ip.include[0].stage) == ["s"]
    assert ip.exclude[0].min_level == 2
    assert list(ip.blobs[0].data) == [3, 4]
    assert (ip.inner_product_param.num_output, ip.inner_product_param.axis) == (2, 2)
    assert notes == ["upgraded 1 V1 layers ('layers') to the current format ('layer')"]


V1_PARAM_FIELDS = [
    f.name
    for f in pb.V1LayerParameter.DESCRIPTOR.fields
    if f.name.endswith("_param") and f.message_type
]


def test_v1_every_param_message_is_carried_over():
    entry = pb.V1LayerParameter(name="all", type=pb.V1LayerParameter.CONVOLUTION)
    for name in V1_PARAM_FIELDS:
        getattr(entry, name).SetInParent()
    entry.convolution_param.num_output = 3
    entry.loss_param.ignore_label = 255
    entry.transform_param.mean_value.extend([1, 2, 3])
    net = pb.NetParameter()
    net.layers.append(entry)
    out, _ = upgrade_net(net)
    (layer,) = out.layer
    assert len(V1_PARAM_FIELDS) == 30
    for name in V1_PARAM_FIELDS:
        assert layer.HasField(name), name
        assert getattr(layer, name) == getattr(entry, name), name
    assert layer.convolution_param.num_output == 3
    assert layer.loss_param.ignore_label == 255
    assert list(layer.transform_param.mean_value) == [1, 2, 3]


def test_v1_data_transform_fields_move_to_transform_param():
    net, notes = upgraded(
        """
        layers {
          name: "d" type: DATA top: "data"
          data_param { source: "db" batch_size: 2 scale: 0.25 mean_file: "m" crop_size: 3
                       mirror: true }
        }
        layers {
          name: "i" type: IMAGE_DATA top: "i"
          image_data_param { source: "list" scale: 2 }
        }
        layers {
          name: "w" type: WINDOW_DATA top: "w"
          window_data_param { source: "win" mirror: true crop_size: 5 }
        }
        """
    )
    d, i, w = net.layer
    assert (d.transform_param.scale, d.transform_param.mean_file) == (0.25, "m")
    assert (d.transform_param.crop_size, d.transform_param.mirror) == (3, True)
    assert d.data_param == pb.DataParameter(source="db", batch_size=2)
    assert i.transform_param.scale == 2 and not i.image_data_param.HasField("scale")
    assert (w.transform_param.mirror, w.transform_param.crop_size) == (True, 5)
    assert not w.window_data_param.HasField("crop_size")
    assert sum("transform_param" in note for note in notes) == 3


def test_current_format_data_layer_with_old_fields_is_upgraded_too():
    net, notes = upgraded(
        'layer { name: "d" type: "Data" top: "d" data_param { source: "s" scale: 0.5 } '
        "transform_param { scale: 0.5 mirror: true } }"
    )
    (d,) = net.layer
    assert d.transform_param.scale == 0.5 and d.transform_param.mirror
    assert not d.data_param.HasField("scale")
    assert len(notes) == 1


def test_window_data_keeps_its_own_scale_in_the_current_format():
    # Caffe's WindowData applies window_data_param.scale (never transform_param.scale), and its
    # upgrade only touches V0/V1 nets: the scale of a current-format net stays where it is read
    current = (
        'layer { name: "w" type: "WindowData" top: "w" window_data_param { source: "win" '
        "scale: 0.5 } }"
    )
    assert not net_needs_upgrade(net_from(current))
    (w,) = upgraded(current)[0].layer
    assert w.window_data_param.scale == 0.5 and not w.transform_param.HasField("scale")
    # a V1 net's scale moves as Caffe moves it (where the layer then ignores it)
    (w,) = upgraded(
        'layers { name: "w" type: WINDOW_DATA top: "w" window_data_param { source: "win" '
        "scale: 0.5 } }"
    )[0].layer
    assert w.transform_param.scale == 0.5 and not w.window_data_param.HasField("scale")


def test_conflicting_old_and_new_transform_fields_are_an_error():
    with pytest.raises(UpgradeError, match="scale"):
        upgraded(
            'layer { name: "d" type: "Data" data_param { scale: 0.5 } '
            "transform_param { scale: 2 } }"
        )


def test_both_layer_and_layers_is_an_error_naming_the_source():
    net = net_from('layer { name: "a" type: "ReLU" } layers { name: "b" type: RELU }')
    with pytest.raises(UpgradeError) as err:
        upgrade_net(net, "models/mixed.prototxt")
    assert str(err.value).startswith("models/mixed.prototxt:")
    assert "'layer'" in str(err.value) and "'layers'" in str(err.value)


# ---------------------------------------------------------------------------- inputs


def test_input_dims_become_a_first_input_layer():
    net, notes = upgraded(
        'input: "data" input: "label" '
        "input_dim: 10 input_dim: 3 input_dim: 4 input_dim: 5 "
        "input_dim: 10 input_dim: 1 input_dim: 1 input_dim: 1 "
        'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }'
    )
    first = net.layer[0]
    assert (first.name, first.type, list(first.top)) == ("input", "Input", ["data", "label"])
    assert [list(s.dim) for s in first.input_param.shape] == [[10, 3, 4, 5], [10, 1, 1, 1]]
    assert net.layer[1].name == "r"
    assert not (net.input or net.input_dim or net.input_shape)
    assert any("Input layer" in note for note in notes)


def test_input_shape_wins_and_any_rank_is_kept():
    net, _ = upgraded(
        'input: "seq" input_shape { dim: 7 dim: 2 } input_dim: 1 input_dim: 1 input_dim: 1 '
        "input_dim: 1"
    )
    (first,) = net.layer
    assert [list(s.dim) for s in first.input_param.shape] == [[7, 2]]


def test_inputs_without_shapes_are_dropped():
    net, notes = upgraded('input: "data" layer { name: "r" type: "ReLU" }')
    assert [layer.name for layer in net.layer] == ["r"]
    assert not net.input
    assert notes and "dropped" in notes[0]


@pytest.mark.parametrize(
    "text",
    [
        'input: "a" input_dim: 1 input_dim: 2',
        'input: "a" input: "b" input_shape { dim: 1 }',
        "input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4",
    ],
)
def test_inconsistent_input_declarations_are_errors(text):
    with pytest.raises(UpgradeError, match="input"):
        upgraded(text)


# ---------------------------------------------------------------------------- BatchNorm


def test_batch_norm_with_three_params_gets_zero_rates():
    text = """
    layer { name: "bn" type: "BatchNorm" param { lr_mult: 1 } param { lr_mult: 1 decay_mult: 3 }
            param { } }
    layer { name: "bn2" type: "BatchNorm" param { lr_mult: 1 } }
    layer { name: "sc" type: "Scale" param { lr_mult: 1 } param { lr_mult: 1 } param { } }
    """
    assert net_needs_upgrade(net_from(text))
    net, notes = upgraded(text)
    bn, bn2, sc = net.layer
    assert [(p.lr_mult, p.decay_mult) for p in bn.param] == [(0, 0)] * 3
    assert [(p.lr_mult, p.decay_mult) for p in bn2.param] == [(1, 1)]
    assert [p.lr_mult for p in sc.param] == [1, 1, 1]
    assert len(notes) == 1 and "'bn'" in notes[0]
    assert not net_needs_upgrade(net)


# ---------------------------------------------------------------------------- general


def test_current_nets_pass_through_unchanged():
    text = 'name: "n" layer { name: "a" type: "Input" top: "x" input_param { shape { dim: 1 } } }'
    net = net_from(text)
    assert not net_needs_upgrade(net)
    out, notes = upgrade_net(net)
    assert out == net and notes == []
    assert out is not net


def test_upgrade_does_not_modify_its_argument():
    net = net_from(V0_PADDING_NET)
    before = net.SerializeToString()
    upgrade_net(net)
    assert net.SerializeToString() == before


def test_upgrade_keeps_net_level_fields():
    net, _ = upgraded(
        'name: "keep" force_backward: true debug_info: true state { phase: TRAIN level: 2 } '
        'layers { name: "r" type: RELU }'
    )
    assert (net.name, net.force_backward, net.debug_info) == ("keep", True, True)
    assert (net.state.phase, net.state.level) == (pb.TRAIN, 2)


# ---------------------------------------------------------------------------- solvers

SOLVER_TYPES = {
    "SGD": "SGD",
    "NESTEROV": "Nesterov",
    "ADAGRAD": "AdaGrad",
    "RMSPROP": "RMSProp",
    "ADADELTA": "AdaDelta",
    "ADAM": "Adam",
}


@pytest.mark.parametrize(("old", "new"), SOLVER_TYPES.items())
def test_solver_type_enum_becomes_type_string(old, new):
    sp = text_format.Merge(f"base_lr: 0.1 solver_type: {old}", pb.SolverParameter())
    assert solver_needs_upgrade(sp)
    out, notes = upgrade_solver(sp, "s.prototxt")
    assert out.type == new and not out.HasField("solver_type")
    assert out.base_lr == pytest.approx(0.1)
    assert len(notes) == 1 and new in notes[0]
    assert not solver_needs_upgrade(out)


def test_solver_type_and_matching_type_string_are_accepted():
    sp = text_format.Merge('solver_type: ADAM type: "Adam"', pb.SolverParameter())
    out, _ = upgrade_solver(sp)
    assert out.type == "Adam" and not out.HasField("solver_type")


def test_conflicting_solver_types_are_an_error():
    sp = text_format.Merge('solver_type: NESTEROV type: "Adam"', pb.SolverParameter())
    with pytest.raises(UpgradeError) as err:
        upgrade_solver(sp, "old_solver.prototxt")
    message = str(err.value)
    assert message.startswith("old_solver.prototxt:")
    assert "NESTEROV" in message and "'Adam'" in message


def test_current_solver_passes_through_unchanged():
    sp = text_format.Merge('type: "RMSProp" rms_decay: 0.9 net: "n.prototxt"', pb.SolverParameter())
    assert not solver_needs_upgrade(sp)
    out, notes = upgrade_solver(sp)
    assert out == sp and notes == []


def test_nets_inside_a_solver_are_upgraded():
    sp = text_format.Merge(
        'net_param { layers { name: "r" type: RELU } } '
        'test_net_param { input: "x" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1 }',
        pb.SolverParameter(),
    )
    out, notes = upgrade_solver(sp)
    assert [layer.type for layer in out.net_param.layer] == ["ReLU"]
    assert [layer.type for layer in out.test_net_param[0].layer] == ["Input"]
    assert len(notes) == 2


# ---------------------------------------------------------------------------- corpus


def corpus_net(rel: str) -> pb.NetParameter:
    net, _ = upgrade_net(net_from((CORPUS / rel).read_text()), rel)
    return net


def signature(layers) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    return [(la.name, la.type, tuple(la.bottom), tuple(la.top)) for la in layers]


def train_phase(net: pb.NetParameter) -> list[pb.LayerParameter]:
    """Layers kept in TRAIN by include/exclude phase rules (enough for these nets)."""
    kept = []
    for layer in net.layer:
        if layer.include and not any(r.phase == pb.TRAIN for r in layer.include):
            continue
        if any(r.HasField("phase") and r.phase == pb.TRAIN for r in layer.exclude):
            continue
        kept.append(layer)
    return kept


OLD, MASTER = "BVLC__caffe@f15210cd", "BVLC__caffe"

# V1 nets (Dec 2014) whose upgraded form equals master's file layer for layer, every field.
V1_IDENTICAL = [
    "examples/mnist/lenet_train_test.prototxt",
    "examples/mnist/mnist_autoencoder.prototxt",
    "examples/siamese/mnist_siamese_train_test.prototxt",
    "models/bvlc_reference_caffenet/train_val.prototxt",
    "examples/finetune_pascal_detection/pascal_finetune_trainval_test.prototxt",
]


@pytest.mark.parametrize("rel", V1_IDENTICAL)
def test_v1_corpus_net_upgrades_to_master(rel):
    old, new = corpus_net(f"{OLD}/{rel}"), corpus_net(f"{MASTER}/{rel}")
    assert signature(old.layer) == signature(new.layer)
    for a, b in zip(old.layer, new.layer):
        assert a == b, a.name


CAFFENET_DEPLOY = "models/bvlc_reference_caffenet/deploy.prototxt"
GOOGLENET_DEPLOY = "models/bvlc_googlenet/deploy.prototxt"


@pytest.mark.parametrize(
    ("old_rel", "new_rel"),
    [
        (f"{OLD}/{CAFFENET_DEPLOY}", CAFFENET_DEPLOY),
        (f"{OLD}/{GOOGLENET_DEPLOY}", GOOGLENET_DEPLOY),
        # V0 (Nov 2013): padding layers folded, conv/pool/LRN settings mapped.
        ("BVLC__caffe@91254090/examples/imagenet_deploy.prototxt", CAFFENET_DEPLOY),
    ],
)
def test_old_deploy_nets_match_master_structure(old_rel, new_rel):
    # Old deploy files declare `input`/`input_dim`; the upgrade turns them into an Input layer
    # named "input" (Caffe's choice), while master's files name that layer "data". Everything
    # else the upgrade is responsible for (types, wiring, shapes, geometry) must agree.
    old, new = corpus_net(old_rel), corpus_net(f"{MASTER}/{new_rel}")
    assert (old.layer[0].name, new.layer[0].name) == ("input", "data")
    assert old.layer[0].input_param == new.layer[0].input_param
    assert signature(old.layer[1:]) == signature(new.layer[1:])
    assert signature(old.layer[:1])[0][1:] == signature(new.layer[:1])[0][1:]
    for a, b in zip(old.layer[1:], new.layer[1:]):
        # Fillers and learning-rate settings changed between commits; geometry did not.
        if a.type == "Convolution":
            for msg in (a, b):
                msg.convolution_param.ClearField("weight_filler")
                msg.convolution_param.ClearField("bias_filler")
            assert a.convolution_param == b.convolution_param, a.name
        for field in ("pooling_param", "lrn_param", "dropout_param"):
            assert getattr(a, field) == getattr(b, field), (a.name, field)


def test_old_googlenet_train_val_matches_master_structure():
    old = corpus_net(f"{OLD}/models/bvlc_googlenet/train_val.prototxt")
    new = corpus_net(f"{MASTER}/models/bvlc_googlenet/train_val.prototxt")
    a, b = signature(old.layer), signature(new.layer)
    # Master renamed the top of the second auxiliary loss ("loss2/loss1" -> "loss2/loss2"), an
    # edit to the net itself, not something the upgrade does.
    i = [s[0] for s in a].index("loss2/loss")
    assert (a[i][3], b[i][3]) == (("loss2/loss1",), ("loss2/loss2",))
    assert a[:i] + a[i + 1 :] == b[:i] + b[i + 1 :]
    assert [layer.param for layer in old.layer] == [layer.param for layer in new.layer]


def test_old_hdf5_classification_matches_master_structure():
    # train_val2 was renamed nonlinear_train_val; master switched its fillers to xavier.
    old = corpus_net(f"{OLD}/examples/hdf5_classification/train_val2.prototxt")
    new = corpus_net(f"{MASTER}/examples/hdf5_classification/nonlinear_train_val.prototxt")
    assert signature(old.layer) == signature(new.layer)
    assert [layer.param for layer in old.layer] == [layer.param for layer in new.layer]


@pytest.mark.parametrize(
    ("old_rel", "new_rel"),
    [
        ("BVLC__caffe@91254090/data/lenet.prototxt", "examples/mnist/lenet_train_test.prototxt"),
        (
            "BVLC__caffe@77fae0cb/examples/cifar/cifar10_18pct.prototxt",
            "examples/cifar10/cifar10_full_train_test.prototxt",
        ),
    ],
)
def test_v0_train_nets_match_master_train_phase(old_rel, new_rel):
    # The V0 files are train-only nets; master merged train and test into one file, so the
    # comparison is against master's TRAIN phase. The old loss layers had no top (master names
    # it), so for the last layer only the type and bottoms are compared.
    old = corpus_net(old_rel)
    new = train_phase(corpus_net(f"{MASTER}/{new_rel}"))
    a, b = signature(old.layer), signature(new)
    assert a[:-1] == b[:-1]
    assert (a[-1][1], a[-1][2]) == (b[-1][1], b[-1][2]) == ("SoftmaxWithLoss", a[-1][2])
    for x, y in zip(old.layer, new):
        if x.type in ("Convolution", "InnerProduct"):
            # Geometry and learning rates are the upgrade's job (padding layers folded, blobs_lr
            # and weight_decay turned into ParamSpecs); fillers changed between commits.
            gx, gy = x.convolution_param, y.convolution_param
            assert (list(gx.pad), list(gx.kernel_size), list(gx.stride), gx.num_output) == (
                list(gy.pad),
                list(gy.kernel_size),
                list(gy.stride),
                gy.num_output,
            ), x.name
            assert x.inner_product_param.num_output == y.inner_product_param.num_output
            assert [p.lr_mult for p in x.param] == [p.lr_mult for p in y.param], x.name
        if x.type == "Pooling":
            assert x.pooling_param == y.pooling_param, x.name
    data_old, data_new = old.layer[0], new[0]
    assert data_old.transform_param.scale == data_new.transform_param.scale
    assert data_old.data_param.batch_size == data_new.data_param.batch_size
