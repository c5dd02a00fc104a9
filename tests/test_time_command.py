"""``minicaffe time``: per-layer timing table on a tiny net."""

from __future__ import annotations

import re

import pytest

from minicaffe import backend
from minicaffe.cli import main

NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 1 dim: 8 dim: 8 } shape { dim: 2 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


@pytest.fixture
def net_file(tmp_path):
    path = tmp_path / "tiny.prototxt"
    path.write_text(NET)
    return str(path)


def _rows(out: str) -> dict[str, tuple[str, float, float]]:
    rows = {}
    for line in out.splitlines():
        m = re.match(r"^(\w+)\s+(\w+)\s+([\d.]+)\s+([\d.]+)$", line)
        if m:
            rows[m.group(1)] = (m.group(2), float(m.group(3)), float(m.group(4)))
    return rows


def test_time_table(net_file, capsys):
    assert main(["time", net_file, "--iterations", "3"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert list(rows) == ["data", "conv", "pool", "ip", "loss"]
    assert rows["conv"][0] == "Convolution" and rows["conv"][1] > 0 and rows["conv"][2] > 0
    assert "over 3 iterations (phase TRAIN, CPU)" in out
    totals = {
        k: float(v)
        for k, v in re.findall(
            r"Average (Forward pass|Backward pass|Forward-Backward): "
            r"([\d.]+) ms",
            out,
        )
    }
    assert set(totals) == {"Forward pass", "Backward pass", "Forward-Backward"}
    assert totals["Forward pass"] == pytest.approx(
        sum(r[1] for r in rows.values()), rel=1e-3, abs=1e-3
    )
    assert totals["Forward-Backward"] >= totals["Forward pass"]
    assert re.search(r"Total Time: [\d.]+ ms", out)


def test_time_caffe_flags_and_test_phase(net_file, capsys):
    assert main(["time", "-model", net_file, "-iterations", "1", "-phase", "TEST"]) == 0
    out = capsys.readouterr().out
    assert "phase TEST" in out and "conv" in _rows(out)


def test_time_usage_errors(net_file, capsys):
    assert main(["time", net_file, "--iterations", "0"]) == 2
    assert "--iterations" in capsys.readouterr().err
    assert main(["time"]) == 2


@pytest.mark.skipif(backend.gpu_available(), reason="checks the no-GPU message")
def test_time_gpu_without_gpu(net_file, capsys):
    assert main(["time", net_file, "--gpu", "0", "--iterations", "1"]) == 1
    assert "no usable GPU" in capsys.readouterr().err


def test_time_missing_file(tmp_path, capsys):
    assert main(["time", str(tmp_path / "nope.prototxt")]) == 1
    assert "nope.prototxt" in capsys.readouterr().err
