"""``minicaffe train`` / ``test`` / ``device_query`` / ``parse-log`` / ``plot`` end to end."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minicaffe import backend
from minicaffe.cli import main
from minicaffe.net import Net
from minicaffe.prototxt import read_caffemodel, read_solverstate
from tests.test_solver_helpers import write_regression

no_gpu = pytest.mark.skipif(backend.gpu_available(), reason="checks the no-GPU behaviour")
EXTRA = "test_iter: 2\ntest_interval: 10\ndisplay: 5\nsnapshot: 10\n"


@pytest.fixture
def job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_regression(tmp_path, solver_extra=EXTRA)
    return tmp_path


def weights(path, layer="ip"):
    return read_caffemodel(path).arrays_by_layer()[layer]


def test_train_solver_prototxt(job, capsys):
    assert main(["train", "--solver", "solver.prototxt"]) == 0
    out, err = capsys.readouterr()
    assert "trained 'reg' to iteration 20" in out and "solver.log" in out
    assert sorted(f for f in os.listdir(job) if f.startswith("solver_iter")) == [
        "solver_iter_10.caffemodel",
        "solver_iter_10.solverstate",
        "solver_iter_20.caffemodel",
        "solver_iter_20.solverstate",
    ]
    log = (job / "solver.log").read_text()
    assert "Solving reg" in log and "Optimization Done." in log
    assert "] Iteration 10, Testing net (#0)" in log
    assert "Iteration 5 (" in err  # every log line also on stderr (not a terminal here)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "-solver", "solver.prototxt"],
        ["train", "-solver=solver.prototxt", "-sigint_effect", "snapshot"],
        ["train", "--solver=solver.prototxt", "--sighup_effect=none", "-level", "0"],
        ["train", "solver.prototxt", "-q"],
    ],
)
def test_caffe_flag_spellings(job, argv, capsys):
    assert main(argv) == 0
    assert os.path.exists(job / "solver_iter_20.caffemodel")


def test_train_net_prototxt_with_flags(job, capsys):
    code = main(
        [
            "train",
            "net.prototxt",
            "--iters",
            "6",
            "--lr",
            "0.01",
            "--solver-type",
            "Adam",
            "--momentum",
            "0.8",
            "--weight-decay",
            "0",
            "--snapshot-prefix",
            "out/m",
            "--test-iter",
            "1",
            "-q",
        ]
    )
    assert code == 0
    state, history = read_solverstate(job / "out" / "m_iter_6.solverstate")
    assert state.iter == 6 and len(history) == 4  # Adam: 2 arrays per learnable param
    log = (job / "out" / "m.log").read_text()
    assert "Iteration 6, Testing net (#0)" in log  # net prototxt: test at the end only
    assert "Iteration 0, Testing net" not in log


def test_flags_override_the_solver(job):
    assert (
        main(
            [
                "train",
                "solver.prototxt",
                "--iters",
                "4",
                "--snapshot-every",
                "2",
                "--lr",
                "0.001",
                "--no-log",
                "-q",
            ]
        )
        == 0
    )
    assert os.path.exists(job / "solver_iter_2.caffemodel")
    assert os.path.exists(job / "solver_iter_4.caffemodel")
    assert not os.path.exists(job / "solver.log")


def test_finetune_reports_layers(job):
    assert main(["train", "solver.prototxt", "-q"]) == 0
    net = (
        (job / "net.prototxt")
        .read_text()
        .replace(
            'layer { name: "diff" type: "Eltwise" bottom: "ip"',
            'layer { name: "extra" type: "InnerProduct" bottom: "ip" top: "extra"\n'
            '  inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }\n'
            'layer { name: "diff" type: "Eltwise" bottom: "extra"',
        )
    )
    (job / "net.prototxt").write_text(net)
    assert (
        main(
            [
                "train",
                "solver.prototxt",
                "--weights",
                "solver_iter_20.caffemodel,solver_iter_10.caffemodel",
                "--iters",
                "0",
                "--snapshot-every",
                "0",
                "--log",
                "ft.log",
                "-q",
            ]
        )
        == 0
    )
    log = (job / "ft.log").read_text()
    assert (
        "Fine-tuning from solver_iter_20.caffemodel: copied 1 layers (ip); skipped 0 layers "
        "not in this net; re-initialised 1 layers not in the file (extra)"
    ) in log
    # the later file wins, as Caffe loads them in order
    np.testing.assert_array_equal(
        weights("solver_iter_0.caffemodel")[0], weights("solver_iter_10.caffemodel")[0]
    )


def test_resume_with_snapshot_flag_continues_exactly(job):
    assert main(["train", "solver.prototxt", "-q"]) == 0
    final = weights("solver_iter_20.caffemodel")
    os.remove(job / "solver_iter_20.caffemodel")
    assert main(["train", "solver.prototxt", "--snapshot", "solver_iter_10.solverstate", "-q"]) == 0
    assert (
        "Restoring previous solver status from solver_iter_10.solverstate"
        in (job / "solver.log").read_text()
    )
    for a, b in zip(final, weights("solver_iter_20.caffemodel")):
        assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            [
                "train",
                "solver.prototxt",
                "--snapshot",
                "a.solverstate",
                "--weights",
                "b.caffemodel",
            ],
            "not both",
        ),
        (["train"], "need a solver prototxt"),
        (["train", "solver.prototxt", "--solver", "other.prototxt"], "two prototxts"),
        (["train", "solver.prototxt", "--gpu", "zero"], "--gpu takes a device number"),
        (["train", "solver.prototxt", "--phase", "TEST"], "phase TRAIN"),
        (["test", "--model", "net.prototxt"], "need model weights"),
        (["test", "--weights", "x.caffemodel"], "need a model definition"),
    ],
)
def test_usage_errors_exit_2(job, capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "solver.prototxt", "--bogus"],
        ["train", "solver.prototxt", "-sigint_effect", "quit"],
        ["train", "solver.prototxt", "--iters", "many"],
        ["test", "--model", "net.prototxt", "--weights", "w", "--iterations", "x"],
    ],
)
def test_bad_flags_exit_2(job, argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


@no_gpu
def test_gpu_flag_without_gpu_is_a_device_error(job, capsys):
    assert main(["train", "solver.prototxt", "--gpu", "0"]) == 1
    assert "no usable GPU" in capsys.readouterr().err


@no_gpu
def test_solver_mode_gpu_without_gpu_trains_on_cpu(job, capsys):
    text = (job / "solver.prototxt").read_text().replace("solver_mode: CPU", "solver_mode: GPU")
    (job / "solver.prototxt").write_text(text)
    assert main(["train", "solver.prototxt", "--iters", "2"]) == 0
    assert "asks for solver_mode: GPU but no usable GPU" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nonfinite_training_exits_1(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_regression(tmp_path, scale=30.0)
    assert main(["train", "solver.prototxt", "--lr", "1", "-q"]) == 1
    err = capsys.readouterr().err
    assert "minicaffe train: error: training stopped at iteration" in err
    assert "first non-finite output" in (tmp_path / "solver.log").read_text()


def test_missing_solver_file_exits_1(job, capsys):
    assert main(["train", "nothere.prototxt"]) == 1
    assert "nothere.prototxt: no such solver prototxt" in capsys.readouterr().err


def test_test_command_scores_the_model(job, capsys):
    assert main(["train", "solver.prototxt", "-q"]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "test",
                "-model",
                "net.prototxt",
                "-weights",
                "solver_iter_20.caffemodel",
                "-iterations",
                "3",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    net = Net("net.prototxt", phase="TEST", weights="solver_iter_20.caffemodel")
    want = np.float32(np.mean([float(net.forward()["loss"]) for _ in range(3)]))
    assert f"loss = {float(want):.6g} (* 1 = " in out
    assert out.splitlines()[0] == f"Loss: {float(want):.6g}"
    assert err.count("Batch ") == 3


@no_gpu
def test_device_query_without_gpu(capsys):
    assert main(["device_query"]) == 0
    assert "No GPU available" in capsys.readouterr().out


def test_parse_log_of_a_training_run(job, capsys):
    assert main(["train", "solver.prototxt", "-q"]) == 0
    assert main(["parse-log", "solver.log", "-o", "csv"]) == 0
    with open(job / "csv" / "solver.log.train") as fh:
        train = list(csv.DictReader(fh))
    with open(job / "csv" / "solver.log.test") as fh:
        test = list(csv.DictReader(fh))
    assert [int(r["NumIters"]) for r in train] == [0, 5, 10, 15]
    assert list(train[0]) == ["NumIters", "Seconds", "LearningRate", "loss"]
    assert all(float(r["LearningRate"]) == pytest.approx(0.05) for r in train)
    assert [int(r["NumIters"]) for r in test] == [0, 10, 20]
    assert float(test[-1]["Seconds"]) >= float(test[0]["Seconds"]) >= 0


def test_plot(job, capsys):
    pytest.importorskip("matplotlib")
    assert main(["train", "solver.prototxt", "-q"]) == 0
    assert main(["plot", "solver.log", "-o", "curves.png", "--x", "seconds"]) == 0
    assert (job / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "train loss, test loss" in capsys.readouterr().out


def test_plot_without_matplotlib(job, capsys, monkeypatch):
    assert main(["train", "solver.prototxt", "--iters", "1", "-q"]) == 0
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["plot", "solver.log"]) == 1
    assert "plotting needs matplotlib" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="needs SIGHUP")
def test_signals_to_a_training_process(tmp_path):
    """SIGHUP snapshots and goes on; SIGINT snapshots and stops; the process exits 0."""
    write_regression(tmp_path, solver_extra="display: 50\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root] + sys.path))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "minicaffe",
            "train",
            "solver.prototxt",
            "--iters",
            "10000000",
            "-q",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    log = tmp_path / "solver.log"
    try:
        deadline = time.monotonic() + 60
        while "Iteration 100 " not in (log.read_text() if log.exists() else ""):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGHUP)
        while "Snapshotting solver state" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    text = log.read_text()
    assert "Optimization stopped early." in text
    snaps = sorted(
        int(f.split("_iter_")[1].split(".")[0])
        for f in os.listdir(tmp_path)
        if f.endswith(".solverstate")
    )
    assert len(snaps) == 2 and 100 <= snaps[0] < snaps[1] < 10000000
    assert f"solver_iter_{snaps[1]}.solverstate" in text.splitlines()[-2]


# ---------------------------------------------------------------- flags and messages (review)

def test_lr_policy_flags_for_a_net_prototxt(job, capsys):
    assert main(["train", "net.prototxt", "--iters", "2", "--lr-policy", "exp", "-q"]) == 2
    assert "--lr-policy exp needs --gamma" in capsys.readouterr().err
    assert main(["train", "net.prototxt", "--iters", "2", "--lr-policy", "multistep",
                 "--gamma", "0.5", "-q"]) == 2
    assert "needs --stepvalue" in capsys.readouterr().err
    assert main(["train", "net.prototxt", "--iters", "-5", "-q"]) == 2
    assert "--iters must be >= 0; received -5" in capsys.readouterr().err
    assert main(["train", "net.prototxt", "--iters", "4", "--lr-policy", "multistep",
                 "--gamma", "0.5", "--stepvalue", "1,3", "--display", "1", "--no-log"]) == 0
    err = capsys.readouterr().err
    for i, lr in ((0, "0.01"), (1, "0.005"), (3, "0.0025")):
        assert f"Iteration {i}, lr = {lr}" in err
    assert main(["train", "solver.prototxt", "--iters", "2", "--lr-policy", "inv", "--gamma",
                 "0.1", "--power", "1", "--display", "1", "--no-log"]) == 0
    assert "Iteration 1, lr = 0.0454545" in capsys.readouterr().err  # 0.05 * (1 + 0.1) ** -1


def test_a_typo_inside_a_solvers_inline_net_is_reported_where_it_is(job, capsys):
    net = (job / "net.prototxt").read_text().replace("num_output", "num_outputs", 1)
    lines = ["base_lr: 0.01", "lr_policy: 'fixed'", "max_iter: 2", "net_param {"]
    lines += ["  " + line for line in net.splitlines()] + ["}"]
    (job / "inline.prototxt").write_text("\n".join(lines) + "\n")
    assert main(["train", "inline.prototxt", "-q", "--no-log"]) == 1
    err = capsys.readouterr().err
    assert "num_outputs" in err and "base_lr" not in err
    line = next(i for i, text in enumerate(lines, 1) if "num_outputs" in text)
    assert f"inline.prototxt:{line}:" in err


def test_prototxt_arguments_are_files_and_an_empty_gpu_is_the_cpu(job, capsys):
    assert main(["train", "max_iter: 5", "-q"]) == 1
    assert "max_iter: 5: no such solver prototxt" in capsys.readouterr().err
    assert not os.path.exists(job / "max_iter: 5.log")
    assert main(["train", "solver.prototxt", "--iters", "2", "--gpu", "", "-q",
                 "--no-log"]) == 0
    os.mkdir(job / "logs")
    assert main(["train", "solver.prototxt", "--iters", "2", "--log", "logs", "-q"]) == 2
    assert "--log logs is a folder" in capsys.readouterr().err


def test_errors_print_once_with_no_log_file(job, capsys):
    (job / "bad.prototxt").write_text(
        "layer { name: 'ip' type: 'InnerProduct' bottom: 'nowhere' top: 'y' "
        "inner_product_param { num_output: 1 } }\n")
    assert main(["train", "bad.prototxt", "--iters", "1", "--no-log", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.count("nowhere") == 1 and err.startswith("minicaffe train: error:")


def test_default_stage_is_one_empty_stage_as_caffes_flag(job, capsys):
    """Caffe's -stage defaults to "", split into one empty stage: include { stage: "" } layers
    are in unless other stages are given."""
    net = (job / "net.prototxt").read_text()
    extra = ("layer { name: 'extra' type: 'Power' bottom: 'data' top: 'extra' "
             "include { stage: '' } }\n")
    (job / "staged.prototxt").write_text(net + extra)
    assert main(["summary", "staged.prototxt"]) == 0
    assert "extra" in capsys.readouterr().out
    assert main(["summary", "staged.prototxt", "--stage", "a,b"]) == 0
    assert "extra" not in capsys.readouterr().out
    assert main(["summary", "staged.prototxt", "-stage", "a", "--stage", ","]) == 0
    assert "extra" in capsys.readouterr().out  # "," holds the empty stage
    assert main(["time", "staged.prototxt", "--iterations", "1", "--phase", "TEST"]) == 0
    assert "extra" in capsys.readouterr().out


def test_test_warns_when_the_weights_leave_layers_unfilled(job, capsys):
    assert main(["train", "solver.prototxt", "--iters", "2", "-q", "--no-log"]) == 0
    from minicaffe.proto import caffe_pb2
    from minicaffe.prototxt import write_caffemodel

    other = caffe_pb2.NetParameter(name="other")
    other.layer.add(name="elsewhere", type="InnerProduct")
    write_caffemodel("other.caffemodel", other, [[np.ones((1, 1), np.float32)]])
    assert main(["test", "net.prototxt", "--weights", "other.caffemodel", "--iterations", "1",
                 "-q"]) == 0
    assert "warning: other.caffemodel holds no weights for 1 layers with parameters (ip)" in (
        capsys.readouterr().err)
    open("empty.caffemodel", "wb").close()
    assert main(["test", "net.prototxt", "--weights", "empty.caffemodel", "-q"]) == 1
    assert "empty.caffemodel: not a .caffemodel: the file is empty" in capsys.readouterr().err


def test_global_flags_after_the_command(job, capsys):
    with pytest.raises(FileNotFoundError):  # --debug after the command: the traceback shows
        from minicaffe.errors import MinicaffeError

        try:
            main(["train", "nothere.prototxt", "--debug"])
        except MinicaffeError as exc:
            raise FileNotFoundError(str(exc)) from None
