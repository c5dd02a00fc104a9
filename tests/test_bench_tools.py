"""tools/bench_nets.py keeps working (the numbers themselves are for the benchmark runs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_nets_lenet_without_torch():
    bench = _load("bench_nets")
    res = bench.run_bench("lenet", steps=4, warmup=1, use_torch=False, threads=2, rounds=2)
    assert res["ms"] > 0 and res["min_ms"] <= res["ms"] and "ratio" not in res
    text = bench.report(res)
    assert "LeNet train step" in text and "page faults" in text


def test_bench_report_with_paired_rounds():
    bench = _load("bench_nets")
    res = {"name": "lenet", "title": "LeNet", "ms": 20.0, "min_ms": 18.0, "faults": 0.0,
           "caffe_ms": 25.5, "torch_ms": 25.0, "torch_min_ms": 20.0, "paired": [0.9, 0.7, 0.8],
           "ratio": 0.8}
    text = bench.report(res)
    assert "median 0.80x, range 0.70-0.90x over 3 rounds" in text
    assert "ratio of minima 0.90x" in text and "0.80x (ratio of medians" in text
    # Caffe's anchor (25.5 ms) scaled by torch here (25 ms) over torch there (13.75 ms)
    assert "~46.4 ms, 2.32x faster" in text
