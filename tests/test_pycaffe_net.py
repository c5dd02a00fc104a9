"""The pycaffe Net surface: the behaviours of pycaffe's test_net.py and the rest of section 8."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

import minicaffe
from minicaffe import TEST, TRAIN, Net
from minicaffe.errors import NetBuildError, ShapeError, WeightsError

SIMPLE = """name: "testnet" force_backward: true
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { num: 5 channels: 2 height: 3 width: 4
                     num: 5 channels: 1 height: 1 width: 1
                     data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" } } }
layer { name: "conv" type: "InnerProduct" bottom: "data" top: "conv"
  inner_product_param { num_output: 11 weight_filler { type: "gaussian" std: 1 }
                        bias_filler { type: "constant" value: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param { num_output: 7 weight_filler { type: "gaussian" std: 2.5 }
                        bias_filler { type: "constant" value: -3 } } }
layer { name: "loss" type: "Softmax" bottom: "ip" top: "loss" loss_weight: 1 }
layer { name: "silence" type: "Silence" bottom: "label" }
"""


@pytest.fixture
def net(tmp_path):
    path = tmp_path / "simple.prototxt"
    path.write_text(SIMPLE)
    return Net(str(path), TRAIN)


def test_layer_dict_layers_and_names(net):
    assert list(net.layer_dict) == list(net._layer_names)
    for name, layer in net.layer_dict.items():
        assert layer is net.layers[list(net._layer_names).index(name)]
        assert layer.name == name
    assert [l.type for l in net.layers] == ["DummyData", "InnerProduct", "InnerProduct",
                                            "Softmax", "Silence"]
    assert [b.shape for b in net.layers[1].blobs] == [(11, 24), (11,)]


def test_memory_outlives_the_net(net):
    params = [b for layer in net.params.values() for b in layer]
    blobs = list(net.blobs.values())
    del net
    total = sum(float(p.data.sum()) + float(p.diff.sum()) for p in params)
    total += sum(float(b.data.sum()) + float(b.diff.sum()) for b in blobs)
    assert np.isfinite(total)


def test_forward_backward_and_clear_param_diffs(net):
    net.forward()
    net.backward()
    diffs = [b.diff for layer in net.params.values() for b in layer]
    assert all(np.any(d != 0) for d in diffs)
    net.clear_param_diffs()
    assert all(not np.any(b.diff) for layer in net.params.values() for b in layer)


def test_forward_start_end_runs_only_that_range(net):
    net.forward()
    sample = np.random.default_rng(0).standard_normal(net.blobs["conv"].shape).astype(np.float32)
    net.blobs["conv"].data[...] = sample
    out = net.forward(start="ip", end="ip")
    assert list(out) == ["ip"]
    w, b = (p.data for p in net.params["ip"])
    np.testing.assert_allclose(out["ip"], sample @ w.T + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(net.blobs["conv"].data, sample)  # ip's bottom untouched
    extra = net.forward(start="ip", end="ip", blobs=["conv"])
    assert set(extra) == {"ip", "conv"}


def test_backward_start_end_runs_only_that_range(net):
    net.forward()
    sample = np.random.default_rng(1).standard_normal(net.blobs["ip"].shape).astype(np.float32)
    net.blobs["ip"].diff[...] = sample
    out = net.backward(start="ip", end="ip")
    assert list(out) == ["conv"]  # the bottoms of `end`
    w = net.params["ip"][0].data
    np.testing.assert_allclose(out["conv"], sample @ w, rtol=1e-5, atol=1e-5)
    assert set(net.backward(start="ip", end="ip", diffs=["ip"])) == {"conv", "ip"}


def test_inputs_outputs_top_bottom_names(net):
    assert net.inputs == [] and net.outputs == ["loss"]
    assert net.top_names == OrderedDict([("data", ["data", "label"]), ("conv", ["conv"]),
                                         ("ip", ["ip"]), ("loss", ["loss"]), ("silence", [])])
    assert net.bottom_names == OrderedDict([("data", []), ("conv", ["data"]), ("ip", ["conv"]),
                                            ("loss", ["ip"]), ("silence", ["label"])])
    assert net._blob_names == ["data", "label", "conv", "ip", "loss"]
    assert net._top_ids(0) == [0, 1] and net._bottom_ids(2) == [2]
    assert net._blobs[3] is net.blobs["ip"]
    assert net.blob_loss_weights == OrderedDict(
        [("data", 0.0), ("label", 0.0), ("conv", 0.0), ("ip", 0.0), ("loss", 1.0)])
    assert net._blob_loss_weights == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert net._outputs == [4] and net._inputs == []


def test_save_and_read_both_constructor_forms(net, tmp_path):
    path = str(tmp_path / "w.caffemodel")
    net.save(path)
    model = str(tmp_path / "simple.prototxt")
    legacy = Net(model, path, TRAIN)              # Net(file, weights, phase)
    named = Net(model, TRAIN, weights=path)       # Net(file, phase, weights=)
    for other in (legacy, named):
        for name, blobs in net.params.items():
            for a, b in zip(blobs, other.params[name]):
                np.testing.assert_array_equal(a.data, b.data)


def test_save_hdf5_and_load_hdf5(net, tmp_path):
    path = str(tmp_path / "w.caffemodel.h5")
    net.save_hdf5(path)
    import h5py

    with h5py.File(path, "r") as f:
        assert sorted(f["data"]) == sorted(net._layer_names)  # a group per layer
        assert f["data/conv/0"].shape == (11, 24) and len(f["data/silence"]) == 0
    other = Net(str(tmp_path / "simple.prototxt"), TRAIN)
    other.load_hdf5(path)
    for name, blobs in net.params.items():
        for a, b in zip(blobs, other.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
    third = Net(str(tmp_path / "simple.prototxt"), TEST, weights=path)  # copy_from reads .h5
    np.testing.assert_array_equal(third.params["ip"][0].data, net.params["ip"][0].data)


def test_hdf5_writes_shared_params_once_and_checks_shapes(tmp_path):
    text = """
    layer { name: "d" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "f1" type: "InnerProduct" bottom: "a" top: "fa" param { name: "w" }
            inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
    layer { name: "f2" type: "InnerProduct" bottom: "b" top: "fb" param { name: "w" }
            inner_product_param { num_output: 2 } }
    """
    net = Net(text, TRAIN)
    path = str(tmp_path / "s.h5")
    net.save_hdf5(path, write_diff=True)
    import h5py

    with h5py.File(path, "r") as f:
        assert sorted(f["data/f1"]) == ["0", "1"] and sorted(f["data/f2"]) == ["1"]
        assert "diff" in f and sorted(f["diff/f2"]) == ["1"]
    fresh = Net(text, TRAIN)
    fresh.load_hdf5(path)
    np.testing.assert_array_equal(fresh.params["f2"][0].data, net.params["f1"][0].data)
    wide = Net(text.replace("num_output: 2 weight", "num_output: 3 weight")
               .replace("num_output: 2 }", "num_output: 3 }"), TRAIN)
    with pytest.raises(WeightsError, match="'f1'.*shape mismatch"):
        wide.load_hdf5(path)
    with pytest.raises(WeightsError, match="cannot open as HDF5"):
        net.load_hdf5(str(tmp_path / "missing.h5"))


# ---------------------------------------------------------------- levels and stages (pycaffe)

LEVELS = """
layer { name: "data" type: "DummyData" top: "data"
        dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } } }
layer { name: "NoLevel" type: "InnerProduct" bottom: "data" top: "NoLevel"
        inner_product_param { num_output: 1 } }
layer { name: "Level0Only" type: "InnerProduct" bottom: "data" top: "Level0Only"
        include { min_level: 0 max_level: 0 } inner_product_param { num_output: 1 } }
layer { name: "Level1Only" type: "InnerProduct" bottom: "data" top: "Level1Only"
        include { min_level: 1 max_level: 1 } inner_product_param { num_output: 1 } }
layer { name: "Level>=0" type: "InnerProduct" bottom: "data" top: "Level>=0"
        include { min_level: 0 } inner_product_param { num_output: 1 } }
layer { name: "Level>=1" type: "InnerProduct" bottom: "data" top: "Level>=1"
        include { min_level: 1 } inner_product_param { num_output: 1 } }
"""

STAGES = """
layer { name: "data" type: "DummyData" top: "data"
        dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } } }
