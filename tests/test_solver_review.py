"""Solver behaviours checked against Caffe's source during a review: file layouts Caffe writes
and reads, and loop details that the other solver tests do not pin down."""

from __future__ import annotations

import numpy as np

from minicaffe.solver import get_solver
from tests.test_solver_helpers import write_regression


def _write_caffe_h5_state(path, iteration, learned_net, history, current_step=0):
    """A .solverstate.h5 laid out as Caffe's SnapshotSolverStateToHDF5 writes it: iter and
    current_step as 1-element int arrays (hdf5_save_int), learned_net a NUL-terminated
    fixed-length string (H5LTmake_dataset_string), history/0..N-1."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("iter", data=np.array([iteration], np.int32))
        name = learned_net.encode()
        tid = h5py.h5t.C_S1.copy()
        tid.set_size(len(name) + 1)
        tid.set_strpad(h5py.h5t.STR_NULLTERM)
        ds = h5py.h5d.create(f.id, b"learned_net", tid, h5py.h5s.create(h5py.h5s.SCALAR))
        ds.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(name + b"\0", dtype=f"S{len(name) + 1}"))
        f.create_dataset("current_step", data=np.array([current_step], np.int32))
        g = f.create_group("history")
        for i, h in enumerate(history):
            g.create_dataset(str(i), data=np.asarray(h, np.float32))


def test_a_caffe_hdf5_solverstate_restores(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_regression(
        tmp_path, solver_extra='snapshot_format: HDF5\ntype: "Adam"\nmomentum2: 0.999\n'
    )
    s = get_solver("solver.prototxt")
    s.step(3)
    s.snapshot()
    history = [np.asarray(h) for h in s.history]
    _write_caffe_h5_state("caffe.solverstate.h5", 3, "solver_iter_3.caffemodel.h5", history, 2)
    fresh = get_solver("solver.prototxt")
    fresh.restore("caffe.solverstate.h5")
    assert (fresh.iter, fresh.current_step) == (3, 2)
    for a, b in zip(fresh.history, history):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fresh.net.params["ip"][0].data, s.net.params["ip"][0].data)


def _hdf5_snapshot(tmp_path, monkeypatch) -> str:
    """Two steps of the regression net, snapshotted as HDF5 in ``tmp_path``: the state's path."""
    monkeypatch.chdir(tmp_path)
    write_regression(tmp_path, solver_extra="snapshot_format: HDF5\n")
    s = get_solver("solver.prototxt")
    s.step(2)
    return s.snapshot()


def test_hdf5_solverstate_is_laid_out_as_caffe_writes_it(tmp_path, monkeypatch):
    """Caffe's reader (hdf5_load_string) copies learned_net into a buffer of the dataset's size
    and reads it as a C string, so the name must carry its NUL; the ints are 1-element arrays."""
    import h5py

    path = _hdf5_snapshot(tmp_path, monkeypatch)
    with h5py.File(path, "r") as f:
        for name in ("iter", "current_step"):
            assert f[name].shape == (1,) and f[name].dtype == np.int32
        tid = f["learned_net"].id.get_type()
        assert f["learned_net"].shape == ()
        assert tid.get_strpad() == h5py.h5t.STR_NULLTERM
        assert tid.get_size() == len("solver_iter_2.caffemodel.h5") + 1
        raw = np.empty((), dtype=f"S{tid.get_size()}")
        f["learned_net"].id.read(h5py.h5s.ALL, h5py.h5s.ALL, raw)
        assert raw.tobytes() == b"solver_iter_2.caffemodel.h5\0"
    fresh = get_solver("solver.prototxt")
    fresh.restore(path)
    assert fresh.iter == 2


def test_scalar_int_hdf5_solverstate_still_restores(tmp_path, monkeypatch):
    """States written by earlier minicaffe versions (scalar ints, no NUL) keep working."""
    import h5py

    path = _hdf5_snapshot(tmp_path, monkeypatch)
    with h5py.File(path, "r+") as f:
        for name in ("iter", "current_step", "learned_net"):
            value = f[name][()]
            del f[name]
            if name == "learned_net":
                f.create_dataset(name, data=np.bytes_(value))
            else:
                f.create_dataset(name, data=np.int32(value[0]))
    fresh = get_solver("solver.prototxt")
    fresh.restore(path)
    assert fresh.iter == 2


def test_the_fused_update_logs_clipping_as_caffe_does(caplog):
    """The fused (GPU) update path, run here through its CPU reference twin, logs Caffe's
    clipping line as the CPU path does (on display iterations only, to avoid a host sync)."""
    from tests.test_solver_rules import make

    lines = []
    for fused in (False, True):
        s = make("SGD", clip_gradients=0.1, display=1)
        s._fused_reference = fused
        caplog.clear()
        with caplog.at_level("INFO", logger="minicaffe.solver"):
            for _ in range(2):
                for b in s.net.learnable_params:
                    b.diff[...] = 1.0
                s.apply_update()
                s.iter += 1
        got = [r.getMessage() for r in caplog.records if "Gradient clipping" in r.getMessage()]
        assert len(got) == 2
        lines.append(got)
    assert lines[0] == lines[1]
    assert lines[0][0].startswith("Gradient clipping: scaling down gradients (L2 norm ")
    assert " > 0.1) by scale factor " in lines[0][0]


def test_net_creation_lines_use_caffe_wording(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    write_regression(tmp_path, solver_extra="test_iter: 1\ntest_iter: 1\ntest_interval: 5\n")
    with caplog.at_level("INFO", logger="minicaffe.solver"):
        get_solver("solver.prototxt")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Creating")]
    assert lines == [
        "Creating training net from net file: net.prototxt",
        "Creating test net (#0) specified by net file: net.prototxt",
        "Creating test net (#1) specified by net file: net.prototxt",
    ]
