"""The training loop: test nets, display and smoothing, snapshots naming, seeds, actions,
callbacks, the non-finite guard and the solver's input checks."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from minicaffe.errors import (
    NetBuildError,
    NonFiniteError,
    PrototxtError,
    SolverError,
    WeightsError,
)
from minicaffe.net import Net
from minicaffe.proto import caffe_pb2
from minicaffe.prototxt import read_caffemodel
from minicaffe.solver import get_solver
from tests.test_solver_helpers import SOLVER, input_net, write_regression


@pytest.fixture
def reg(tmp_path, monkeypatch):
    """Write the regression problem with ``extra`` solver lines; returns a solver factory."""
    monkeypatch.chdir(tmp_path)

    def make(extra: str = "", **kwargs):
        write_regression(tmp_path, solver_extra=extra, **kwargs)
        return get_solver("solver.prototxt")

    return make


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_test_nets_run_at_interval_and_initialization(reg, caplog):
    s = reg("test_iter: 3\ntest_interval: 5\n")
    s.param.max_iter = 10
    with caplog.at_level("INFO", logger="minicaffe"):
        s.solve()
    tested = [m for m in messages(caplog) if "Testing net" in m]
    assert tested == [f"Iteration {i}, Testing net (#0)" for i in (0, 5, 10)]
    outputs = [m for m in messages(caplog) if "Test net output #0: loss = " in m]
    assert len(outputs) == 3 and re.search(r"\(\* 1 = [-\d.e]+ loss\)$", outputs[0])


def test_no_test_at_zero_without_test_initialization(reg, caplog):
    s = reg("test_iter: 1\ntest_interval: 5\ntest_initialization: false\n")
    with caplog.at_level("INFO", logger="minicaffe"):
        s.step(11)
    tested = [m for m in messages(caplog) if "Testing net" in m]
    assert tested == ["Iteration 5, Testing net (#0)", "Iteration 10, Testing net (#0)"]


def test_test_means_and_shared_weights(reg):
    s = reg("test_iter: 3\ntest_interval: 100\ntest_initialization: false\n")
    s.step(4)
    ref = Net("net.prototxt", phase="TEST")
    ref.copy_from_arrays(
        [(layer.name, [b.data for b in layer.blobs]) for layer in s.net.layers if layer.blobs]
    )
    want = np.mean([float(ref.forward()["loss"]) for _ in range(3)])
    results = s.test(0)
    assert results[0][0] == "loss"
    assert results[0][1] == pytest.approx(want, rel=1e-5)
    tw, nw = s.test_nets[0].params["ip"][0].data, s.net.params["ip"][0].data
    assert np.shares_memory(tw, nw)  # the test net reads the train net's weights


def test_several_test_nets(reg, caplog):
    s = reg(
        "test_iter: 2\ntest_iter: 1\ntest_interval: 4\ntest_state { stage: 'a' }\n"
        "test_state { stage: 'b' level: 2 }\n"
    )
    assert len(s.test_nets) == 2
    assert list(s.test_nets[1].net_param.state.stage) == ["b"]
    assert s.test_nets[1].net_param.state.level == 2
    assert s.test_nets[1].phase == caffe_pb2.TEST
    with caplog.at_level("INFO", logger="minicaffe"):
        s.step(1)
    assert [m for m in messages(caplog) if "Testing net" in m] == [
        "Iteration 0, Testing net (#0)",
        "Iteration 0, Testing net (#1)",
    ]


def test_explicit_and_generic_test_net_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_regression(tmp_path)
    p = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy="fixed", test_interval=10)
    p.train_net = "net.prototxt"
    p.test_net.append("net.prototxt")
    p.test_net_param.add().CopyFrom(input_net())
    p.test_iter.extend([1, 1])
    s = get_solver(p)
    assert [n.name for n in s.test_nets] == ["toy", "reg"]  # test_net_param first, then files


def test_average_loss_smoothing(reg):
    s = reg("average_loss: 3\n")
    raw, smoothed = [], []

    def grab():
        raw.append(float(s.net.blobs["loss"].data))
        smoothed.append(float(s.smoothed_loss))

    s.add_callback(on_gradients_ready=grab)
    s.step(8)
    for t in range(8):
        window = raw[max(0, t - 2) : t + 1]
        assert smoothed[t] == pytest.approx(np.mean(window), rel=1e-5)


def test_display_lines_in_caffe_format(reg, caplog):
    s = reg("display: 2\n")
    with caplog.at_level("INFO", logger="minicaffe"):
        s.step(4)
    msgs = messages(caplog)
    disp = [m for m in msgs if m.startswith("Iteration") and "iter/s" in m]
    assert len(disp) == 2
    assert re.fullmatch(
        r"Iteration 2 \([\d.e+-]+ iter/s, [\d.e+-]+s/2 iters\), loss = [\d.e+-]+", disp[1]
    )
    assert "Iteration 2, lr = 0.05" in msgs
    train = [m for m in msgs if "Train net output" in m]
    assert re.fullmatch(
        r"    Train net output #0: loss = [\d.e+-]+ \(\* 1 = [\d.e+-]+ loss\)", train[0]
    )


def test_iter_size_accumulates_and_normalizes(reg):
    s = reg("iter_size: 3\n")
    seen = []
    s.add_callback(on_gradients_ready=lambda: seen.append(s.net.params["ip"][1].diff.copy()))
    s.step(1)
    # three forward/backward passes: the raw diff is the sum over 3 micro-batches
    ref = Net("net.prototxt", phase="TRAIN")
    s2 = reg("iter_size: 3\n")  # same seed: same initial weights
    ref.copy_from_arrays([("ip", [b.data for b in s2.net.params["ip"]])])
    total = 0
    for _ in range(3):
        ref.clear_param_diffs()
        ref.forward()
        ref.backward()
        total = total + ref.params["ip"][1].diff
    np.testing.assert_allclose(seen[0], total, rtol=1e-5)


def test_random_seed_makes_runs_repeatable(reg):
    a = reg()
    w0 = a.net.params["ip"][0].data.copy()
    a.step(5)
    b = reg()
    assert np.array_equal(b.net.params["ip"][0].data, w0)
    b.step(5)
    assert np.array_equal(a.net.params["ip"][0].data, b.net.params["ip"][0].data)
    c = reg(solver=SOLVER.replace("random_seed: 7", "random_seed: 8"))
    assert not np.array_equal(c.net.params["ip"][0].data, w0)


def test_snapshot_names_and_after_train(reg, tmp_path):
    s = reg("snapshot: 8\n")
    s.solve()
    names = sorted(f for f in os.listdir(tmp_path) if f.startswith("solver_iter_"))
    assert names == [
        f"solver_iter_{i}.{ext}" for i in (16, 20, 8) for ext in ("caffemodel", "solverstate")
    ]
    model = read_caffemodel(tmp_path / "solver_iter_20.caffemodel")
    np.testing.assert_array_equal(model.arrays_by_layer()["ip"][0], s.net.params["ip"][0].data)


def test_no_duplicate_final_snapshot_and_opt_out(reg, tmp_path, caplog):
    s = reg("snapshot: 10\n")
    with caplog.at_level("INFO", logger="minicaffe"):
        s.solve()
    assert sum("solver_iter_20.caffemodel" in m for m in messages(caplog)) == 1
    for f in os.listdir(tmp_path):
        if f.startswith("solver_iter_"):
            os.remove(tmp_path / f)
    s = reg("snapshot_after_train: false\n")
    s.solve()
    assert not [f for f in os.listdir(tmp_path) if f.startswith("solver_iter_")]


def test_snapshot_prefix_folder_and_default(reg, tmp_path):
    os.makedirs(tmp_path / "snaps")
    s = reg('snapshot_prefix: "snaps"\n')
    assert s.param.snapshot_prefix == os.path.join("snaps", "solver")
    s.step(1)
    s.snapshot()
    assert os.path.exists(tmp_path / "snaps" / "solver_iter_1.caffemodel")
    s = reg()
    assert s.param.snapshot_prefix == "solver"  # the solver path minus its extension


def test_snapshot_prefix_unwritable(reg, tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SolverError, match="cannot write snapshots with prefix"):
        reg('snapshot: 5\nsnapshot_prefix: "afile/sub/x"\n')


def test_action_function_stop_and_snapshot(reg, tmp_path, caplog):
    s = reg("display: 1\n")
    actions = {3: "snapshot", 6: "stop"}
    s.set_action_function(lambda: actions.pop(s.iter, "none"))
    with caplog.at_level("INFO", logger="minicaffe"):
        s.solve()
    assert s.iter == 6
    assert os.path.exists(tmp_path / "solver_iter_3.solverstate")
    assert os.path.exists(tmp_path / "solver_iter_6.solverstate")  # snapshot on stop
    assert "Optimization stopped early." in messages(caplog)


def test_callbacks_order(reg):
    s = reg()
    calls = []
    s.add_callback(lambda: calls.append(("start", s.iter)), lambda: calls.append(("ready", s.iter)))
    s.step(2)
    assert calls == [("start", 0), ("ready", 0), ("start", 1), ("ready", 1)]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_guard_names_in_place_layer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_regression(tmp_path)
    net = (
        (tmp_path / "net.prototxt")
        .read_text()
        .replace(
            'layer { name: "diff"',
            'layer { name: "root" type: "Power" bottom: "ip" top: "ip"\n'
            "  power_param { power: 0.5 } }\n"
            'layer { name: "diff"',
        )
    )
    (tmp_path / "net.prototxt").write_text(net)
    s = get_solver("solver.prototxt")
    before = s.net.params["ip"][0].data.copy()
    with pytest.raises(
        NonFiniteError,
        match=r"iteration 0: the loss is nan; first non-finite "
        r"output: layer 'root' \(Power\), top 'ip'",
    ):
        s.step(3)
    assert np.array_equal(s.net.params["ip"][0].data, before)  # no update was applied


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_guard_keeps_last_snapshot(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_regression(tmp_path, scale=30.0, solver_extra="snapshot: 1\n")
    s = get_solver("solver.prototxt")
    s.param.base_lr = 1.0
    with pytest.raises(NonFiniteError) as info:
        s.solve()
    it = int(re.search(r"iteration (\d+)", str(info.value)).group(1))
    assert it >= 2 and s.iter == it
    assert "first non-finite output: layer" in str(info.value)
    assert not os.path.exists(tmp_path / f"solver_iter_{it + 1}.caffemodel")
    last = get_solver("solver.prototxt")
    last.restore(f"solver_iter_{it}.solverstate")
    assert last.iter == it
    assert all(np.isfinite(b.data).all() for b in last.net.learnable_params)


@pytest.mark.parametrize(
    "text, exc, match",
    [
        ("base_lr: 0.1 lr_policy: 'fixed'", SolverError, "no train net"),
        (
            "net: 'net.prototxt' train_net: 'net.prototxt' base_lr: 0.1 lr_policy: 'fixed'",
            SolverError,
            "more than one train net",
        ),
        (
            "train_net: 'net.prototxt' test_net: 'net.prototxt' base_lr: 0.1 lr_policy: 'fixed' "
            "test_interval: 5",
            SolverError,
            "test_iter must be given once per test net",
        ),
        (
            "net: 'net.prototxt' test_iter: 2 base_lr: 0.1 lr_policy: 'fixed'",
            SolverError,
            "test_interval must be > 0",
        ),
        (
            "net: 'net.prototxt' test_iter: 2 test_interval: 3 test_state { stage: 'a' } "
            "test_state { stage: 'b' } base_lr: 0.1 lr_policy: 'fixed'",
            SolverError,
            "test_state must be given once per test net",
        ),
        ("net: 'missing.prototxt' base_lr: 0.1 lr_policy: 'fixed'", PrototxtError, "no such"),
        (
            "net: 'net.prototxt' base_lr: 0.1 lr_policy: 'fixed' weights: 'nope.caffemodel'",
            WeightsError,
            "nope.caffemodel",
        ),
    ],
)
def test_solver_setting_errors(tmp_path, monkeypatch, text, exc, match):
    monkeypatch.chdir(tmp_path)
    write_regression(tmp_path, solver=text)
    with pytest.raises(exc, match=match):
        get_solver("solver.prototxt")


def test_net_errors_name_the_solver(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_regression(tmp_path)
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "a" type: "InnerProduct" bottom: "nothing" top: "a" }'
    )
    with pytest.raises(NetBuildError, match=r"solver.prototxt \(train net\)"):
        get_solver("solver.prototxt")


def test_paths_relative_to_the_solver_folder(tmp_path, monkeypatch):
    """A solver run from elsewhere finds net.prototxt next to itself (data paths stay CWD's)."""
    write_regression(tmp_path / "job")
    monkeypatch.chdir(tmp_path / "job")
    s = get_solver(str(tmp_path / "job" / "solver.prototxt"))
    assert s.net.name == "reg"


def test_debug_info_lines(reg, caplog):
    s = reg("debug_info: true\ndisplay: 2\n")
    with caplog.at_level("INFO", logger="minicaffe"):
        s.step(2)
    msgs = messages(caplog)
    w = float(np.abs(s.net.params["ip"][0].data).mean())
    assert any(m.startswith("    [Forward] Layer ip, top blob ip data: ") for m in msgs)
    assert any(m.startswith("    [Backward] Layer ip, param blob 0 diff: ") for m in msgs)
    update = [m for m in msgs if m.startswith("    [Update] Layer ip, param 0 data: ")]
    assert len(update) == 1  # display iterations only (iteration 0 of 0, 1)
    assert float(update[0].split("data: ")[1].split(";")[0]) != pytest.approx(w)  # step 2 moved


def test_a_train_net_without_loss_is_warned_about(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(
        "name: 'noloss' layer { name: 'd' type: 'DummyData' top: 'x' dummy_data_param { shape "
        "{ dim: 4 dim: 3 } } } layer { name: 'ip' type: 'InnerProduct' bottom: 'x' top: 'y' "
        "inner_product_param { num_output: 2 } }")
    (tmp_path / "solver.prototxt").write_text(
        "net: 'net.prototxt' base_lr: 0.1 lr_policy: 'fixed' max_iter: 1")
    with caplog.at_level("WARNING", logger="minicaffe"):
        get_solver("solver.prototxt")
    assert any("the train net 'noloss' has no loss" in m for m in messages(caplog))
    caplog.clear()
    with caplog.at_level("WARNING", logger="minicaffe"):
        write_regression(tmp_path)
        get_solver("solver.prototxt")
    assert not any("has no loss" in m for m in messages(caplog))
