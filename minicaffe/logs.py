"""Training logs in Caffe's (glog's) line format, and reading them back.

Writing: :class:`GlogFormatter` renders a ``logging`` record as glog does::

    I1122 10:00:00.123456 12345 solver.py:318] Iteration 100 (52.1 iter/s, 1.92s/100 iters), ...

(severity letter, month+day, wall time with microseconds, process id, source file:line). The
messages the solver emits are Caffe's (``Iteration N ..., loss = L``, ``Train net output #k``,
``Iteration N, lr = r``, ``Iteration N, Testing net (#i)``, ``Test net output #k``), so existing
tools such as Caffe's ``tools/extra/parse_log.py`` read minicaffe's logs unchanged.
:func:`training_log` routes minicaffe's log records to a file and to the console while a command
runs.

Reading: :func:`parse_log` returns the train and test rows (NumIters, Seconds, LearningRate and one
column per net output), :func:`write_csv` saves them, and :func:`plot_log` draws loss and accuracy
curves with matplotlib (imported only when plotting).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import logging
import os
import re
import sys

from minicaffe.errors import MinicaffeError

_LETTERS = {
    logging.DEBUG: "I",
    logging.INFO: "I",
    logging.WARNING: "W",
    logging.ERROR: "E",
    logging.CRITICAL: "F",
}


class GlogFormatter(logging.Formatter):
    """``Lmmdd hh:mm:ss.uuuuuu  pid file:line] message`` (one prefix per message line)."""

    def format(self, record: logging.LogRecord) -> str:
        when = _dt.datetime.fromtimestamp(record.created)
        letter = _LETTERS.get(record.levelno, "I")
        prefix = (
            f"{letter}{when:%m%d %H:%M:%S}.{when.microsecond:06d} {record.process:5d} "
            f"{record.filename}:{record.lineno}] "
        )
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return "\n".join(prefix + line for line in text.splitlines() or [""])


class _ConsoleFilter(logging.Filter):
    """Drops the per-iteration lines that a progress bar already shows (``bar``) and records
    meant for the log file only."""

    def __init__(self, bar: bool):
        super().__init__()
        self.bar = bar

    def filter(self, record: logging.LogRecord) -> bool:
        kind = getattr(record, "mc_kind", None)
        if kind == "file_only":
            return False
        return not (self.bar and kind == "display" and record.levelno < logging.WARNING)


class _TqdmHandler(logging.Handler):
    """Writes above a running tqdm progress bar without breaking it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # a broken console must not stop training
            self.handleError(record)


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


@contextlib.contextmanager
def training_log(path: str | None = None, *, console: str = "glog", logger: str = "minicaffe"):
    """Send minicaffe's INFO records to ``path`` (glog format, appended) and to stderr.

    ``console``: ``"glog"`` (every line, glog format, as caffe prints), ``"bar"`` (short lines
    above a progress bar, per-iteration lines left out) or ``"none"``. Records logged with
    ``extra={"mc_kind": "file_only"}`` go to the file only (errors the CLI prints itself).
    """
    log = logging.getLogger(logger)
    saved = (log.level, log.propagate)
    handlers: list[logging.Handler] = []
    if path:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fh = logging.FileHandler(path, mode="a", encoding="utf-8")
        fh.setFormatter(GlogFormatter())
        handlers.append(fh)
    if console == "glog":
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(GlogFormatter())
        sh.addFilter(_ConsoleFilter(bar=False))
        handlers.append(sh)
    elif console == "bar":
        th = _TqdmHandler()
        th.setFormatter(_PlainFormatter())
        th.addFilter(_ConsoleFilter(bar=True))
        handlers.append(th)
    for h in handlers:
        log.addHandler(h)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield log
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        log.setLevel(saved[0])
        log.propagate = saved[1]


# ---------------------------------------------------------------------------- parsing

_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf))"
_RE_ITER = re.compile(r"Iteration (\d+)")
_RE_TRAIN = re.compile(r"Train net output #(\d+): (\S+) = " + _NUM)
_RE_TEST = re.compile(r"Test net output #(\d+): (\S+) = " + _NUM)
_RE_LR = re.compile(r"Iteration (\d+), lr = " + _NUM)
_RE_STAMP = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6})\s")
_RE_TESTING = re.compile(r"Iteration (\d+), Testing net \(#(\d+)\)")


def _stamp(line: str, year: int) -> _dt.datetime | None:
    m = _RE_STAMP.match(line)
    if not m:
        return None
    month, day, hh, mm, ss, us = (int(g) for g in m.groups())
    try:
        return _dt.datetime(year, month, day, hh, mm, ss, us)
    except ValueError:
        return None


