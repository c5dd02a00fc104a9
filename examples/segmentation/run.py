"""Segment generated shapes with a small FCN, with and without class weights, and compare.

    python examples/segmentation/run.py [--iters N]

1. Generates the dataset on first run (shapes.py; no download).
2. Trains the same net twice with ``minicaffe train``: solver.prototxt (ignore_label only) and
   solver_weighted.prototxt (ignore_label + loss_param.class_weight).
3. Prints, for each, the per-class pixel accuracy (recall) and intersection-over-union on the
   test images, border pixels (label 255) excluded.

Background is ~86 % of the pixels and triangles ~0.5 %: without weights the net can score a high
overall pixel accuracy while missing much of the rare classes; the weighted loss trades a little
background accuracy for much better recall of the rare classes.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import shapes  # noqa: E402  (the example's own module, next to this file)

RUNS = (
    ("unweighted", "solver", "fcn_train_test"),
    ("weighted", "solver_weighted", "fcn_train_test_weighted"),
)


def confusion(net_file: str, weights: str, batches: int) -> np.ndarray:
    """4 x 4 confusion matrix (rows: true class, columns: predicted) over the TEST net."""
    import minicaffe

    net = minicaffe.Net(net_file, weights=weights, phase="TEST")
    n = len(shapes.CLASSES)
    conf = np.zeros((n, n), dtype=np.int64)
    for _ in range(batches):
        net.forward()
        pred = np.asarray(net.blobs["upscore"].data).argmax(axis=1).ravel()
        label = np.asarray(net.blobs["label"].data).astype(np.int64).ravel()
        keep = label != shapes.IGNORE
        conf += np.bincount(label[keep] * n + pred[keep], minlength=n * n).reshape(n, n)
    return conf


def report(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tp = np.diag(conf).astype(float)
    recall = tp / np.maximum(conf.sum(axis=1), 1)
    iou = tp / np.maximum(conf.sum(axis=1) + conf.sum(axis=0) - tp, 1)
    return recall, iou


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="FCN on generated shapes, class weights or not")
    parser.add_argument("--iters", type=int, default=None, help="max_iter (default 300)")
    args = parser.parse_args(argv)
    from minicaffe.cli import main as minicaffe_main

    os.chdir(ROOT)  # the prototxts name their files relative to the repository root
    info = shapes.prepare()
    print(f"[segmentation] data: {'generated' if info['prepared'] else 'found'} in {info['dir']}")
    import h5py

    with h5py.File(shapes.DEFAULT_DATA_DIR / "train.h5", "r") as f:
        freq = shapes.class_frequencies(f["label"][...])
    weights = shapes.median_frequency_weights(freq)
    print(
        "[segmentation] training pixels per class: "
        + ", ".join(f"{c} {100 * q:.1f}%" for c, q in zip(shapes.CLASSES, freq))
    )
    print(
        "[segmentation] median-frequency class weights (in the weighted net): "
        + ", ".join(f"{c} {w:.3f}" for c, w in zip(shapes.CLASSES, weights))
    )
    os.makedirs(HERE / "snapshots", exist_ok=True)
    results = {}
    for name, solver, net in RUNS:
        prefix = f"examples/segmentation/snapshots/{net}"
        for old in glob.glob(f"{prefix}_iter_*"):
            os.remove(old)
        train = ["train", "--solver", f"examples/segmentation/{solver}.prototxt", "--no-log"]
        if args.iters is not None:
            train += ["--iters", str(args.iters)]
        start = time.perf_counter()
        rc = minicaffe_main(train)
        if rc != 0:
            print(f"[segmentation] training ({name}) failed with exit code {rc}", file=sys.stderr)
            return rc
        print(f"[segmentation] trained {name} in {time.perf_counter() - start:.1f} s")
        snap = max(glob.glob(f"{prefix}_iter_*.caffemodel"), key=os.path.getmtime)
        results[name] = report(confusion(f"examples/segmentation/{net}.prototxt", snap, 4))
    print()
    print(f"{'class':<12}" + "".join(f"{n + ' acc':>16}{n + ' IoU':>16}" for n, _, _ in RUNS))
    rows = [(cls, c) for c, cls in enumerate(shapes.CLASSES)] + [("mean", None)]
    for label, c in rows:
        cells = []
        for name, _, _ in RUNS:
            recall, iou = results[name]
            a, b = (recall.mean(), iou.mean()) if c is None else (recall[c], iou[c])
            cells.append(f"{100 * a:>15.1f}%{100 * b:>15.1f}%")
        print(f"{label:<12}" + "".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
