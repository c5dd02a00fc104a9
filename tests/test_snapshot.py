"""Snapshots: exact resume, HDF5 format, atomic writes (failures and SIGKILL), restore errors,
and SIGINT/SIGHUP handling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from minicaffe.errors import SolverError, WeightsError
from minicaffe.proto import caffe_pb2
from minicaffe.prototxt import read_caffemodel, read_solverstate
from minicaffe.solver import SignalHandler, get_solver
from tests.test_solver_helpers import write_regression

RESUMABLE = "test_iter: 2\ntest_interval: 4\nsnapshot: 10\ndisplay: 5\n"


def run_recording(solver, caplog, resume=None):
    losses = []
    solver.add_callback(
        on_gradients_ready=lambda: losses.append(solver.net.blobs["loss"].data.copy())
    )
    caplog.clear()
    with caplog.at_level("INFO", logger="minicaffe"):
        solver.solve(resume)
    tests = [r.getMessage() for r in caplog.records if "Test net output" in r.getMessage()]
    return losses, tests


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_resume_equals_uninterrupted_bit_for_bit(tmp_path, monkeypatch, caplog, fmt):
    """Shuffled data, dropout and a test net: the resumed half repeats the same numbers."""
    monkeypatch.chdir(tmp_path)
    write_regression(
        tmp_path, shuffle=True, dropout=True, solver_extra=RESUMABLE + f"snapshot_format: {fmt}\n"
    )
    full = get_solver("solver.prototxt")
    losses, tests = run_recording(full, caplog)
    ext = ".solverstate.h5" if fmt == "HDF5" else ".solverstate"
    assert os.path.exists(f"solver_iter_10{ext}")
    resumed = get_solver("solver.prototxt")
    losses2, tests2 = run_recording(resumed, caplog, resume=f"solver_iter_10{ext}")
    assert len(losses2) == 10
    assert all(np.array_equal(a, b) for a, b in zip(losses[10:], losses2))
    assert tests2 == tests[-len(tests2) :] and len(tests2) == 3  # at 12, 16 and 20
    for a, b in zip(full.net.learnable_params, resumed.net.learnable_params):
        assert np.array_equal(a.data, b.data)
    for a, b in zip(full.history, resumed.history):
        assert np.array_equal(a, b)


def test_solverstate_records_every_data_layer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_regression(tmp_path, solver_extra="test_iter: 1\ntest_interval: 3\n")
    s = get_solver("solver.prototxt")
    s.step(3)
    state, history = read_solverstate(s.snapshot())
    assert state.iter == 3 and state.learned_net == "solver_iter_3.caffemodel"
    assert len(history) == 2 and history[0].shape == (2, 5)
    records = {(r.net, r.layer): r for r in state.data_state}
    assert records[("train", "data")].cursor == (3 * 4) % 22
    assert records[("test0", "data")].cursor == 4  # one test batch of 4 at iteration 0
    assert ("solver", "host_rng") in records


def test_hdf5_snapshot_layout(tmp_path, monkeypatch):
    import h5py

    monkeypatch.chdir(tmp_path)
    write_regression(tmp_path, solver_extra="snapshot_format: HDF5\nsnapshot_diff: true\n")
    s = get_solver("solver.prototxt")
    s.step(2)
    s.snapshot()
    with h5py.File("solver_iter_2.caffemodel.h5", "r") as f:
        np.testing.assert_array_equal(f["data/ip/0"][()], s.net.params["ip"][0].data)
        assert "diff" in f and f["diff/ip/1"].shape == (2,)
    with h5py.File("solver_iter_2.solverstate.h5", "r") as f:
        assert f["iter"][()].tolist() == [2] and f["current_step"].shape == (1,)
        assert f["learned_net"][()] == b"solver_iter_2.caffemodel.h5"
        assert sorted(f["history"]) == ["0", "1"]
    model = read_caffemodel("solver_iter_2.caffemodel.h5")
    np.testing.assert_array_equal(model.arrays_by_layer()["ip"][1], s.net.params["ip"][1].data)


def test_failed_write_keeps_previous_snapshot(tmp_path, monkeypatch):
    """A crash while writing (simulated at the final rename) leaves no partial file and the
    previous snapshot loadable, and a half-written overwrite keeps the old content."""
    import minicaffe.prototxt as prototxt

    monkeypatch.chdir(tmp_path)
    write_regression(tmp_path)
    s = get_solver("solver.prototxt")
    s.step(2)
    s.snapshot()
    good = read_caffemodel("solver_iter_2.caffemodel").arrays_by_layer()["ip"][0].copy()
    s.step(2)

    def crash(src, dst):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(prototxt.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        s.snapshot()
    s.iter = 2  # an overwrite of the same snapshot name fails the same way
    with pytest.raises(KeyboardInterrupt):
        s.snapshot()
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    files = sorted(os.listdir(tmp_path))
    assert "solver_iter_4.caffemodel" not in files and not [f for f in files if "tmp" in f]
    np.testing.assert_array_equal(
        read_caffemodel("solver_iter_2.caffemodel").arrays_by_layer()["ip"][0], good
    )
    fresh = get_solver("solver.prototxt")
    fresh.restore("solver_iter_2.solverstate")
    assert fresh.iter == 2
    np.testing.assert_array_equal(fresh.net.params["ip"][0].data, good)


KILL_SCRIPT = """
import os
import signal
import sys

