"""Python layers (type "Python"): the behaviours of pycaffe's test_python_layer.py and more.

The layer modules live in tests/data/pylayers and `import caffe`, as pycaffe users' do.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import minicaffe
from minicaffe import TEST, TRAIN, Net
from minicaffe.errors import LayerError, MinicaffeError, NetBuildError
from minicaffe.layers.python import PythonLayerError

PYLAYERS = Path(__file__).parent / "data" / "pylayers"


@pytest.fixture(autouse=True)
def _pylayers_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(PYLAYERS))


def _py(name, cls, bottom, top, extra=""):
    bottoms = "".join(f' bottom: "{b}"' for b in bottom)
    tops = "".join(f' top: "{t}"' for t in top)
    return (f'layer {{ name: "{name}" type: "Python"{bottoms}{tops} {extra}\n'
            f'  python_param {{ module: "simple_layers" layer: "{cls}" }} }}\n')


def _input(shape, name="data"):
    dims = " ".join(f"dim: {d}" for d in shape)
    return (f'layer {{ name: "input" type: "Input" top: "{name}" '
            f"input_param {{ shape {{ {dims} }} }} }}\n")


TEN3 = ("force_backward: true\n" + _input((10, 9, 8)) + _py("one", "TimesTen", ["data"], ["one"])
        + _py("two", "TimesTen", ["one"], ["two"]) + _py("three", "TimesTen", ["two"], ["three"]))


def test_forward_chains_three_python_layers():
    net = Net(TEN3, TRAIN)
    x = np.random.default_rng(0).standard_normal((10, 9, 8)).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    for name, power in (("one", 1), ("two", 2), ("three", 3)):
        np.testing.assert_allclose(net.blobs[name].data, 10**power * x, rtol=1e-6)


def test_backward_chains_three_python_layers():
    net = Net(TEN3, TRAIN)
    net.forward()
    d = np.random.default_rng(1).standard_normal((10, 9, 8)).astype(np.float32)
    net.blobs["three"].diff[...] = d
    net.backward()
    np.testing.assert_allclose(net.blobs["data"].diff, 1000 * d, rtol=1e-6)


def test_reshape_propagates_through_python_layers():
    net = Net(TEN3, TRAIN)
    net.blobs["data"].reshape(2, 3, 4, 5)
    net.forward()
    for name in ("data", "one", "two", "three"):
        assert net.blobs[name].shape == (2, 3, 4, 5)


def test_exception_in_setup_names_the_layer():
    text = _input((2, 3)) + _py("bad", "RaisesInSetup", ["data"], ["out"])
    with pytest.raises(NetBuildError, match="'bad'.*refuses to set up"):
        Net(text, TRAIN)


def test_param_str_and_phase_reach_the_layer():
    text = (_input((4, 3)) + 'layer { name: "p" type: "Python" bottom: "data" top: "v"\n'
            ' python_param { module: "simple_layers" layer: "ParamStrValue" param_str: "2.5" } }\n'
            + _py("ph", "PhaseLayer", [], ["phase"]))
    for phase in (TRAIN, TEST):
        net = Net(text, phase)
        out = net.forward()
        assert float(out["phase"]) == phase
        np.testing.assert_array_equal(out["v"], np.full((4, 1), 2.5, np.float32))
        assert net.layers[1].param_str == "2.5"


def test_layer_phase_field_overrides_the_net_phase():
    text = _input((1,)) + _py("ph", "PhaseLayer", [], ["phase"], extra="phase: TEST")
    assert float(Net(text, TRAIN).forward()["phase"]) == TEST


def test_blobs_add_blob_learns_saves_loads_and_shares(tmp_path):
    """pycaffe's test_parameter: a learnable blob made with self.blobs.add_blob."""
    text = ("force_backward: true\n" + _input((3, 2)) +
            'layer { name: "layer" type: "Python" bottom: "data" top: "top" loss_weight: 1\n'
            ' python_param { module: "simple_layers" layer: "ScaleByParam" param_str: "2" } }\n')
    net = Net(text, TRAIN)
    layer = net.layers[list(net._layer_names).index("layer")]
    assert len(layer.blobs) == 1 and layer.blobs[0].shape == (1,)
    assert list(net.params) == ["layer"] and net.learnable_params == [layer.blobs[0]]
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    net.blobs["data"].data[...] = x
    loss = net.forward()["top"]
    np.testing.assert_allclose(loss, 2 * x)
    net.clear_param_diffs()
    net.backward()
    assert layer.blobs[0].diff[0] == pytest.approx(x.sum())  # d(sum w x)/dw, loss weight 1
    np.testing.assert_allclose(net.blobs["data"].diff, 2.0)
    layer.blobs[0].data[0] = 7
    path = tmp_path / "p.caffemodel"
    net.save(str(path))
    layer.blobs[0].data[0] = -1
    net.copy_from(str(path))
    assert layer.blobs[0].data[0] == 7
    net2 = Net(text, TRAIN)
    net2.share_with(net)
    assert net2.params["layer"][0].data[0] == 7
    layer.blobs[0].data[0] = 3
    assert net2.params["layer"][0].data[0] == 3  # shared memory, not a copy


def test_blob_api_seen_by_python_layers():
    from simple_layers import ShapeReport

    text = _input((2, 3, 4, 5)) + _py("s", "ShapeReport", ["data"], ["out"])
    Net(text, TRAIN)
    assert ShapeReport.seen == dict(num=2, channels=3, height=4, width=5, count=120,
                                    shape=(2, 3, 4, 5), is_numpy=True)


