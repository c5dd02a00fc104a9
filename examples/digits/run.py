"""Train LeNet on scikit-learn's handwritten digits: the README's first example.

    python examples/digits/run.py [--iters N] [--gpu N] [--force-prepare]

1. Prepares the data on first run (examples/digits/data; see prepare.py): no download.
2. Trains with ``minicaffe train --solver examples/digits/lenet_solver.prototxt`` (Caffe's
   lenet_solver settings, 500 iterations), run from the repository root like Caffe's examples,
   so this script works from any directory.
3. Scores the final snapshot on the 360 test digits and prints the accuracy and the time taken
   by each phase.

Extra arguments after ``--`` go to ``minicaffe train`` (e.g. ``-- --no-log``).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import prepare as prep  # noqa: E402  (the example's own module, next to this file)

SOLVER = "examples/digits/lenet_solver.prototxt"
NET = "examples/digits/lenet_train_test.prototxt"
SNAPSHOT_PREFIX = "examples/digits/snapshots/lenet"


def score(weights: str, data_dir: Path) -> tuple[int, int]:
    """(correct, total) of the TEST net with ``weights`` over every test digit."""
    import h5py
    import numpy as np

    import minicaffe

    with h5py.File(data_dir / "test.h5", "r") as f:
        data, label = f["data"][...], f["label"][...].astype(int)
    net = minicaffe.Net(str(HERE / "lenet.prototxt"), weights=weights, phase="TEST")
    prob = net.forward(data=data)["prob"]
    return int((np.asarray(prob).argmax(axis=1) == label).sum()), len(label)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Train LeNet on scikit-learn's digits.")
    parser.add_argument(
        "--iters", type=int, default=None, help="max_iter (default: the solver's 500)"
    )
    parser.add_argument("--gpu", default=None, help="train on this GPU")
    parser.add_argument("--force-prepare", action="store_true", help="rebuild the data")
    parser.add_argument("train_args", nargs="*", help="more minicaffe train arguments (after --)")
    args = parser.parse_args(argv)

    from minicaffe.cli import main as minicaffe_main

    os.chdir(ROOT)  # the prototxts name their files relative to the repository root
    info = prep.prepare(prep.DEFAULT_DATA_DIR, force=args.force_prepare)
    if info["prepared"]:
        print(
            f"[digits] data: prepared {info['train']} training and {info['test']} test "
            f"digits in {info['seconds']:.2f} s",
            flush=True,
        )
    else:
        print(
            f"[digits] data: already prepared in {info['dir']} ({info['seconds']:.3f} s)",
            flush=True,
        )

    os.makedirs(os.path.dirname(SNAPSHOT_PREFIX), exist_ok=True)
    for old in glob.glob(f"{SNAPSHOT_PREFIX}_iter_*"):
        os.remove(old)  # a fresh run; the final snapshot below is this run's
    train_argv = ["train", "--solver", SOLVER]
    if args.iters is not None:
        train_argv += ["--iters", str(args.iters)]
    if args.gpu is not None:
        train_argv += ["--gpu", str(args.gpu)]
    train_argv += args.train_args
    print(f"[digits] minicaffe {' '.join(train_argv)}", flush=True)
    start = time.perf_counter()
    rc = minicaffe_main(train_argv)
    seconds = time.perf_counter() - start
    if rc != 0:
        print(f"[digits] training failed (exit code {rc})", file=sys.stderr)
        return rc
    snapshots = sorted(glob.glob(f"{SNAPSHOT_PREFIX}_iter_*.caffemodel"), key=os.path.getmtime)
    if not snapshots:
        print("[digits] no snapshot was written", file=sys.stderr)
        return 1
    correct, total = score(snapshots[-1], prep.DEFAULT_DATA_DIR)
    iters = snapshots[-1].rsplit("_iter_", 1)[1].split(".")[0]
    print(
        f"[digits] training: {iters} iterations in {seconds:.2f} s "
        f"({seconds / max(int(iters), 1) * 1000:.1f} ms per iteration, test passes included)"
    )
    print(
        f"[digits] test accuracy of {snapshots[-1]}: {100 * correct / total:.2f}% "
        f"({correct}/{total})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
