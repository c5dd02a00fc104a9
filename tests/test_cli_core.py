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
