"""Training logs in Caffe's (glog's) line format, and reading them back.

Writing: :class:`GlogFormatter` renders a ``logging`` record as glog does::

    I1122 10:00:00.123456 12345 solver.py:318] Iteration 100 (52.1 iter/s, 1.92s/100 iters), ...

(severity letter, month+day, wall time with microseconds, process id, source file:line). The
messages the solver emits are Caffe's (``Iteration N ..., loss = L``, ``Train net output #k``,
``Iteration N, lr = r``, ``Iteration N, Testing net (#i)``, ``Test net output #k``), so existing
tools such as Caffe's ``tools/extra/parse_log.py`` read minicaffe's logs unchanged.
:func:`training_log` routes minicaffe's log records to a file and to the console while a command
runs.

Reading: :func:`parse_log` returns the train and test rows (NumIters, Seconds, LearningRate, a
TestNet column when the solver has several test nets, and one column per net output, or per
element of an output with several), :func:`write_csv` saves them, and :func:`plot_log` draws loss
and accuracy curves with matplotlib (imported only when plotting), one per test net.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import errno
import io
import logging
import math
import os
import re
import sys
from collections import Counter

from minicaffe.errors import FileWriteError, MinicaffeError
from minicaffe.prototxt import atomic_write_bytes, atomic_write_text

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
    FileWriteError names ``path`` when the log file cannot be opened (a folder, a missing or
    read-only folder).
    """
    log = logging.getLogger(logger)
    saved = (log.level, log.propagate)
    handlers: list[logging.Handler] = []
    if path:
        if os.path.isdir(path):
            raise FileWriteError(path, "it is a folder; give a file name for the log", errno.EISDIR)
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            fh = logging.FileHandler(path, mode="a", encoding="utf-8")
        except OSError as exc:
            raise FileWriteError(
                path, f"cannot open the log file ({exc.strerror or exc})", exc.errno
            ) from None
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
# The line that opens a display block: "Iteration N (x iter/s, ...), loss = L" (older Caffe
# versions leave out the parenthesis).
_RE_DISPLAY = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, loss = ")


def _stamp(line: str, year: int) -> _dt.datetime | None:
    m = _RE_STAMP.match(line)
    if not m:
        return None
    month, day, hh, mm, ss, us = (int(g) for g in m.groups())
    try:
        return _dt.datetime(year, month, day, hh, mm, ss, us)
    except ValueError:
        return None


def _spread(rows: list[dict]) -> dict[str, list[str]]:
    """Turn each row's logged ``(name, value)`` outputs into columns.

    A name logged once per block is one column. A name logged several times in one block (an
    output blob with several elements: Caffe logs every element on its own ``#k`` line, all
    with the blob's name) gets one column per element, ``name_0``, ``name_1``, ... in the order
    the elements were logged, which for a per-class accuracy is the class index. Should such a
    column name clash with a real output name, ``name#0``, ``name#1``, ... are used instead.
    Returns ``{name: [its element columns]}`` for the names spread this way."""
    most: dict[str, int] = {}
    for row in rows:
        for name, count in Counter(name for name, _ in row["_out"]).items():
            most[name] = max(most.get(name, 0), count)
    spread: dict[str, list[str]] = {}
    for name, count in most.items():
        if count > 1:
            sep = "#" if any(f"{name}_{i}" in most for i in range(count)) else "_"
            spread[name] = [f"{name}{sep}{i}" for i in range(count)]
    for row in rows:
        seen: Counter = Counter()
        for name, value in row.pop("_out"):
            if name in spread:
                row[spread[name][seen[name]]] = value
                seen[name] += 1
            else:
                row[name] = value
    return spread


def _parse(path: str) -> tuple[list[dict], list[dict], dict[str, dict[str, list[str]]]]:
    """:func:`parse_log`, plus ``{"train": ..., "test": ...}``: the element columns of the
    outputs with several elements in each table (see :func:`_spread`)."""
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
            if test:
                test[-1]["_last"] = math.inf  # a new test: its outputs start a new row
            continue
        m = _RE_LR.search(line)
        if m:
            lr = float(m.group(2))
            if train and train[-1]["NumIters"] == int(m.group(1)):
                train[-1]["LearningRate"] = lr
            continue
        if _RE_DISPLAY.search(line):
            if train:
                train[-1]["_last"] = math.inf  # a new display: its outputs start a new row
            continue
        for regex, rows, is_test in ((_RE_TRAIN, train, False), (_RE_TEST, test, True)):
            m = regex.search(line)
            if not m:
                continue
            index, name, value = int(m.group(1)), m.group(2), float(m.group(3))
            key = (iteration, test_net) if is_test else (iteration, None)
            row = rows[-1] if rows else None
            # Caffe numbers the output lines of one block #0, #1, ... (one per element, so a
            # name repeats for a blob with several elements); a number that does not go up
            # starts the next block, even when the iteration is the same (a resumed run).
            if row is None or row["_key"] != key or index <= row["_last"]:
                row = {"NumIters": iteration, "Seconds": seconds, "LearningRate": lr}
                if is_test:
                    row["TestNet"] = test_net
                row.update(_key=key, _last=-1, _out=[])
                rows.append(row)
            row["_last"] = index
            row["_out"].append((name, value))
            break
    first_lr = next(
        (r["LearningRate"] for r in train + test if r["LearningRate"] == r["LearningRate"]), None
    )
    for rows in (train, test):
        for row in rows:
            del row["_key"], row["_last"]
            if first_lr is not None and row["LearningRate"] != row["LearningRate"]:
                row["LearningRate"] = first_lr  # rows before the first logged rate
            if not multi_test:
                row.pop("TestNet", None)
    elements = {"train": _spread(train), "test": _spread(test)}
    return train, test, elements


