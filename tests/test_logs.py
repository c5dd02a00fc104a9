"""Log lines in glog's format, and parsing Caffe-style training logs back into tables."""

from __future__ import annotations

import csv
import logging
import re

import pytest

from minicaffe.cli import main
from minicaffe.errors import FileWriteError, MinicaffeError
from minicaffe.logs import GlogFormatter, parse_log, plot_log, training_log, write_csv

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


# Two test nets, tested at iterations 0 and 100 (the lines Caffe's Solver::TestAll writes).
TWO_NETS_LOG = """\
I1113 06:24:16.900000 10024 solver.cpp:56] Solving smallcnn
I1113 06:24:16.944530 10024 solver.cpp:337] Iteration 0, Testing net (#0)
I1113 06:24:17.226889 10024 solver.cpp:404]     Test net output #0: acc = 0.0998598
I1113 06:24:17.226944 10024 solver.cpp:404]     Test net output #1: loss = 37.3059 (* 1 = 37.3 loss)
I1113 06:24:17.226953 10024 solver.cpp:337] Iteration 0, Testing net (#1)
I1113 06:24:17.507992 10024 solver.cpp:404]     Test net output #0: acc = 0.102865
I1113 06:24:17.508049 10024 solver.cpp:404]     Test net output #1: loss = 37.3927 (* 1 = 37.4 loss)
I1113 06:24:17.516819 10024 solver.cpp:228] Iteration 0, loss = 41.6012
I1113 06:24:17.516849 10024 solver.cpp:244]     Train net output #0: loss = 41.6 (* 1 = 41.6 loss)
I1113 06:24:17.516863 10024 sgd_solver.cpp:106] Iteration 0, lr = 0.166618
I1113 06:24:20.000000 10024 solver.cpp:337] Iteration 100, Testing net (#0)
I1113 06:24:20.200000 10024 solver.cpp:404]     Test net output #0: acc = 0.5
I1113 06:24:20.200001 10024 solver.cpp:404]     Test net output #1: loss = 1.5 (* 1 = 1.5 loss)
I1113 06:24:20.300000 10024 solver.cpp:337] Iteration 100, Testing net (#1)
I1113 06:24:20.500000 10024 solver.cpp:404]     Test net output #0: acc = 0.4
I1113 06:24:20.500001 10024 solver.cpp:404]     Test net output #1: loss = 1.7 (* 1 = 1.7 loss)
"""

# Accuracy with a second top (per-class accuracy of 3 classes) in the test net and a train
# output with 2 elements: Caffe logs every element on its own #k line under the blob's name.
ELEMENTS_LOG = """\
I0301 09:59:59.500000  4242 solver.cpp:2] Solving LeNet
I0301 10:00:00.000000  4242 solver.cpp:4] Iteration 0, Testing net (#0)
I0301 10:00:00.250000  4242 solver.cpp:5]     Test net output #0: accuracy = 0.1
I0301 10:00:00.250001  4242 solver.cpp:5]     Test net output #1: loss = 2.3 (* 1 = 2.3 loss)
I0301 10:00:00.250002  4242 solver.cpp:5]     Test net output #2: per_class = 0.5
I0301 10:00:00.250003  4242 solver.cpp:5]     Test net output #3: per_class = 0
I0301 10:00:00.250004  4242 solver.cpp:5]     Test net output #4: per_class = 0.25
I0301 10:00:00.400000  4242 solver.cpp:6] Iteration 0 (0 iter/s, 0.4s/100 iters), loss = 2.31
I0301 10:00:00.400001  4242 solver.cpp:7]     Train net output #0: loss = 2.31 (* 1 = 2.31 loss)
I0301 10:00:00.400002  4242 solver.cpp:7]     Train net output #1: aux = 1
I0301 10:00:00.400003  4242 solver.cpp:7]     Train net output #2: aux = 2
I0301 10:00:00.400004  4242 sgd_solver.cpp:8] Iteration 0, lr = 0.01
I0301 10:00:02.000000  4242 solver.cpp:4] Iteration 200, Testing net (#0)
I0301 10:00:02.500000  4242 solver.cpp:5]     Test net output #0: accuracy = 0.9
I0301 10:00:02.500001  4242 solver.cpp:5]     Test net output #1: loss = 0.35 (* 1 = 0.35 loss)
I0301 10:00:02.500002  4242 solver.cpp:5]     Test net output #2: per_class = 1
I0301 10:00:02.500003  4242 solver.cpp:5]     Test net output #3: per_class = 0.75
I0301 10:00:02.500004  4242 solver.cpp:5]     Test net output #4: per_class = 0.875
"""