import minicaffe.prototxt as prototxt
from minicaffe.proto import caffe_pb2
from minicaffe.solver import get_solver

prefix, mode = sys.argv[1], sys.argv[2]
p = caffe_pb2.SolverParameter(type="Adam", base_lr=0.01, lr_policy="fixed", momentum=0.9,
                              snapshot_prefix=prefix)
net = p.net_param
net.name = "big"
inp = net.layer.add(name="in", type="Input", top=["x"])
inp.input_param.shape.add(dim=[1, 1000])
ip = net.layer.add(name="ip", type="InnerProduct", bottom=["x"], top=["y"])
ip.inner_product_param.num_output = 1000
s = get_solver(p)
s.snapshot()  # the good snapshot: weights and history all 0


def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


class HalfWriter:
    def __init__(self, fh):
        self.fh = fh

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()

    def write(self, data):
        self.fh.write(data[: len(data) // 2])
        self.fh.flush()
        die()


if mode == "half":  # killed in the middle of writing the new bytes
    real_fdopen = os.fdopen
    prototxt.os.fdopen = lambda fd, *a, **k: HalfWriter(real_fdopen(fd, *a, **k))
elif mode == "rename":  # killed with the new file complete but not yet in place
    prototxt.os.replace = die
print("ready", flush=True)
k = 0
while True:
    k += 1
    s.net.params["ip"][0].data[...] = k
    s.history[0][...] = k
    s.snapshot()
"""


@pytest.mark.parametrize("mode", ["half", "rename", "anytime"])
def test_sigkill_during_snapshot_writing_leaves_loadable_files(tmp_path, mode):
    """A process SIGKILLed while it overwrites a snapshot leaves a complete, loadable one."""
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT))
    prefix = str(tmp_path / "big")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root] + sys.path))
    proc = subprocess.Popen(
        [sys.executable, str(script), prefix, mode], stdout=subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout.readline().strip() == b"ready"
        if mode == "anytime":
            time.sleep(0.15)
            proc.kill()
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    model = read_caffemodel(prefix + "_iter_0.caffemodel")
    w = model.arrays_by_layer()["ip"][0]
    assert w.shape == (1000, 1000) and np.all(w == w.flat[0])  # one whole write
    state, history = read_solverstate(prefix + "_iter_0.solverstate")
    assert state.iter == 0 and len(history) == 4
    assert history[0].shape == (1000, 1000) and np.all(history[0] == history[0].flat[0])
    if mode != "anytime":
        assert w.flat[0] == 0 and history[0].flat[0] == 0  # still the first snapshot
        leftovers = [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
        assert leftovers  # the kill really hit a write in progress


def test_restore_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_regression(tmp_path, solver_extra='type: "Adam"\n')
    adam = get_solver("solver.prototxt")
    path = adam.snapshot()
    write_regression(tmp_path)
    sgd = get_solver("solver.prototxt")
    with pytest.raises(WeightsError, match="holds 4 history blobs but this SGD solver has 2"):
        sgd.restore(path)
    with pytest.raises(WeightsError, match="no such file"):
        sgd.restore("missing.solverstate")
    with open(path, "rb") as fh:
        raw = fh.read()
    with open("cut.solverstate", "wb") as fh:
        fh.write(raw[: len(raw) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        sgd.restore("cut.solverstate")


def test_restore_finds_model_next_to_state(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_regression(tmp_path, solver_extra='snapshot_prefix: "out/run"\n')
    s = get_solver("solver.prototxt")
    s.step(3)
    state = s.snapshot()
    os.makedirs("elsewhere")
    monkeypatch.chdir("elsewhere")  # learned_net "out/run_iter_3.caffemodel" is not found here
    write_regression(".")
    fresh = get_solver("solver.prototxt")
    fresh.restore(os.path.join("..", state))
    np.testing.assert_array_equal(fresh.net.params["ip"][0].data, s.net.params["ip"][0].data)


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="needs SIGHUP")
def test_signal_handler_maps_signals_to_actions():
    before = signal.getsignal(signal.SIGINT)
    with SignalHandler("stop", "snapshot") as h:
        assert h.action() == "none"
        os.kill(os.getpid(), signal.SIGHUP)
        assert h.action() == "snapshot"
        os.kill(os.getpid(), signal.SIGINT)
        assert h.action() == "stop"
        assert h.action() == "none"
    assert signal.getsignal(signal.SIGINT) is before
    with SignalHandler("none", "none") as h:
        os.kill(os.getpid(), signal.SIGHUP)
        assert h.action() == "none"
    with pytest.raises(SolverError, match="sigint_effect must be one of"):
        SignalHandler("quit")


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="needs SIGHUP")
@pytest.mark.parametrize("effect, stops", [("stop", True), ("snapshot", False)])
def test_sigint_during_training(tmp_path, monkeypatch, effect, stops):
    monkeypatch.chdir(tmp_path)
    write_regression(tmp_path)
    s = get_solver("solver.prototxt")
    s.add_callback(on_start=lambda: s.iter == 4 and os.kill(os.getpid(), signal.SIGINT))
    with SignalHandler(effect, "snapshot") as h:
        s.set_action_function(h.action)
        s.solve()
    assert s.iter == (5 if stops else 20)
    assert os.path.exists("solver_iter_5.solverstate")  # snapshot at the signal either way
    state, _ = read_solverstate("solver_iter_5.solverstate")
    assert state.iter == 5


def test_caffe_state_without_data_records_restarts_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_regression(tmp_path)
    s = get_solver("solver.prototxt")
    s.step(3)
    path = s.snapshot()
    state, history = read_solverstate(path)
    caffe_like = caffe_pb2.SolverState(iter=state.iter, learned_net=state.learned_net)
    from minicaffe.prototxt import write_solverstate

    write_solverstate("caffe.solverstate", caffe_like, history)
    fresh = get_solver("solver.prototxt")
    fresh.restore("caffe.solverstate")
    st = fresh.net.layer_dict["data"].data_state()
    assert fresh.iter == 3 and st.cursor == 0 and st.epoch == 0


def test_a_double_ctrl_c_still_snapshots_and_a_third_aborts(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_regression(tmp_path)
    s = get_solver("solver.prototxt")

    def twice():
        if s.iter == 4:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    s.add_callback(on_start=twice)
    with SignalHandler("stop", "snapshot") as h:
        s.set_action_function(h.action)
        s.solve()
    assert s.iter == 5 and os.path.exists("solver_iter_5.solverstate")
    err = capsys.readouterr().err
    assert "stopping after this iteration, with a snapshot (Ctrl-C 2 more times" in err
    assert "(Ctrl-C 1 more time to abort" in err
    with SignalHandler("stop", "snapshot"), pytest.raises(KeyboardInterrupt):
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGINT)


def test_state_files_of_the_wrong_kind_say_what_they_are(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_regression(tmp_path)
    s = get_solver("solver.prototxt")
    s.step(2)
    state = s.snapshot()
    model = state.replace(".solverstate", ".caffemodel")
    with pytest.raises(WeightsError, match="it is a .caffemodel .weights.; give it as weights"):
        get_solver("solver.prototxt").restore(model)
    from minicaffe.prototxt import read_caffemodel

    with pytest.raises(WeightsError, match="it is a .solverstate"):
        read_caffemodel(state)
    with pytest.raises(WeightsError, match="it is a text prototxt"):
        read_caffemodel("solver.prototxt")
    open("empty.caffemodel", "wb").close()
    with pytest.raises(WeightsError, match="empty"):
        read_caffemodel("empty.caffemodel")
    os.remove(model)  # the state's learned_net is gone
    with pytest.raises(WeightsError, match="learned_net.*is missing"):
        get_solver("solver.prototxt").restore(state)
    st, history = read_solverstate(state)
    st.iter = -3
    from minicaffe.prototxt import write_solverstate

    write_solverstate("neg.solverstate", st, history)
    with pytest.raises(WeightsError, match="iteration -3"):
        read_solverstate("neg.solverstate")


def test_an_unwritable_final_snapshot_is_found_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_regression(tmp_path)
    (tmp_path / "afile").write_text("")
    s = get_solver("solver.prototxt")
    s.param.snapshot = 0
    s.param.snapshot_prefix = "afile/sub/x"
    with pytest.raises(SolverError, match="cannot write snapshots"):
        s.solve()
    assert s.iter == 0