def parse_log(path: str) -> tuple[list[dict], list[dict]]:
    """(train rows, test rows) from a Caffe or minicaffe training log.

    One row per display (train) and per test of each test net. Each row is a dict: NumIters,
    Seconds (since the run's ``Solving`` line, else the first stamped line), LearningRate (the
    rate of that iteration's update for train rows; the latest one logged for test rows; rows
    before any logged rate take the first one), then one entry per net output name. With
    several test nets, test rows get a ``TestNet`` column (0, 1, ...). An output blob with
    several elements (Caffe logs one ``#k`` line per element, all with the blob's name, e.g.
    Accuracy's per-class second top) gets one column per element, ``name_0``, ``name_1``, ...
    in logged order (``name#0``, ... if that would clash with another output's name); Caffe's
    parse_log.py keeps only the last element.
    """
    train, test, _ = _parse(path)
    return train, test


def write_csv(rows: list[dict], path: str, delimiter: str = ",") -> None:
    """Rows as CSV; columns in order of first appearance, empty cells where a row lacks one.

    Written atomically; FileWriteError (an OSError) names ``path`` when it cannot be written.
    """
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, delimiter=delimiter, restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    atomic_write_text(path, text.getvalue())


def _plot(
    path: str, output: str, *, x: str = "iters", log_y: bool = False
) -> tuple[list[str], list[str]]:
    """:func:`plot_log`, plus the outputs left out (those with several elements)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MinicaffeError(
            "plotting needs matplotlib; install it with "
            "`pip install matplotlib` (or minicaffe[plot])"
        ) from None
    train, test, elements = _parse(path)
    if not train and not test:
        raise MinicaffeError(
            f"{path}: no training or test outputs found; is it a Caffe or minicaffe training log?"
        )
    xkey = "Seconds" if x == "seconds" else "NumIters"

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

    def names(rows, kind):
        skip = {"NumIters", "Seconds", "LearningRate", "TestNet"}
        skip.update(col for cols in elements[kind].values() for col in cols)
        out: list[str] = []
        for r in rows:
            out.extend(k for k in r if k not in skip and k not in out)
        return out

    # (label, rows, kind): train, then each test net on its own (one test net: "test").
    groups = [("train", train, "train")]
    nets = sorted({r["TestNet"] for r in test if "TestNet" in r})
    if nets:
        groups += [(f"test #{n}", [r for r in test if r["TestNet"] == n], "test") for n in nets]
    else:
        groups.append(("test", test, "test"))
    loss_curves, acc_curves = [], []
    for label, rows, kind in groups:
        for name in names(rows, kind):
            curves = acc_curves if "acc" in name.lower() else loss_curves
            curves.append((label, rows, kind, name))
    left_out = [
        f"{kind} {name} ({len(cols)} values)"
        for kind in ("train", "test")
        for name, cols in elements[kind].items()
    ]
    panels = [p for p in (("loss", loss_curves), ("accuracy", acc_curves)) if p[1]]
    if not panels:
        raise MinicaffeError(
            f"{path}: nothing to plot; the log's outputs all have several values per row "
            f"({', '.join(left_out)}); minicaffe parse-log writes them as columns"
        )
    ext = os.path.splitext(output)[1][1:].lower()
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.5 * len(panels)), squeeze=False)
    try:
        supported = fig.canvas.get_supported_filetypes()
        if ext and ext not in supported:
            raise MinicaffeError(
                f"{output}: cannot write: unknown image format '.{ext}'; "
                f"use one of {', '.join('.' + e for e in sorted(supported))}"
            )
        drawn = []
        for ax, (title, curves) in zip(axes[:, 0], panels):
            for label, rows, kind, name in curves:
                xs, ys = series(rows, name)
                marker = "" if kind == "train" else "o"
                ax.plot(xs, ys, marker=marker, markersize=3, label=f"{label} {name}")
                drawn.append(f"{label} {name}")
            ax.set_ylabel(title)
            if log_y and title == "loss":
                ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
            ax.legend()
        axes[-1, 0].set_xlabel("seconds" if xkey == "Seconds" else "iterations")
        fig.suptitle(os.path.basename(path))
        fig.tight_layout()
        image = io.BytesIO()
        fig.savefig(image, format=ext or None)
    finally:
        plt.close(fig)
    atomic_write_bytes(output, image.getvalue())
    return drawn, left_out


def plot_log(path: str, output: str, *, x: str = "iters", log_y: bool = False) -> list[str]:
    """Draw loss (train and test) and accuracy (outputs named ``*acc*``) against iterations or
    seconds into the image ``output`` (format from its extension, png without one).

    Each test net gets its own curves (``test #0 accuracy``, ``test #1 accuracy``) when the
    solver has several; with one they are ``test accuracy``. Outputs with several elements per
    row (a per-class accuracy; :func:`parse_log` gives them ``name_0``, ``name_1``, ...
    columns) are left out. ``log_y`` draws the loss on a log scale. Runs appended to one log
    are drawn as separate line pieces. Returns the names of the curves drawn. Needs
    matplotlib; FileWriteError names ``output`` when it cannot be written.
    """
    return _plot(path, output, x=x, log_y=log_y)[0]


__all__ = ["GlogFormatter", "parse_log", "plot_log", "training_log", "write_csv"]