def test_python_loss_layer_trains_linreg_from_the_corpus():
    """Caffe's examples/pycaffe/linreg.prototxt (a Python Euclidean loss) with SGD: the loss
    goes down. Its module `pyloss` is found on sys.path."""
    corpus = Path(__file__).parent / "data/corpus/BVLC__caffe/examples/pycaffe/linreg.prototxt"
    minicaffe.set_random_seed(3)
    solver = minicaffe.SGDSolver(minicaffe.read_solver_param(
        f'net: "{corpus}" base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" max_iter: 100 '
        'display: 0 snapshot: 0 snapshot_after_train: false'))
    net = solver.net
    assert type(net.layer_dict["loss"]).__name__ == "EuclideanLossLayer"
    assert net.blob_loss_weights["loss"] == 1.0
    # DummyData refills x and y each pass; train on one fixed pair so progress is measurable
    x = net.blobs["x"].data.copy()
    y = net.blobs["y"].data.copy()
    for name in ("x", "y"):
        net.layer_dict[name].forward = lambda bottom, top: None
    net.blobs["x"].data[...] = x
    net.blobs["y"].data[...] = y
    first = net.forward()["loss"].item()
    solver.step(60)
    last = net.forward()["loss"].item()
    assert last < 0.25 * first


def test_python_layer_without_backward_is_fine_until_a_gradient_is_needed():
    fwd_only = _input((2, 2)) + _py("nb", "NoBackward", ["data"], ["out"])
    net = Net(fwd_only, TRAIN)
    net.forward()
    net.backward()  # no loss: nothing needs a gradient
    forced = Net("force_backward: true\n" + fwd_only, TRAIN)
    forced.forward()
    with pytest.raises(LayerError, match="'nb'.*defines no backward"):
        forced.backward()


# ---------------------------------------------------------------- errors people can act on


def test_missing_module_names_layer_module_and_path():
    text = ('layer { name: "mystery" type: "Python" top: "t" python_param { '
            'module: "no_such_module_xyz" layer: "L" } }')
    with pytest.raises(PythonLayerError) as info:
        Net(text, TRAIN)
    msg = str(info.value)
    assert "layer 'mystery' (Python)" in msg and "'no_such_module_xyz' was not found" in msg
    assert str(PYLAYERS) in msg  # the Python path searched
    assert isinstance(info.value, ImportError) and isinstance(info.value, MinicaffeError)


def test_module_failing_to_import_says_what_it_needs():
    text = ('layer { name: "b" type: "Python" top: "t" python_param { '
            'module: "broken_import" layer: "L" } }')
    with pytest.raises(PythonLayerError, match="'broken_import' failed to import: it needs "
                                                "'a_module_that_does_not_exist'"):
        Net(text, TRAIN)


@pytest.mark.parametrize("cls, pattern", [
    ("Missing", "has no class 'Missing'; its Layer classes: .*'TimesTen'"),
    ("NoForward", "does not define forward\\(\\)"),
    ("NotALayer", "must be a class deriving from caffe.Layer"),
])
def test_bad_classes_are_reported(cls, pattern):
    text = _input((2,)) + _py("x", cls, ["data"], ["y"])
    with pytest.raises(PythonLayerError, match="layer 'x' \\(Python\\): .*" + pattern):
        Net(text, TRAIN)


def test_module_and_layer_are_required():
    with pytest.raises(PythonLayerError, match="module and python_param.layer must both"):
        Net('layer { name: "x" type: "Python" top: "t" python_param { module: "m" } }', TRAIN)


def test_module_beside_the_prototxt_is_found(tmp_path, monkeypatch):
    """pycaffe users keep the layer module next to the prototxt; it is found from there."""
    (tmp_path / "beside_mod_q7.py").write_text(
        "import caffe\n\nclass Doubler(caffe.Layer):\n"
        "    def reshape(self, bottom, top):\n        top[0].reshape(*bottom[0].shape)\n"
        "    def forward(self, bottom, top):\n        top[0].data[...] = 2 * bottom[0].data\n")
    proto = tmp_path / "net.prototxt"
    proto.write_text(_input((2,)) + 'layer { name: "d" type: "Python" bottom: "data" top: "y" '
                     'python_param { module: "beside_mod_q7" layer: "Doubler" } }')
    monkeypatch.chdir("/")
    net = Net(str(proto), TEST)
    net.blobs["data"].data[...] = [1, 2]
    np.testing.assert_array_equal(net.forward()["y"], [2, 4])
    assert str(tmp_path) not in sys.path  # the folder was only searched, not left behind
    sys.modules.pop("beside_mod_q7", None)


def test_user_init_taking_the_layer_param_is_supported(tmp_path, monkeypatch):
    (tmp_path / "init_mod_q7.py").write_text(
        "import caffe\n\nclass WithInit(caffe.Layer):\n"
        "    def __init__(self, param):\n        super().__init__(param)\n"
        "        self.seen_name = param.name\n"
        "    def reshape(self, bottom, top):\n        top[0].reshape(1)\n"
        "    def forward(self, bottom, top):\n        top[0].data[...] = len(self.seen_name)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    net = Net('layer { name: "abcd" type: "Python" top: "y" python_param { module: "init_mod_q7"'
              ' layer: "WithInit" } }', TEST)
    assert net.forward()["y"].item() == 4
    assert net.layers[0].phase == TEST


def test_python_layers_are_host_only():
    from minicaffe.registry import get_layer_class

    assert get_layer_class("Python").host_only is True