layer { name: "A" type: "InnerProduct" bottom: "data" top: "A"
        include { stage: "A" } inner_product_param { num_output: 1 } }
layer { name: "B" type: "InnerProduct" bottom: "data" top: "B"
        include { stage: "B" } inner_product_param { num_output: 1 } }
layer { name: "AorB" type: "InnerProduct" bottom: "data" top: "AorB"
        include { stage: "A" } include { stage: "B" } inner_product_param { num_output: 1 } }
layer { name: "AandB" type: "InnerProduct" bottom: "data" top: "AandB"
        include { stage: "A" stage: "B" } inner_product_param { num_output: 1 } }
"""


def _non_data(net):
    return [b for b in net.blobs if "data" not in b]


@pytest.mark.parametrize("level, expected", [
    (0, ["NoLevel", "Level0Only", "Level>=0"]),
    (1, ["NoLevel", "Level1Only", "Level>=0", "Level>=1"]),
])
def test_levels(level, expected):
    assert _non_data(Net(LEVELS, TEST, level=level)) == expected


@pytest.mark.parametrize("stages, expected", [
    (["A"], ["A", "AorB"]),
    (["B"], ["B", "AorB"]),
    (["A", "B"], ["A", "B", "AorB", "AandB"]),
])
def test_stages(stages, expected):
    assert _non_data(Net(STAGES, TEST, stages=stages)) == expected


# ---------------------------------------------------------------- batching helpers

MLP = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" }
                              bias_filler { type: "gaussian" } } }
layer { name: "prob" type: "Softmax" bottom: "y" top: "p" }
"""


