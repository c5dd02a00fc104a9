"""Log lines in glog's format, and parsing Caffe-style training logs back into tables."""

from __future__ import annotations

import csv
import logging
import re

import pytest

from minicaffe.errors import MinicaffeError
from minicaffe.logs import GlogFormatter, parse_log, training_log, write_csv

GLOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] ")

# A log in the shape Caffe writes (timestamps are what parsers read; values are made up).
CAFFE_LOG = """\
I0301 09:59:58.000001  4242 caffe.cpp:1] Using GPUs 0
I0301 09:59:59.500000  4242 solver.cpp:2] Solving LeNet
I0301 09:59:59.500100  4242 solver.cpp:3] Learning Rate Policy: inv
I0301 10:00:00.000000  4242 solver.cpp:4] Iteration 0, Testing net (#0)
I0301 10:00:00.250000  4242 solver.cpp:5]     Test net output #0: accuracy = 0.1
I0301 10:00:00.250001  4242 solver.cpp:5]     Test net output #1: loss = 2.3 (* 1 = 2.3 loss)
I0301 10:00:00.400000  4242 solver.cpp:6] Iteration 0 (0 iter/s, 0.4s/100 iters), loss = 2.31
I0301 10:00:00.400001  4242 solver.cpp:7]     Train net output #0: loss = 2.31 (* 1 = 2.31 loss)
I0301 10:00:00.400002  4242 sgd_solver.cpp:8] Iteration 0, lr = 0.01
this line has no stamp and is skipped
I0301 10:00:01.400000  4242 solver.cpp:6] Iteration 100 (100 iter/s, 1s/100 iters), loss = 0.5
I0301 10:00:01.400001  4242 solver.cpp:7]     Train net output #0: loss = 0.45 (* 1 = 0.45 loss)
I0301 10:00:01.400002  4242 sgd_solver.cpp:8] Iteration 100, lr = 0.00992565
I0301 10:00:02.000000  4242 solver.cpp:4] Iteration 200, Testing net (#0)
I0301 10:00:02.500000  4242 solver.cpp:5]     Test net output #0: accuracy = 0.9
I0301 10:00:02.500001  4242 solver.cpp:5]     Test net output #1: loss = 3.5e-01 (* 1 = 0.35 loss)
"""


def test_glog_formatter():
    fmt = GlogFormatter()
    rec = logging.LogRecord(
        "minicaffe.solver",
        logging.INFO,
        "/x/solver.py",
        218,
        "Iteration %d, lr = %s",
        (100, "0.01"),
        None,
    )
    line = fmt.format(rec)
    assert GLOG.match(line) and line.endswith("solver.py:218] Iteration 100, lr = 0.01")
    warn = logging.LogRecord("m", logging.WARNING, "/x/a.py", 3, "two\nlines", (), None)
    lines = fmt.format(warn).splitlines()
    assert len(lines) == 2 and all(GLOG.match(ln) and ln.startswith("W") for ln in lines)


def test_parse_caffe_log(tmp_path):
    path = tmp_path / "caffe.log"
    path.write_text(CAFFE_LOG)
    train, test = parse_log(str(path))
    assert train == [
        {"NumIters": 0, "Seconds": pytest.approx(0.900001), "LearningRate": 0.01, "loss": 2.31},
        {
            "NumIters": 100,
            "Seconds": pytest.approx(1.900001),
            "LearningRate": 0.00992565,
            "loss": 0.45,
        },
    ]
    assert [(r["NumIters"], r["accuracy"], r["loss"]) for r in test] == [
        (0, 0.1, 2.3),
        (200, 0.9, 0.35),
    ]
    assert test[0]["Seconds"] == pytest.approx(0.75)
    assert test[0]["LearningRate"] == 0.01  # before any logged rate: the first one
    assert test[1]["LearningRate"] == 0.00992565


def test_several_test_nets_and_appended_runs(tmp_path):
    extra = (
        CAFFE_LOG.replace("Testing net (#0)", "Testing net (#1)")
        .replace("Solving LeNet", "Solving LeNet again")
        .replace("I0301 10:", "I0301 11:")
        .replace("I0301 09:", "I0301 10:")
    )
    path = tmp_path / "two.log"
    path.write_text(CAFFE_LOG + extra)
    train, test = parse_log(str(path))
    assert [r["TestNet"] for r in test] == [0, 0, 1, 1]
    assert len(train) == 4 and train[2]["Seconds"] == pytest.approx(0.900001)  # second run restarts


def test_write_csv_columns(tmp_path):
    out = tmp_path / "t.csv"
    write_csv([{"NumIters": 0, "a": 1.5}, {"NumIters": 1, "b": 2.0}], str(out))
    with open(out) as fh:
        rows = list(csv.reader(fh))
    assert rows == [["NumIters", "a", "b"], ["0", "1.5", ""], ["1", "", "2.0"]]


def test_missing_log(tmp_path):
    with pytest.raises(MinicaffeError, match="cannot read the log"):
        parse_log(str(tmp_path / "none.log"))


def test_training_log_routes_and_restores(tmp_path, capsys):
    logger = logging.getLogger("minicaffe")
    before = (logger.level, logger.propagate, list(logger.handlers))
    path = tmp_path / "sub" / "run.log"
    with training_log(str(path), console="glog") as log:
        log.info("visible %d", 1)
        log.info("iteration line", extra={"mc_kind": "display"})
        log.error("file only", extra={"mc_kind": "file_only"})
    err = capsys.readouterr().err
    assert "visible 1" in err and "iteration line" in err and "file only" not in err
    text = path.read_text()
    assert all(GLOG.match(ln) for ln in text.splitlines()) and "file only" in text
    assert (logger.level, logger.propagate, list(logger.handlers)) == before
    with training_log(None, console="none") as log:
        log.info("silent")
    assert capsys.readouterr().err == ""
