"""NetSpec (caffe.net_spec): the behaviours of pycaffe's test_net_spec.py, plus a LeNet written
by NetSpec that parses back as the very NetParameter of Caffe's examples/mnist/lenet.prototxt."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

import minicaffe
from minicaffe import TEST, Net
from minicaffe.errors import NetBuildError
from minicaffe.net_spec import NetSpec, NetSpecTypeError, to_proto
from minicaffe.net_spec import layers as L
from minicaffe.net_spec import params as P
from minicaffe.proto import caffe_pb2
from minicaffe.prototxt import read_net_param

CORPUS = Path(__file__).parent / "data" / "corpus" / "BVLC__caffe" / "examples" / "mnist"


def needs_layers(*types):
    missing = [t for t in types if t not in minicaffe.layer_type_list()]
    return pytest.mark.skipif(bool(missing), reason=f"layer types not implemented yet: {missing}")


def lenet(batch_size):
    n = NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[batch_size, 1, 28, 28]),
                                         dict(dim=[batch_size, 1, 1, 1])],
                                  transform_param=dict(scale=1.0 / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20,
                            weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50,
                            weight_filler=dict(type="xavier"))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
    return n.to_proto()


def anon_lenet(batch_size):
    data, label = L.DummyData(shape=[dict(dim=[batch_size, 1, 28, 28]),
                                     dict(dim=[batch_size, 1, 1, 1])],
                              transform_param=dict(scale=1.0 / 255), ntop=2)
    conv1 = L.Convolution(data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    pool1 = L.Pooling(conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    conv2 = L.Convolution(pool1, kernel_size=5, num_output=50, weight_filler=dict(type="xavier"))
    pool2 = L.Pooling(conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    ip1 = L.InnerProduct(pool2, num_output=500, weight_filler=dict(type="xavier"))
    relu1 = L.ReLU(ip1, in_place=True)
    ip2 = L.InnerProduct(relu1, num_output=10, weight_filler=dict(type="xavier"))
    loss = L.SoftmaxWithLoss(ip2, label)
    return loss.to_proto()


def silent_net():
    n = NetSpec()
    n.data, n.data2 = L.DummyData(shape=dict(dim=3), ntop=2)
    n.silence_data = L.Silence(n.data, ntop=0)
    n.silence_data2 = L.Silence(n.data2, ntop=0)
    return n.to_proto()


def _load(tmp_path, proto, phase=TEST):
    path = tmp_path / "net.prototxt"
    path.write_text(str(proto))
    return Net(str(path), phase)


def test_lenet_proto_structure():
    proto = lenet(50)
    assert [l.name for l in proto.layer] == ["data", "conv1", "pool1", "conv2", "pool2", "ip1",
                                             "relu1", "ip2", "loss"]
    assert proto.layer[6].bottom == proto.layer[6].top == ["ip1"]  # ReLU in place
    assert list(proto.layer[0].top) == ["data", "label"]
    assert proto.layer[0].transform_param.scale == pytest.approx(1 / 255)
    assert [list(s.dim) for s in proto.layer[0].dummy_data_param.shape] == [[50, 1, 28, 28],
                                                                             [50, 1, 1, 1]]
    assert list(proto.layer[1].convolution_param.kernel_size) == [5]  # scalar -> repeated
    assert proto.layer[2].pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    assert list(proto.layer[8].bottom) == ["ip2", "label"]


def test_anonymous_lenet_gets_type_counter_names():
    proto = anon_lenet(50)
    names = [l.name for l in proto.layer]
    assert names == ["DummyData1", "Convolution1", "Pooling1", "Convolution2", "Pooling2",
                     "InnerProduct1", "ReLU1", "InnerProduct2", "SoftmaxWithLoss1"]
    assert list(proto.layer[0].top) == ["DummyData1", "DummyData2"]
    assert proto.layer[6].bottom == proto.layer[6].top == ["InnerProduct1"]


@needs_layers("Convolution", "Pooling", "SoftmaxWithLoss")
@pytest.mark.parametrize("make", [lenet, anon_lenet])
def test_lenet_builds(tmp_path, make):
    net = _load(tmp_path, make(50))
    assert len(net.layers) == 9
    assert net.blobs["data" if make is lenet else "DummyData1"].shape == (50, 1, 28, 28)


def test_zero_tops(tmp_path):
    proto = silent_net()
    assert [l.name for l in proto.layer] == ["data", "silence_data", "silence_data2"]
    net = _load(tmp_path, proto)
    assert len(net.forward()) == 0


def test_type_error_for_non_top_inputs():
    data = L.DummyData(ntop=2)  # a tuple of two Tops
    with pytest.raises(TypeError, match="Silence: bottom 0 must be a Top.*tuple"):
        L.Silence(data, ntop=0)
    with pytest.raises(NetSpecTypeError):
        L.Silence(data, ntop=0)
    L.Silence(*data, ntop=0)  # each element is a Top


def test_param_routing_and_values():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3]))
    n.ip = L.InnerProduct(n.data, num_output=4, param=[dict(lr_mult=1), dict(lr_mult=2,
                          decay_mult=0)], loss_weight=0.5, include=dict(phase=TEST),
                          propagate_down=[False], bias_filler=dict(type="constant", value=0.1))
    n.pool = L.Pooling(n.data, pool="AVE", kernel_size=2)   # enum by name
    n.py = L.Python(n.data, module="m", layer="K", param_str="{'a': 1}")
    n.relu = L.ReLU(n.ip, negative_slope=0.1, engine=P.ReLU.CAFFE)
    layer = {l.name: l for l in n.to_proto().layer}
    ip = layer["ip"]
    assert [p.lr_mult for p in ip.param] == [1, 2] and ip.param[1].decay_mult == 0
    assert list(ip.loss_weight) == [0.5] and ip.include[0].phase == TEST
    assert list(ip.propagate_down) == [False]
    assert ip.inner_product_param.bias_filler.value == pytest.approx(0.1)
    assert layer["pool"].pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    assert layer["py"].python_param.module == "m" and layer["py"].python_param.layer == "K"
    assert layer["py"].python_param.param_str == "{'a': 1}"
    assert layer["relu"].relu_param.engine == caffe_pb2.ReLUParameter.CAFFE
    with pytest.raises(NetBuildError, match="unknown parameter 'bogus'"):
        L.ReLU(n.data, bogus=1).to_proto()
    with pytest.raises(NetBuildError, match="one of .*MAX"):
        L.Pooling(n.data, pool="MEDIAN").to_proto()


def test_to_proto_lists_dependencies_first_and_once():
    a = L.Input(shape=dict(dim=[1]))
    b = L.ReLU(a)
    c = L.Eltwise(a, b)
    proto = to_proto(c, b)
    assert [l.type for l in proto.layer] == ["Input", "ReLU", "Eltwise"]
    n = NetSpec()
    n["x"] = a
    n["y"] = c
    assert n.keys() == ["x", "y"] and "x" in n
    del n["y"]
    assert n.keys() == ["x"]
    with pytest.raises(AttributeError):
        n.missing  # noqa: B018


def test_params_enums():
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX
    assert P.Data.LMDB == caffe_pb2.DataParameter.LMDB
    assert P.Eltwise.SUM == caffe_pb2.EltwiseParameter.SUM
    with pytest.raises(AttributeError):
        P.NoSuchLayer  # noqa: B018


def lenet_deploy():
    """Caffe's examples/mnist/lenet.prototxt, written with NetSpec."""
    lr = [dict(lr_mult=1), dict(lr_mult=2)]
    fill = dict(weight_filler=dict(type="xavier"), bias_filler=dict(type="constant"))
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[64, 1, 28, 28]))
    n.conv1 = L.Convolution(n.data, param=lr, num_output=20, kernel_size=5, stride=1, **fill)
    n.pool1 = L.Pooling(n.conv1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.conv2 = L.Convolution(n.pool1, param=lr, num_output=50, kernel_size=5, stride=1, **fill)
    n.pool2 = L.Pooling(n.conv2, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.ip1 = L.InnerProduct(n.pool2, param=lr, num_output=500, **fill)
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, param=lr, num_output=10, **fill)
    n.prob = L.Softmax(n.ip2)
    proto = n.to_proto()
    proto.name = "LeNet"
    return proto


def test_netspec_lenet_written_by_minicaffe_parses_as_caffes_lenet(tmp_path):
    path = tmp_path / "lenet.prototxt"
    path.write_text(str(lenet_deploy()))
    ours = read_net_param(str(path))
    caffes = read_net_param(str(CORPUS / "lenet.prototxt"))
    assert ours == caffes
    # and the text is plain protobuf text format (what Caffe's parser reads)
    again = caffe_pb2.NetParameter()
    text_format.Merge(path.read_text(), again)
    assert again == lenet_deploy()


@needs_layers("Convolution", "Pooling")
def test_netspec_lenet_builds_and_runs(tmp_path):
    net = _load(tmp_path, lenet_deploy())
    assert net.blobs["prob"].shape == (64, 10)
    out = net.forward()
    assert out["prob"].shape == (64, 10)


def test_update_merges_params_into_the_layer_of_a_top():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    n.conv1 = L.Convolution(n.data, num_output=8, kernel_size=3)
    n.update("conv1", dict(num_output=16, pad=1))  # as pycaffe's NetSpec.update
    layer = n.to_proto().layer[1]
    assert layer.convolution_param.num_output == 16
    assert list(layer.convolution_param.pad) == [1]
    assert list(layer.convolution_param.kernel_size) == [3]
    with pytest.raises(AttributeError):
        n.update("conv9", dict(num_output=1))