def test_forward_all_batches_pads_and_trims():
    net = Net("force_backward: true\n" + MLP, TEST, dtype=np.float64)
    x = np.random.default_rng(2).standard_normal((10, 3))
    out = net.forward_all(x=x, blobs=["y"])
    assert set(out) == {"p", "y"} and out["p"].shape == (10, 2)
    w, b = (p.data for p in net.params["ip"])
    y = x @ w.T + b
    np.testing.assert_allclose(out["y"], y, rtol=1e-12)
    e = np.exp(y - y.max(axis=1, keepdims=True))
    np.testing.assert_allclose(out["p"], e / e.sum(axis=1, keepdims=True), rtol=1e-12)
    assert net.blobs["x"].shape == (4, 3)  # batches kept the net's batch size
    out["p"][0, 0] = 99.0  # results are copies, not views of the blobs
    assert net.blobs["p"].data[0, 0] != 99.0
    assert net.forward_all()["p"].shape == (4, 2)  # no inputs: one pass


def test_forward_backward_all():
    net = Net("force_backward: true\n" + MLP, TEST, dtype=np.float64)
    rng = np.random.default_rng(4)
    x, dp = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
    outs, diffs = net.forward_backward_all(x=x, p=dp)
    assert outs["p"].shape == (6, 2) and diffs["x"].shape == (6, 3)
    for i in range(0, 6, 4):  # check against batch-by-batch forward/backward
        xb = np.zeros((4, 3))
        db = np.zeros((4, 2))
        xb[: len(x[i:i + 4])] = x[i:i + 4]
        db[: len(dp[i:i + 4])] = dp[i:i + 4]
        net.forward(x=xb)
        g = net.backward(p=db)["x"]
        n = min(4, 6 - i)
        np.testing.assert_allclose(diffs["x"][i:i + n], g[:n], rtol=1e-12)
    with pytest.raises(NetBuildError, match="neither inputs"):
        net.forward_backward_all(q=x)