def parse_log(path: str) -> tuple[list[dict], list[dict]]:
    """(train rows, test rows) from a Caffe or minicaffe training log.

    Each row is a dict: NumIters, Seconds (since the run's ``Solving`` line, else the first
    stamped line), LearningRate (the rate of that iteration's update for train rows; the latest
    one logged for test rows; rows before any logged rate take the first one), then one entry
    per net output name. With several test nets, test rows get a ``TestNet`` column.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise MinicaffeError(f"{path}: cannot read the log ({exc.strerror})") from None
    year = _dt.datetime.fromtimestamp(os.path.getmtime(path)).year
    start = None
    train: list[dict] = []
    test: list[dict] = []
    iteration = None
    lr = float("nan")
    prev_stamp = None
    test_net = 0
    multi_test = False
    for line in lines:
        stamp = _stamp(line, year)
        if stamp is not None:
            if prev_stamp is not None and stamp < prev_stamp - _dt.timedelta(days=180):
                year += 1  # the log crossed new year
                stamp = stamp.replace(year=year)
            prev_stamp = stamp
            if start is None or "Solving" in line:  # each run appended to the log restarts
                start = stamp
        m = _RE_ITER.search(line)
        if m:
            iteration = int(m.group(1))
        if iteration is None:
            continue
        seconds = (stamp - start).total_seconds() if stamp is not None and start else 0.0
        m = _RE_TESTING.search(line)
        if m:
            test_net = int(m.group(2))
            multi_test = multi_test or test_net > 0
            continue
        m = _RE_LR.search(line)
        if m:
            lr = float(m.group(2))
            if train and train[-1]["NumIters"] == int(m.group(1)):
                train[-1]["LearningRate"] = lr
            continue
        for regex, rows, is_test in ((_RE_TRAIN, train, False), (_RE_TEST, test, True)):
            m = regex.search(line)
            if not m:
                continue
            name, value = m.group(2), float(m.group(3))
            key = (iteration, test_net) if is_test else (iteration, None)
            row = rows[-1] if rows else None
            if row is None or row["_key"] != key or name in row:
                row = {"_key": key, "NumIters": iteration, "Seconds": seconds, "LearningRate": lr}
                if is_test:
                    row["TestNet"] = test_net
                rows.append(row)
            row[name] = value
    first_lr = next(
        (r["LearningRate"] for r in train + test if r["LearningRate"] == r["LearningRate"]), None
    )
    for rows in (train, test):
        for row in rows:
            del row["_key"]
            if first_lr is not None and row["LearningRate"] != row["LearningRate"]:
                row["LearningRate"] = first_lr  # rows before the first logged rate
            if not multi_test:
                row.pop("TestNet", None)
    return train, test


def write_csv(rows: list[dict], path: str, delimiter: str = ",") -> None:
    """Rows as CSV; columns in order of first appearance, empty cells where a row lacks one."""
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, delimiter=delimiter, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def plot_log(path: str, output: str, *, x: str = "iters", log_y: bool = False) -> list[str]:
    """Draw loss (train and test) and accuracy (test) against iterations or seconds.

    ``log_y`` draws the loss on a log scale. Runs appended to one log are drawn as separate
    line pieces. Returns the names of the curves drawn. Needs matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MinicaffeError(
            "plotting needs matplotlib; install it with "
            "`pip install matplotlib` (or minicaffe[plot])"
        ) from None
    train, test = parse_log(path)
    if not train and not test:
        raise MinicaffeError(
            f"{path}: no training or test outputs found; is it a Caffe or minicaffe training log?"
        )
    xkey = "Seconds" if x == "seconds" else "NumIters"
    skip = {"NumIters", "Seconds", "LearningRate", "TestNet"}

    def series(rows, name):
        xs: list[float] = []
        ys: list[float] = []
        for r in rows:
            if name not in r:
                continue
            if xs and r[xkey] < xs[-1]:  # a new run appended to the log: break the line
                xs.append(float("nan"))
                ys.append(float("nan"))
            xs.append(r[xkey])
            ys.append(r[name])
        return xs, ys

    def names(rows):
        out: list[str] = []
        for r in rows:
            out.extend(k for k in r if k not in skip and k not in out)
        return out

    loss_curves = [("train", n) for n in names(train) if "acc" not in n.lower()]
    loss_curves += [("test", n) for n in names(test) if "acc" not in n.lower()]
    acc_curves = [("train", n) for n in names(train) if "acc" in n.lower()]
    acc_curves += [("test", n) for n in names(test) if "acc" in n.lower()]
    panels = [p for p in (("loss", loss_curves), ("accuracy", acc_curves)) if p[1]]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.5 * len(panels)), squeeze=False)
    drawn = []
    for ax, (title, curves) in zip(axes[:, 0], panels):
        for kind, name in curves:
            xs, ys = series(train if kind == "train" else test, name)
            ax.plot(
                xs, ys, marker="" if kind == "train" else "o", markersize=3, label=f"{kind} {name}"
            )
            drawn.append(f"{kind} {name}")
        ax.set_ylabel(title)
        if log_y and title == "loss":
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    axes[-1, 0].set_xlabel("seconds" if xkey == "Seconds" else "iterations")
    fig.suptitle(os.path.basename(path))
    fig.tight_layout()
    fig.savefig(output)
    plt.close(fig)
    return drawn


__all__ = ["GlogFormatter", "parse_log", "plot_log", "training_log", "write_csv"]
