"""Parity with real Caffe: the 15 recorded solver trajectories (tests/data/goldens/solvers).

* the update rules replayed on Caffe's recorded raw gradients (no forward pass needed);
* whole runs from the case folder (HDF5Data, SoftmaxWithLoss): losses and final weights;
* resuming Caffe's own snap_iter_15 snapshot (Caffe's .solverstate has no data position, so the
  data restarts at row 0, exactly as `caffe train -snapshot` does);
* minicaffe's .solverstate and .caffemodel read with Caffe's message definitions.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from minicaffe import blas
from minicaffe.proto import caffe_pb2
from minicaffe.prototxt import read_net_param, read_solver_param
from minicaffe.solver import get_solver
from tests.test_solver_helpers import GOLDEN_CASES, GOLDENS, copy_golden, has_layers

PARAMS = [("ip1", 0), ("ip1", 1), ("ip2", 0), ("ip2", 1)]
RTOL, ATOL = 1e-4, 1e-5
needs_swl = pytest.mark.skipif(
    not has_layers("SoftmaxWithLoss", "HDF5Data"),
    reason="the golden net needs SoftmaxWithLoss and HDF5Data",
)


def trajectory(case: str):
    return np.load(os.path.join(GOLDENS, case, "trajectory.npz"))


@pytest.mark.parametrize("case", GOLDEN_CASES)
@pytest.mark.parametrize("vector_blas", [True, False])
def test_update_rules_on_recorded_gradients(case, vector_blas, monkeypatch):
    """Feed Caffe's raw gradients to our update; the weights must follow Caffe's (through
    OpenBLAS's axpy/axpby, as Caffe, and through the array-operation path)."""
    if not vector_blas:
        monkeypatch.setattr(blas._cblas, "vector", {})
        monkeypatch.setattr(blas._cblas, "checked", True)
    z = trajectory(case)
    net = read_net_param(os.path.join(GOLDENS, case, "net.prototxt"))
    kept = [lp for lp in net.layer if lp.type in ("InnerProduct", "ReLU")]
    del net.layer[:]
    inp = net.layer.add(name="data", type="Input", top=["data"])
    inp.input_param.shape.add(dim=[8, 20])
    net.layer.extend(kept)
    param = read_solver_param(os.path.join(GOLDENS, case, "solver.prototxt"))
    for name in ("net", "weights"):
        param.ClearField(name)
    param.net_param.CopyFrom(net)
    param.snapshot = 0
    s = get_solver(param)
    for layer, i in PARAMS:
        s.net.params[layer][i].data[...] = z[f"weights::{layer}::{i}"][0]
    for t in range(30):
        for k, (layer, i) in enumerate(PARAMS):
            grad = z[f"grad::{layer}::{i}"][t]
            # Caffe leaves a frozen (lr_mult 0) param's diff at 0; the golden grad does not
            s.net.params[layer][i].diff[...] = grad if s.net.params_lr[k] else 0
        s.apply_update()
        s.iter += 1
        assert s.last_lr == pytest.approx(float(z["lr"][t]), rel=1e-6)
        for layer, i in PARAMS:
            np.testing.assert_allclose(
                s.net.params[layer][i].data,
                z[f"weights::{layer}::{i}"][t + 1],
                rtol=RTOL,
                atol=ATOL,
                err_msg=f"{case} t={t} {layer}[{i}]",
            )
        if t + 1 == 15:
            assert s.current_step == int(z["state15::current_step"])
            for k, h in enumerate(s.history):
                np.testing.assert_allclose(
                    h,
                    z[f"state15::history::{k}"],
                    rtol=RTOL,
                    atol=1e-6,
                    err_msg=f"{case} history {k}",
                )


def _run(case_dir, monkeypatch, resume: str | None = None, iters: int | None = None):
    monkeypatch.chdir(case_dir)
    s = get_solver("solver.prototxt")
    losses = []
    s.add_callback(on_gradients_ready=lambda: losses.append(float(s.smoothed_loss)))
    if resume:
        s.restore(resume)
    if iters is None:
        s.solve()
    else:
        s.step(iters)
    return s, np.array(losses, dtype=np.float32)


@needs_swl
@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_trajectory_losses_and_final_weights(case, tmp_path, monkeypatch):
    z = trajectory(case)
    d = copy_golden(case, tmp_path)
    s, losses = _run(d, monkeypatch)
    assert s.iter == 30
    np.testing.assert_allclose(losses, z["loss"], rtol=RTOL, atol=ATOL)
    for layer, i in PARAMS:
        np.testing.assert_allclose(
            s.net.params[layer][i].data,
            z[f"final::{layer}::{i}"],
            rtol=RTOL,
            atol=ATOL,
            err_msg=f"{layer}[{i}]",
        )
    # our snapshots hold what Caffe's hold (read with the plain message classes)
    for it in (15, 30):
        ours, theirs = caffe_pb2.SolverState(), caffe_pb2.SolverState()
        with open(os.path.join(d, f"snap_iter_{it}.solverstate"), "rb") as fh:
            ours.ParseFromString(fh.read())
        with open(os.path.join(GOLDENS, case, f"snap_iter_{it}.solverstate"), "rb") as fh:
            theirs.ParseFromString(fh.read())
        assert (ours.iter, ours.learned_net, ours.current_step) == (
            theirs.iter,
            theirs.learned_net,
            theirs.current_step,
        )
        assert len(ours.history) == len(theirs.history)
        for a, b in zip(ours.history, theirs.history):
            assert list(a.shape.dim) == list(b.shape.dim)
            np.testing.assert_allclose(a.data, b.data, rtol=RTOL, atol=1e-6)
        assert {r.layer for r in ours.data_state} >= {"data"}
    mine, caffes = caffe_pb2.NetParameter(), caffe_pb2.NetParameter()
    with open(os.path.join(d, "snap_iter_30.caffemodel"), "rb") as fh:
        mine.ParseFromString(fh.read())
    with open(os.path.join(GOLDENS, case, "snap_iter_30.caffemodel"), "rb") as fh:
        caffes.ParseFromString(fh.read())
    theirs_blobs = {lp.name: lp.blobs for lp in caffes.layer if lp.blobs}
    ours_blobs = {lp.name: lp.blobs for lp in mine.layer if lp.blobs}
    assert ours_blobs.keys() == theirs_blobs.keys()
    for name, blobs in theirs_blobs.items():
        for a, b in zip(ours_blobs[name], blobs):
            assert list(a.shape.dim) == list(b.shape.dim)
            np.testing.assert_allclose(a.data, b.data, rtol=RTOL, atol=ATOL)


@needs_swl
@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_resume_caffe_snapshot(case, tmp_path, monkeypatch):
    z = trajectory(case)
    d = copy_golden(case, tmp_path)
    src = os.path.join(GOLDENS, case)
    for ext in ("caffemodel", "solverstate"):
        with open(os.path.join(src, f"snap_iter_15.{ext}"), "rb") as fh:
            data = fh.read()
        with open(os.path.join(d, f"snap_iter_15.{ext}"), "wb") as fh:
            fh.write(data)
    s, losses = _run(d, monkeypatch, resume="snap_iter_15.solverstate", iters=15)
    assert s.iter == 30
    np.testing.assert_allclose(losses, z["resume_loss"], rtol=RTOL, atol=ATOL)
    for layer, i in PARAMS:
        np.testing.assert_allclose(
            s.net.params[layer][i].data, z[f"resume_final::{layer}::{i}"], rtol=RTOL, atol=ATOL
        )


def _caffe_solverstate_class():
    """SolverState exactly as Caffe declares it (no minicaffe extension fields)."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="caffe_schema_check.proto", package="caffe_schema_check", syntax="proto2"
    )
    F = descriptor_pb2.FieldDescriptorProto
    shape = fdp.message_type.add(name="BlobShape")
    shape.field.add(
        name="dim",
        number=1,
        type=F.TYPE_INT64,
        label=F.LABEL_REPEATED,
        options=descriptor_pb2.FieldOptions(packed=True),
    )
    blob = fdp.message_type.add(name="BlobProto")
    blob.field.add(
        name="shape",
        number=7,
        type=F.TYPE_MESSAGE,
        label=F.LABEL_OPTIONAL,
        type_name=".caffe_schema_check.BlobShape",
    )
    blob.field.add(
        name="data",
        number=5,
        type=F.TYPE_FLOAT,
        label=F.LABEL_REPEATED,
        options=descriptor_pb2.FieldOptions(packed=True),
    )
    state = fdp.message_type.add(name="SolverState")
    state.field.add(name="iter", number=1, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    state.field.add(name="learned_net", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    state.field.add(
        name="history",
        number=3,
        type=F.TYPE_MESSAGE,
        label=F.LABEL_REPEATED,
        type_name=".caffe_schema_check.BlobProto",
    )
    state.field.add(name="current_step", number=4, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("caffe_schema_check.SolverState")
    )


@needs_swl
@pytest.mark.parametrize("case", ["adam", "sgd_multistep"])
def test_solverstate_readable_with_caffes_schema(case, tmp_path, monkeypatch):
    """Write a snapshot mid-run and read it back with Caffe's SolverState definition."""
    z = trajectory(case)
    d = copy_golden(case, tmp_path)
    src = os.path.join(GOLDENS, case)
    monkeypatch.chdir(d)
    s = get_solver("solver.prototxt")
    # restore Caffe's iteration-30 state (history, current_step) without running anything
    s.restore(os.path.join(src, "snap_iter_30.solverstate"))
    path = s.snapshot()
    with open(path, "rb") as fh:
        raw = fh.read()
    state = _caffe_solverstate_class()()
    state.ParseFromString(raw)
    assert state.iter == 30 and state.learned_net == "snap_iter_30.caffemodel"
    assert state.current_step == int(z["state30::current_step"])
    assert len(state.history) == len(s.history)
    for k, h in enumerate(state.history):
        want = z[f"state30::history::{k}"]
        assert list(h.shape.dim) == list(want.shape)
        assert np.array_equal(np.asarray(h.data, np.float32).reshape(want.shape), want)
    # the data positions ride in field 1000, which Caffe's definition simply skips
    ours = caffe_pb2.SolverState()
    ours.ParseFromString(raw)
    assert [(r.net, r.layer) for r in ours.data_state][0] == ("train", "data")