def test_forward_input_checks():
    net = Net(MLP, TEST)
    with pytest.raises(NetBuildError, match="not net inputs"):
        net.forward(z=np.zeros((4, 3)))
    with pytest.raises(NetBuildError, match="not blobs"):
        net.forward(blobs=["nope"])
    with pytest.raises(ShapeError, match="batch size must match"):
        net.backward(p=np.zeros((3, 2)))
    with pytest.raises(ShapeError, match="same number of items"):
        list(net._batch({"x": np.zeros((4, 3)), "y": np.zeros((5, 2))}))


def test_hooks_and_raw_forward_backward():
    net = Net("force_backward: true\n" + MLP, TEST)
    seen = []
    net.before_forward(lambda i: seen.append(("bf", i)))
    net.after_forward(lambda i: seen.append(("af", i)))
    net.before_backward(lambda i: seen.append(("bb", i)))
    net.after_backward(lambda i: seen.append(("ab", i)))
    net._forward(1, 2)
    net._backward(2, 1)
    assert seen == [("bf", 1), ("af", 1), ("bf", 2), ("af", 2),
                    ("bb", 2), ("ab", 2), ("bb", 1), ("ab", 1)]


def test_reshape_after_changing_an_input():
    net = Net(MLP, TEST)
    net.blobs["x"].reshape(7, 3)
    net.reshape()
    assert net.blobs["p"].shape == (7, 2)


def test_set_input_arrays_feeds_memory_data():
    text = """
    layer { name: "mem" type: "MemoryData" top: "data" top: "label"
            memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 } }
    layer { name: "s" type: "Silence" bottom: "label" }
    """
    net = Net(text, TEST)
    data = np.arange(16, dtype=np.float32).reshape(4, 1, 2, 2)
    labels = np.array([3, 1, 4, 1], dtype=np.float32)
    net.set_input_arrays(data, labels)
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, data[:2])
    np.testing.assert_array_equal(net.blobs["label"].data.ravel(), labels[:2])
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, data[2:])
    with pytest.raises(ShapeError, match="4-D"):
        net.set_input_arrays(data[0], labels)
    with pytest.raises(NetBuildError, match="needs a MemoryData layer"):
        Net(MLP, TEST).set_input_arrays(data, labels)


def test_module_functions():
    assert minicaffe.TRAIN == 0 and minicaffe.TEST == 1
    types_ = minicaffe.layer_type_list()
    assert "Python" in types_ and types_ == sorted(types_)
    minicaffe.set_mode_cpu()
    minicaffe.set_device(0)
    minicaffe.set_random_seed(5)
    a = Net(MLP, TEST).params["ip"][0].data.copy()
    minicaffe.set_random_seed(5)
    np.testing.assert_array_equal(Net(MLP, TEST).params["ip"][0].data, a)


# ---------------------------------------------------------------- as Caffe's Net(file, ...)

def test_a_model_file_gets_level_zero_whatever_its_state_says(tmp_path):
    path = tmp_path / "levels.prototxt"
    path.write_text("state { level: 2 }\n" + LEVELS)
    assert _non_data(Net(str(path), TEST)) == ["NoLevel", "Level0Only", "Level>=0"]
    assert "Level1Only" in _non_data(Net(str(path), TEST, level=1))
    # a NetParameter (what a solver builds) keeps its state's level unless one is given
    from minicaffe.prototxt import read_net_param

    param = read_net_param(str(path), upgrade=True)
    assert "Level>=1" in _non_data(Net(param, phase=TEST))
    assert "Level>=1" not in _non_data(Net(param, phase=TEST, level=0))


