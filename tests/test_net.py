"""Net construction and execution: Caffe's rules end to end on small nets."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import minicaffe
from minicaffe import TEST, TRAIN, Net, backend
from minicaffe.errors import NetBuildError, UnknownLayerError, WeightsError
from tests.helpers import FakeCupy

MLP = """
name: "mlp"
layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 5 dim: 4 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
        inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "y"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "constant" value: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "y" top: "p" loss_weight: 1 }
"""


def mlp(**kw):
    return Net(MLP, TRAIN, dtype=np.float64, **kw)


def test_pycaffe_style_surface():
    net = mlp()
    assert net.inputs == ["x"] and net.outputs == ["p"]
    assert list(net.blobs) == ["x", "h", "y", "p"]
    assert list(net.params) == ["ip1", "ip2"]
    assert net.params["ip1"][0].data.shape == (6, 4)
    assert net.blobs["h"].shape == (5, 6)
    assert net.top_names["relu"] == ["h"] and net.bottom_names["ip2"] == ["h"]
    assert net.blob_loss_weights["p"] == 1.0 and net.blob_loss_weights["y"] == 0.0
    out = net.forward(x=np.ones((5, 4)))
    np.testing.assert_allclose(out["p"].sum(axis=1), 1.0)


def _objective(net, x, r):
    net.blobs["x"].data[...] = x
    net.forward()
    return float(np.sum(net.blobs["p"].data * r))


def test_mlp_gradients_match_finite_differences():
    """An MLP from prototxt text: every param and the input gradient, by central differences."""
    net = Net(
        MLP.replace('name: "mlp"', 'name: "mlp" force_backward: true'), TRAIN, dtype=np.float64
    )
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4))
    r = rng.standard_normal((5, 3))
    net.blobs["x"].data[...] = x
    net.forward()
    net.clear_param_diffs()
    net.blobs["p"].diff[...] = r
    grads = net.backward()
    analytic = {"x": grads["x"].copy()}
    for name in ("ip1", "ip2"):
        for i, b in enumerate(net.params[name]):
            analytic[(name, i)] = b.diff.copy()
    eps = 1e-6
    targets = [("x", net.blobs["x"])] + [
        ((n, i), b) for n in ("ip1", "ip2") for i, b in enumerate(net.params[n])
    ]
    for key, blob in targets:
        base = blob.data.copy()
        num = np.zeros_like(base)
        for k in range(base.size):
            for sign in (1, -1):
                pert = base.copy()
                pert.reshape(-1)[k] += sign * eps
                blob.data[...] = pert
                xx = pert if key == "x" else x
                num.reshape(-1)[k] += sign * _objective(net, xx, r) / (2 * eps)
            blob.data[...] = base
        np.testing.assert_allclose(analytic[key], num, rtol=1e-5, atol=1e-8, err_msg=str(key))


def test_loss_is_weighted_sum_and_param_diffs_accumulate():
    net = mlp()
    net.blobs["x"].data[...] = 1.0
    loss = net.forward_prefilled()
    assert float(loss) == pytest.approx(float(net.blobs["p"].data.sum()))  # rows sum to 1 -> 5
    assert float(loss) == pytest.approx(5.0)
    net.clear_param_diffs()
    net.backward()
    first = net.params["ip1"][0].diff.copy()
    net.backward()
    np.testing.assert_allclose(net.params["ip1"][0].diff, 2 * first)
    net.clear_param_diffs()
    assert not net.params["ip1"][0].diff.any()


def test_no_backward_into_input_without_force_backward():
    net = mlp()
    assert net.bottom_need_backward[1] == [False]  # ip1 does not propagate into data
    assert net.layer_need_backward[1] is True  # but computes its param gradients
    forced = Net(MLP.replace('name: "mlp"', 'name: "mlp" force_backward: true'), TRAIN)
    assert forced.bottom_need_backward[1] == [True]


def test_layers_not_leading_to_a_loss_skip_backward():
    net = Net(MLP.replace("loss_weight: 1", ""), TRAIN)
    assert not any(net.layer_need_backward)


def test_lr_mult_zero_and_propagate_down():
    text = MLP.replace('top: "h"\n', 'top: "h" param { lr_mult: 0 } param { lr_mult: 0 }\n', 1)
    net = Net(text, TRAIN)
    assert net.layers[1].param_propagate_down == [False, False]
    assert net.layer_need_backward[1] is False
    text2 = MLP.replace('bottom: "h" top: "y"', 'bottom: "h" top: "y" propagate_down: false')
    net2 = Net(text2, TRAIN)
    assert net2.bottom_need_backward[3] == [False]
    assert net2.layer_need_backward[1] is False  # nothing flows back into ip1 any more
    with pytest.raises(NetBuildError, match="propagate_down"):
        Net(
            MLP.replace(
                'bottom: "h" top: "y"',
                'bottom: "h" top: "y" propagate_down: false propagate_down: true',
            )
        )


def test_shared_parameters_share_data_and_diff():
    text = """
    layer { name: "d" type: "Input" top: "a" top: "b"
            input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "f1" type: "InnerProduct" bottom: "a" top: "fa"
            param { name: "w" } param { name: "bias" }
            inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
    layer { name: "f2" type: "InnerProduct" bottom: "b" top: "fb"
            param { name: "w" lr_mult: 2 } param { name: "bias" }
            inner_product_param { num_output: 2 } }
    layer { name: "s" type: "Silence" bottom: "fa" bottom: "fb" }
    """
    net = Net(text, TRAIN)
    w1, w2 = net.params["f1"][0], net.params["f2"][0]
    assert len(net.learnable_params) == 2
    assert net.param_owners == [-1, -1, 0, 1]
    assert net.params_lr[0] == 2.0  # adopted from the sharer, owner had none explicit
    np.testing.assert_array_equal(w1.data, w2.data)  # the sharer's filler does not win
    w1.data[0, 0] = 42.0
    assert w2.data[0, 0] == 42.0
    w2.diff[...] = 1.0
    assert w1.diff.sum() == 6.0
    bad = text.replace(
        "inner_product_param { num_output: 2 } }", "inner_product_param { num_output: 3 } }"
    )
    with pytest.raises(NetBuildError, match="'f2'.*shared parameter 'w'.*shape"):
        Net(bad, TRAIN)


def test_phase_level_stage_constructor_forms(tmp_path):
    text = (
        MLP
        + """
    layer { name: "t" type: "Softmax" bottom: "y" top: "tt" include { phase: TEST stage: "s" } }
    """
    )
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    assert "t" not in Net(str(path), TEST).layer_dict
    assert "t" in Net(str(path), TEST, stages=["s"]).layer_dict
    assert Net(str(path), phase="TRAIN").phase == TRAIN
    net = Net(str(path), TRAIN)
    net.save(tmp_path / "w.caffemodel")
    net2 = Net(str(path), str(tmp_path / "w.caffemodel"), TEST)  # pycaffe's (model, weights, phase)
    np.testing.assert_array_equal(net2.params["ip1"][0].data, net.params["ip1"][0].data)
    assert net2.phase == TEST


def test_unknown_layer_type_suggests_nearest():
    with pytest.raises(UnknownLayerError, match="'Relu'.*did you mean 'ReLU'.*Known types:"):
        Net('layer { name: "x" type: "Relu" }')


def test_copy_from_reports_and_shape_mismatch(tmp_path):
    net = mlp()
    path = tmp_path / "m.caffemodel"
    net.save(path)
    other = Net(MLP.replace('name: "ip2"', 'name: "fresh"'), TRAIN, dtype=np.float64)
    report = other.copy_from(str(path))
    assert report.copied == ["ip1"]
    assert report.not_in_model == ["ip2"]
    assert report.not_in_file == ["fresh"]
    wide = Net(MLP.replace("num_output: 6", "num_output: 7"), TRAIN)
    with pytest.raises(WeightsError, match="layer 'ip1'.*shape mismatch.*\\(6, 4\\).*\\(7, 4\\)"):
        wide.copy_from(str(path))
    nobias = Net(
        MLP.replace(
            "inner_product_param { num_output: 6",
            "inner_product_param { bias_term: false num_output: 6",
        ),
        TRAIN,
    )
    with pytest.raises(WeightsError, match="'ip1'.*2 parameter blobs in the file but 1"):
        nobias.copy_from(str(path))


def test_legacy_4d_weights_are_accepted():
    net = mlp()
    w = np.arange(24, dtype=np.float32).reshape(1, 1, 6, 4)
    from minicaffe.prototxt import BlobArrays

    net.copy_from_arrays(
        [
            (
                "ip1",
                [
                    BlobArrays(w, legacy=(1, 1, 6, 4)),
                    BlobArrays(np.zeros((1, 1, 1, 6), np.float32), legacy=(1, 1, 1, 6)),
                ],
            )
        ]
    )
    np.testing.assert_array_equal(net.params["ip1"][0].data, w.reshape(6, 4))


def test_forward_start_end_and_backward_kwargs():
    net = Net(MLP.replace('name: "mlp"', 'name: "mlp" force_backward: true'), TRAIN)
    net.forward(x=np.ones((5, 4)))
    out = net.forward(start="ip2", end="ip2")
    assert set(out) == {"y"}
    grads = net.backward(p=np.ones((5, 3)))
    assert grads["x"].shape == (5, 4)
    with pytest.raises(NetBuildError, match="not net inputs"):
        net.forward(nope=np.ones(3))


def test_input_of_new_batch_size_reshapes_the_net():
    net = mlp()
    out = net.forward(x=np.ones((2, 4)))
    assert out["p"].shape == (2, 3)
    assert net.blobs["h"].shape == (2, 6)


# ---------------------------------------------------------------- engines and devices


@pytest.fixture
def fake_gpu(monkeypatch):
    fake = FakeCupy()
    monkeypatch.setattr(backend, "get_cupy", lambda: fake)
    monkeypatch.setattr("minicaffe.registry.gpu_available", lambda: True)
    return fake


def _engine_net(engines):
    a, b = engines
    return f"""
    layer {{ name: "d" type: "Input" top: "x" input_param {{ shape {{ dim: 3 dim: 4 }} }} }}
    layer {{ name: "r" type: "ReLU" bottom: "x" top: "x" relu_param {{ engine: {a} }} }}
    layer {{ name: "s" type: "Softmax" bottom: "x" top: "p" loss_weight: 1
            softmax_param {{ engine: {b} }} }}
    """


def test_engine_resolution_rules(fake_gpu):
    from minicaffe.backend import CPU_DEVICE, gpu_device

    cpu_net = Net(_engine_net(("DEFAULT", "CUDNN")), TRAIN)
    assert cpu_net.layer_device("r") == CPU_DEVICE
    assert cpu_net.layer_device("s").is_gpu  # CUDNN -> the CuPy engine
    gpu_net = Net(_engine_net(("CAFFE", "DEFAULT")), TRAIN, device=gpu_device(0))
    assert gpu_net.layer_device("d").is_gpu
    assert gpu_net.layer_device("r") == CPU_DEVICE  # CAFFE -> the NumPy engine
    assert gpu_net.layer_device("s").is_gpu
    assert gpu_net.device_boundaries  # reported once at build
    x = np.random.default_rng(0).standard_normal((3, 4))
    ref = Net(_engine_net(("DEFAULT", "DEFAULT")), TRAIN, dtype=np.float32)
    for net in (cpu_net, gpu_net):
        out = net.forward(x=x)
        np.testing.assert_allclose(np.asarray(out["p"]), ref.forward(x=x)["p"], rtol=1e-6)
    # the in-place ReLU on the other device wrote its result back into the source blob
    np.testing.assert_allclose(np.asarray(gpu_net.blobs["x"].data), np.maximum(x, 0), rtol=1e-6)


def test_cudnn_without_gpu_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr("minicaffe.registry.gpu_available", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = Net(_engine_net(("CUDNN", "CUDNN")), TRAIN)
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "layers r, s" in msgs[0]
    assert not net.layer_device("r").is_gpu


def test_layer_type_list_has_core_types():
    types_ = minicaffe.layer_type_list()
    for t in ("Input", "DummyData", "Split", "Silence", "InnerProduct", "ReLU", "Softmax"):
        assert t in types_



def test_memory_errors_inside_layers_name_the_layer(monkeypatch, tmp_path):
    import minicaffe
    from minicaffe.errors import OutOfMemoryError
    from minicaffe.layers.relu import ReLULayer

    path = tmp_path / "net.prototxt"
    path.write_text("force_backward: true layer { name: 'in' type: 'Input' top: 'x' input_param "
                    "{ shape { dim: 2 dim: 3 } } } layer { name: 'act' type: 'ReLU' bottom: 'x' "
                    "top: 'y' }")
    net = minicaffe.Net(str(path), minicaffe.TRAIN)
    net.forward()

    def refuse(self, *args):
        raise MemoryError("Unable to allocate 9.00 GiB")

    monkeypatch.setattr(ReLULayer, "backward", refuse)
    with pytest.raises(OutOfMemoryError, match=r"^layer 'act' \(ReLU\): out of memory: Unable"):
        net.backward()
    monkeypatch.setattr(ReLULayer, "forward", refuse)
    with pytest.raises(MemoryError, match=r"^layer 'act' \(ReLU\): out of memory: Unable"):
        net.forward()


AUTO_LOSS = """
name: "auto"
layer { name: "data" type: "Input" top: "x" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" }
layer { name: "loss2" type: "EuclideanLoss" bottom: "ip" bottom: "ip" }
"""


def test_unlisted_loss_tops_are_caffes_automatic_blob_and_output():
    """A loss layer given no top gets one named "(automatic)" with loss weight 1; as in Caffe it
    is listed among the blobs (the last such top answers to the name), the layer's top names
    and the outputs, so forward() returns it and the solver displays it."""
    net = Net(AUTO_LOSS, TRAIN, dtype=np.float64)
    names = [b for b in net.blobs if "_split_" not in b]  # (ip feeds three bottoms)
    assert names == ["x", "label", "ip", "(automatic)"]
    assert net.outputs == ["(automatic)"]
    assert net.top_names["loss"] == ["(automatic)"] == net.top_names["loss2"]
    assert net.blob_loss_weights["(automatic)"] == 1.0
    net.blobs["x"].data[...] = np.arange(12).reshape(4, 3) / 10
    net.blobs["label"].data[...] = [0, 1, 2, 0]
    out = net.forward()
    assert list(out) == ["(automatic)"]
    assert float(out["(automatic)"]) == 0.0  # the last such top: Euclidean loss of ip vs ip
    loss_top = net._top_vecs[net._layer_names.index("loss")][0]
    assert loss_top is not net.blobs["(automatic)"] and float(loss_top.data) > 0
    net.backward()
    assert np.abs(net.params["ip"][0].diff).sum() > 0  # the softmax loss still drives training