def test_outputs_with_several_elements_get_a_column_each(tmp_path):
    path = tmp_path / "el.log"
    path.write_text(ELEMENTS_LOG)
    train, test = parse_log(str(path))
    assert len(test) == 2  # one row per test, not one per repeated name
    assert {k: v for k, v in test[0].items() if k.startswith("per_class")} == {
        "per_class_0": 0.5,
        "per_class_1": 0.0,
        "per_class_2": 0.25,
    }
    assert test[1]["accuracy"] == 0.9 and test[1]["per_class_2"] == 0.875
    assert train == [
        {
            "NumIters": 0,
            "Seconds": pytest.approx(0.900001),
            "LearningRate": 0.01,
            "loss": 2.31,
            "aux_0": 1.0,
            "aux_1": 2.0,
        }
    ]
    # A real output already called per_class_1: the element columns use '#' instead.
    path.write_text(ELEMENTS_LOG.replace("#0: accuracy", "#0: per_class_1"))
    _, test = parse_log(str(path))
    assert len(test) == 2 and test[0]["per_class_1"] == 0.1
    assert [test[0][f"per_class#{i}"] for i in range(3)] == [0.5, 0.0, 0.25]


def test_repeated_block_at_the_same_iteration_is_a_new_row(tmp_path):
    # A run resumed at iteration 200 tests at 200 again: two rows, even without a
    # "Testing net" line between the blocks (the #k numbering starts again).
    block = ELEMENTS_LOG[ELEMENTS_LOG.index("I0301 10:00:02.500000") :]
    path = tmp_path / "again.log"
    path.write_text(ELEMENTS_LOG + block)
    _, test = parse_log(str(path))
    assert [(r["NumIters"], r["accuracy"]) for r in test] == [(0, 0.1), (200, 0.9), (200, 0.9)]


def test_parse_log_command_writes_element_columns(tmp_path, capsys):
    path = tmp_path / "el.log"
    path.write_text(ELEMENTS_LOG)
    assert main(["parse-log", str(path), str(tmp_path / "csv")]) == 0
    with open(tmp_path / "csv" / "el.log.test") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and list(rows[0])[-3:] == ["per_class_0", "per_class_1", "per_class_2"]


def test_parse_log_command_names_a_bad_output_folder(tmp_path, capsys):
    path = tmp_path / "caffe.log"
    path.write_text(CAFFE_LOG)
    blocker = tmp_path / "afile"
    blocker.write_text("")
    assert main(["parse-log", str(path), str(blocker)]) == 1
    err = capsys.readouterr().err
    assert f"{blocker}: cannot write: the output folder is a file" in err
    assert main(["parse-log", str(path), "-o", str(blocker / "sub")]) == 1
    err = capsys.readouterr().err
    assert f"{blocker / 'sub'}: cannot write: the output folder cannot be made" in err
    assert "[Errno" not in err


def test_write_csv_names_the_file(tmp_path):
    with pytest.raises(FileWriteError, match="missing/t.csv: cannot write"):
        write_csv([{"NumIters": 0}], str(tmp_path / "missing" / "t.csv"))


def test_training_log_names_a_bad_log_path(tmp_path):
    with pytest.raises(FileWriteError, match="is a folder"), training_log(str(tmp_path)):
        pass
    blocker = tmp_path / "afile"
    blocker.write_text("")
    with pytest.raises(FileWriteError, match="afile/run.log: cannot write: cannot open the log"):
        with training_log(str(blocker / "run.log"), console="none"):
            pass


def test_plot_draws_one_curve_per_test_net(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "two.log"
    path.write_text(TWO_NETS_LOG)
    drawn = plot_log(str(path), str(tmp_path / "two.png"))
    assert drawn == ["train loss", "test #0 loss", "test #1 loss", "test #0 acc", "test #1 acc"]
    assert (tmp_path / "two.png").read_bytes()[:4] == b"\x89PNG"
    single = tmp_path / "one.log"
    single.write_text(CAFFE_LOG)
    assert plot_log(str(single), str(tmp_path / "one.png")) == [
        "train loss",
        "test loss",
        "test accuracy",
    ]


def test_plot_leaves_out_outputs_with_several_elements(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "el.log"
    path.write_text(ELEMENTS_LOG)
    assert main(["plot", str(path), "-o", str(tmp_path / "el.png")]) == 0
    out = capsys.readouterr().out
    assert "el.png: train loss, test loss, test accuracy (left out" in out
    assert "train aux (2 values)" in out and "test per_class (3 values)" in out


def test_plot_names_a_bad_output(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "caffe.log"
    path.write_text(CAFFE_LOG)
    with pytest.raises(FileWriteError, match="missing/c.png: cannot write"):
        plot_log(str(path), str(tmp_path / "missing" / "c.png"))
    with pytest.raises(MinicaffeError, match=r"c\.xyz: cannot write: unknown image format"):
        plot_log(str(path), str(tmp_path / "c.xyz"))
    assert not (tmp_path / "c.xyz").exists()