DUPLICATES = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "fc" type: "InnerProduct" bottom: "x" top: "a" inner_product_param { num_output: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "a" top: "b" inner_product_param { num_output: 2 } }
"""


def test_repeated_layer_names_load_as_caffe_does(tmp_path):
    from minicaffe.proto import caffe_pb2
    from minicaffe.prototxt import write_caffemodel

    param = caffe_pb2.NetParameter()
    for _ in range(2):  # the file repeats the name too
        param.layer.add(name="fc", type="InnerProduct")
    path = tmp_path / "dup.caffemodel"
    write_caffemodel(path, param, [[np.full((2, 2), v, np.float32), np.full(2, v, np.float32)]
                                   for v in (1.0, 2.0)])
    net = Net(DUPLICATES, TEST)
    report = net.copy_from(str(path))
    # every entry goes to the first layer of its name, the later entry last
    assert np.all(net.layers[1].blobs[0].data == 2.0)
    assert np.all(net.layers[2].blobs[0].data == 0.0)
    assert report.copied == ["fc"] and report.not_in_file == ["fc"]
    other = Net(DUPLICATES, TEST)
    other.layers[1].blobs[0].data[...] = 5.0
    other.layers[2].blobs[0].data[...] = 7.0
    net.share_with(other)  # other's layers in order, each onto the first "fc" here
    assert np.all(net.layers[1].blobs[0].data == 7.0)
    assert np.all(net.layers[2].blobs[0].data == 0.0)


def test_a_rejected_input_leaves_the_net_as_it_was():
    net = Net(MLP, TEST)
    with pytest.raises(ShapeError):
        net.forward(x=np.zeros((2, 5)))  # 5 features where the layer was set up for 3
    assert net.blobs["x"].shape == (4, 3) and net.blobs["p"].shape == (4, 2)
    net.blobs["x"].data[...] = 1.0  # pycaffe's usual pattern still works
    assert net.forward()["p"].shape == (4, 2)
    with pytest.raises(ShapeError, match="input 'x': expected a numeric array"):
        net.forward(x="abc")
    with pytest.raises(NetBuildError, match="not net inputs"):
        net.forward_all(z=np.zeros((4, 3)))
    with pytest.raises(ShapeError, match="0 items"):
        net.forward_all(x=np.zeros((0, 3)))


def test_weights_path_with_a_comma_and_pycaffe_keywords(tmp_path):
    from minicaffe.errors import PhaseError

    source = Net(MLP, TEST)
    path = tmp_path / "lr0.01,bs64.caffemodel"
    source.save(str(path))
    for net in (Net(MLP, str(path), TEST), Net(network_file=MLP, phase=TEST, weights=str(path))):
        np.testing.assert_array_equal(net.params["ip"][0].data, source.params["ip"][0].data)
    with pytest.raises(PhaseError, match="TRAIN .0. or TEST .1.; received 7"):
        Net(MLP, 7)
    with pytest.raises(ValueError):  # PhaseError is also the ValueError it used to be
        Net(MLP, phase="TRAINING")


def test_weight_files_by_content_and_damaged_hdf5(tmp_path):
    net = Net(MLP, TEST)
    binary = tmp_path / "binary.h5"  # a binary .caffemodel under an HDF5 name (as Caffe: content)
    net.save(str(binary))
    assert Net(MLP, str(binary), TEST).last_copy_report.copied == ["ip"]
    h5 = tmp_path / "w.caffemodel.h5"
    net.save_hdf5(str(h5))
    raw = h5.read_bytes()
    rng = np.random.default_rng(0)
    outcomes = set()
    for trial in range(40):  # flipped bytes: the weights load or a WeightsError names the file
        bad = bytearray(raw)
        for pos in rng.integers(0, len(raw), size=1 + trial % 6):
            bad[pos] ^= 0xFF
        path = tmp_path / f"bad{trial}.caffemodel.h5"
        path.write_bytes(bytes(bad))
        try:
            Net(MLP, TEST).copy_from(str(path))
            outcomes.add("loaded")
        except WeightsError as exc:
            assert str(path) in str(exc)
            outcomes.add("error")
    assert "error" in outcomes
    import h5py

    training = tmp_path / "train.h5"  # an HDF5Data file given as weights
    with h5py.File(training, "w") as f:
        f["data"] = np.zeros((2, 3), np.float32)
    with pytest.raises(WeightsError, match="no /data group"):
        net.copy_from(str(training))
