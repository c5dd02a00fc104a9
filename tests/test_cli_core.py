"""The command-line front end: dispatch, summary, upgrade, error lines and exit codes."""

from __future__ import annotations

import subprocess
import sys

from minicaffe.cli import main
from minicaffe.proto import caffe_pb2
from minicaffe.prototxt import read_net_param
from tests.golden import GOLDENS

CORPUS = __import__("pathlib").Path(__file__).parent / "data" / "corpus"


def test_summary_prints_layers_and_totals(capsys):
    assert main(["summary", str(GOLDENS / "ip_basic.prototxt")]) == 0
    out = capsys.readouterr().out
    assert "InnerProduct" in out and "data -> out" in out and "4x5" in out
    assert "parameters: 65" in out


def test_upgrade_v0_writes_current_format(tmp_path, capsys):
    old = CORPUS / "BVLC__caffe@91254090" / "data" / "lenet.prototxt"
    out = tmp_path / "new.prototxt"
    assert main(["upgrade", str(old), "-o", str(out)]) == 0
    net = read_net_param(str(out), upgrade=False)
    assert len(net.layers) == 0 and len(net.layer) > 0
    assert {layer.type for layer in net.layer} >= {"Convolution", "Pooling", "InnerProduct"}
    assert "upgrade:" in capsys.readouterr().err


def test_upgrade_old_solver(tmp_path):
    src = tmp_path / "s.prototxt"
    src.write_text('net: "n.prototxt" base_lr: 0.1 solver_type: NESTEROV\n')
    out = tmp_path / "o.prototxt"
    assert main(["upgrade", str(src), "-o", str(out)]) == 0
    sp = caffe_pb2.SolverParameter()
    __import__("google.protobuf.text_format").protobuf.text_format.Merge(out.read_text(), sp)
    assert sp.type == "Nesterov"


def test_errors_are_one_line_with_exit_code_1(tmp_path, capsys):
    bad = tmp_path / "bad.prototxt"
    bad.write_text("layer { name: 'a' type: 'Nope' }\n")
    assert main(["summary", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown layer type 'Nope'" in err


def test_usage_errors_exit_2():
    proc = subprocess.run(
        [sys.executable, "-m", "minicaffe", "summary"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "usage" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "minicaffe", "no-such-command"], capture_output=True, text=True
    )
    assert proc.returncode == 2


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("minicaffe ")


def test_upgrade_of_a_binary_v1_caffemodel_is_binary(tmp_path, capsys):
    import numpy as np

    from minicaffe.prototxt import read_caffemodel

    old = caffe_pb2.NetParameter(name="v1")
    layer = old.layers.add(name="ip", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    blob = layer.blobs.add(num=1, channels=1, height=2, width=3)
    blob.data.extend([1, 2, 3, 4, 5, 6])
    src = tmp_path / "v1.caffemodel"
    src.write_bytes(old.SerializeToString())
    assert main(["upgrade", str(src)]) == 2  # binary to a terminal: no
    assert "give -o NEW.caffemodel" in capsys.readouterr().err
    out = tmp_path / "new.caffemodel"
    assert main(["upgrade", str(src), "-o", str(out)]) == 0
    model = read_caffemodel(out)
    assert [l.name for l in model.net.layer] == ["ip"] and not len(model.net.layers)
    np.testing.assert_array_equal(model.arrays_by_layer()["ip"][0].ravel(), np.arange(1, 7))
    text = tmp_path / "new.prototxt"
    assert main(["upgrade", str(src), "--text", "-o", str(text)]) == 0
    assert 'name: "ip"' in text.read_text()
    # the same weights under another name: recognised by their content
    renamed = tmp_path / "v1_weights.bin"
    renamed.write_bytes(src.read_bytes())
    out2 = tmp_path / "new2.caffemodel"
    assert main(["upgrade", str(renamed), "-o", str(out2)]) == 0
    assert out2.read_bytes() == out.read_bytes()


def test_layer_errors_from_blobs_name_the_layer(tmp_path, capsys):
    bad = tmp_path / "axis.prototxt"
    bad.write_text("layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 2 "
                   "dim: 3 } } }\nlayer { name: 'sm' type: 'Softmax' bottom: 'x' top: 'y' "
                   "softmax_param { axis: 4 } }\n")
    assert main(["summary", str(bad)]) == 1
    assert "layer 'sm' (Softmax): axis 4 is out of range" in capsys.readouterr().err


def test_solver_type_case_hint(tmp_path, capsys):
    (tmp_path / "s.prototxt").write_text("net: 'n.prototxt' type: 'adam' base_lr: 0.1")
    from minicaffe.errors import SolverError
    from minicaffe.solver import get_solver

    try:
        get_solver(str(tmp_path / "s.prototxt"))
    except SolverError as exc:
        assert "did you mean 'Adam'?" in str(exc) and "s.prototxt" in str(exc)
    else:
        raise AssertionError("no error")


def test_an_input_too_large_for_memory_is_one_error_line(tmp_path, capsys):
    net = tmp_path / "huge.prototxt"
    net.write_text("layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 1048576 "
                   "dim: 1048576 dim: 1024 } } }\nlayer { name: 'r' type: 'ReLU' bottom: 'x' "
                   "top: 'y' }\n")
    assert main(["time", str(net), "--iterations", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "blob 'x' of shape (1048576, 1048576, 1024) needs" in err


def test_unknown_flags_get_the_commands_usage_and_the_closest_flag(capsys):
    import pytest

    with pytest.raises(SystemExit) as info:
        main(["train", "--solverr", "s.prototxt"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: minicaffe train")
    assert err.rstrip().endswith(
        "minicaffe train: error: unrecognized arguments: --solverr (did you mean --solver?)")
    with pytest.raises(SystemExit):
        main(["test", "--model", "m", "--weigths", "w", "--bogus"])
    err = capsys.readouterr().err.rstrip().splitlines()[-1]
    assert err == ("minicaffe test: error: unrecognized arguments: --weigths --bogus "
                   "(--weigths: did you mean --weights?)")
    with pytest.raises(SystemExit):
        main(["--bogus"])
    assert capsys.readouterr().err.rstrip().endswith("unrecognized arguments: --bogus")
