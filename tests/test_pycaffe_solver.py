"""The pycaffe Solver surface: the behaviours of pycaffe's test_solver.py (through the caffe
alias, as a pycaffe script would call it)."""

from __future__ import annotations

import numpy as np
import pytest

import minicaffe

NUM_OUTPUT = 13

NET = f"""name: "testnet" force_backward: true
layer {{ name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param {{ num: 5 channels: 2 height: 3 width: 4
                      num: 5 channels: 1 height: 1 width: 1
                      data_filler {{ type: "gaussian" std: 1 }}
                      data_filler {{ type: "constant" }} }} }}
layer {{ name: "conv" type: "InnerProduct" bottom: "data" top: "conv"
  inner_product_param {{ num_output: 11 weight_filler {{ type: "gaussian" std: 1 }}
                         bias_filler {{ type: "constant" value: 2 }} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param {{ num_output: {NUM_OUTPUT} weight_filler {{ type: "gaussian" std: 2.5 }}
                         bias_filler {{ type: "constant" value: -3 }} }} }}
layer {{ name: "loss" type: "Softmax" bottom: "ip" top: "loss" loss_weight: 1 }}
layer {{ name: "silence" type: "Silence" bottom: "label" }}
"""


@pytest.fixture
def solver(tmp_path, monkeypatch):
    caffe = minicaffe.install_caffe_alias()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(
        "net: 'net.prototxt'\n test_iter: 10 test_interval: 10 base_lr: 0.01 momentum: 0.9\n"
        " weight_decay: 0.0005 lr_policy: 'inv' gamma: 0.0001 power: 0.75\n"
        " display: 100 max_iter: 100 snapshot_after_train: false\n snapshot_prefix: 'model'\n")
    s = caffe.SGDSolver("solver.prototxt")
    assert type(caffe.get_solver("solver.prototxt")).__name__ == "SGDSolver"
    caffe.set_mode_cpu()
    rng = np.random.default_rng(0)
    for net in [s.net] + list(s.test_nets):
        net.blobs["label"].data[...] = rng.integers(NUM_OUTPUT, size=net.blobs["label"].shape)
    return s


def test_solve_runs_max_iter(solver):
    assert solver.iter == 0
    solver.solve()
    assert solver.iter == 100


def test_apply_update_uses_the_base_lr(solver):
    net = solver.net
    data = net.layers[1].blobs[0].data
    data[...] = 0
    net.layers[1].blobs[0].diff[...] = 1
    solver.apply_update()
    # w <- w - lr * (diff + weight_decay * w) with w = 0: exactly -lr
    np.testing.assert_allclose(net.layers[1].blobs[0].data, -0.01, rtol=1e-6)


def test_nets_survive_the_solver(solver):
    nets = [solver.net] + list(solver.test_nets)
    assert len(nets) == 2
    del solver
    total = 0.0
    for net in nets:
        for blobs in net.params.values():
            total += sum(float(p.data.sum() + p.diff.sum()) for p in blobs)
        total += sum(float(b.data.sum() + b.diff.sum()) for b in net.blobs.values())
    assert np.isfinite(total)


def test_snapshot_writes_model_and_state(solver, tmp_path):
    solver.snapshot()
    for name in ("model_iter_0.caffemodel", "model_iter_0.solverstate"):
        assert (tmp_path / name).is_file()


def test_step_callbacks_and_shared_test_net(solver):
    calls = []
    solver.add_callback(lambda: calls.append("start"), lambda: calls.append("ready"))
    solver.step(2)
    assert solver.iter == 2 and calls == ["start", "ready"] * 2
    # the test net shares the train net's weights, as in Caffe
    np.testing.assert_array_equal(solver.test_nets[0].params["ip"][0].data,
                                  solver.net.params["ip"][0].data)


def test_lr_is_the_rate_of_the_next_update(solver):
    p = solver.param  # inv: base_lr * (1 + gamma * iter) ^ -power
    assert solver.lr == pytest.approx(0.01, rel=1e-6)
    solver.step(5)
    assert solver.lr == pytest.approx(0.01 * (1 + 0.0001 * 5) ** -0.75, rel=1e-6)
    assert solver.lr == solver.lr and p.base_lr == pytest.approx(0.01)  # reading changes nothing


def test_solver_errors_name_the_solver_file(tmp_path, monkeypatch):
    from minicaffe.errors import PrototxtError, SolverError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "missing.prototxt").write_text(
        "net: 'absent.prototxt' base_lr: 0.1 lr_policy: 'fixed'")
    with pytest.raises(PrototxtError, match="absent.prototxt: no such net prototxt .the net "
                                            "named by solver missing.prototxt"):
        minicaffe.get_solver("missing.prototxt")
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "typo.prototxt").write_text("net: 'net.prototxt' type: 'Foo'")
    with pytest.raises(SolverError, match="^typo.prototxt: unknown solver type 'Foo'"):
        minicaffe.get_solver("typo.prototxt")
