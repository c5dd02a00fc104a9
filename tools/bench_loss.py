"""Benchmark SoftmaxWithLoss forward+backward against PyTorch and the memory-bandwidth floor.

    python tools/bench_loss.py [--repeat 50] [--threads 2] [--dtype float32] [--gpu]

For each shape, with and without 10% of the labels set to ignore_label 255, it prints the
median time of a minicaffe forward+backward, the same for torch.nn.functional.cross_entropy
(forward + backward, torch.set_num_threads(threads)) when torch imports, and the floor: the
logits read once plus the gradient written once, at the copy bandwidth measured in this run.
Runs of the two libraries alternate in blocks so that load from other processes hits both alike;
compare the ratios, not absolute times across runs ("best x" is the ratio of the fastest runs,
the steadier figure on a loaded machine). ``--gpu`` (or a visible CUDA device) runs
the CuPy engine, the fused kernel, on (8,21,512,512) and (65536,1000) as well.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = [(256, 1000), (4096, 1000), (8, 21, 128, 128)]
GPU_SHAPES = [(8, 21, 512, 512), (65536, 1000)]


def build_layer(shape, ignore: bool, xp, dtype):
    from google.protobuf import text_format

    from minicaffe.backend import CPU_DEVICE, Device
    from minicaffe.blob import Blob
    from minicaffe.proto import caffe_pb2
    from minicaffe.registry import create_layer

    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    lshape = (shape[0],) + tuple(shape[2:])
    y = rng.integers(0, shape[1], lshape).astype(dtype)
    if ignore:
        y[rng.random(lshape) < 0.1] = 255
    lp = caffe_pb2.LayerParameter()
    text = 'name: "loss" type: "SoftmaxWithLoss"'
    if ignore:
        text += " loss_param { ignore_label: 255 }"
    text_format.Merge(text, lp)
    device = CPU_DEVICE if xp is np else Device("gpu", 0)
    bottom = [Blob(*shape, xp=xp, dtype=dtype), Blob(*lshape, xp=xp, dtype=dtype)]
    bottom[0].data[...] = xp.asarray(x)
    bottom[1].data[...] = xp.asarray(y)
    top = [Blob(xp=xp, dtype=dtype)]
    layer = create_layer(lp, phase=caffe_pb2.TRAIN, device=device, dtype=dtype)
    layer.set_up(bottom, top)

    def step():
        layer.forward(bottom, top)
        layer.backward(top, [True, False], bottom)

    return step, x, y


def torch_step(x, y, ignore: bool, device: str = "cpu"):
    import torch

    xt = torch.from_numpy(x).to(device).requires_grad_()
    yt = torch.from_numpy(y.astype(np.int64)).to(device)
    kw = {"ignore_index": 255} if ignore else {}

    def step():
        xt.grad = None
        torch.nn.functional.cross_entropy(xt, yt, **kw).backward()

    return step


def copy_bandwidth(nbytes: int, xp, sync, repeat: int) -> float:
    """Bytes per second of a copy (read + write counted) of an array of ``nbytes``."""
    n = max(1, nbytes // 4)
    src = xp.ones(n, dtype=np.float32)
    dst = xp.empty_like(src)
    times = []
    for _ in range(max(5, repeat)):
        t0 = time.perf_counter()
        xp.copyto(dst, src)
        sync()
        times.append(time.perf_counter() - t0)
    return 2 * src.nbytes / statistics.median(times)


def interleaved(steps: dict, repeat: int, sync, rounds: int = 5) -> dict:
    """(median, best) ms of each step: blocks of repeat/rounds runs per library, alternating,
    with a pause before each block so that idle worker threads of the other library (OpenMP
    spin-waits) are parked and do not steal the two cores."""
    for f in steps.values():  # warm up (buffers, kernels, thread pools)
        for _ in range(3):
            f()
        sync()
    times = {k: [] for k in steps}
    per_block = max(1, repeat // rounds)
    for _ in range(rounds):
        for k, f in steps.items():
            time.sleep(0.25)
            f()
            sync()
            for _ in range(per_block):
                t0 = time.perf_counter()
                f()
                sync()
                times[k].append(time.perf_counter() - t0)
    return {k: (statistics.median(v) * 1e3, min(v) * 1e3) for k, v in times.items()}


def _no_sync() -> None:
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--gpu", action="store_true", help="also run the CuPy engine")
    ap.add_argument("--no-torch", action="store_true", help="time minicaffe alone")
    args = ap.parse_args(argv)
    os.environ["MINICAFFE_NUM_THREADS"] = str(args.threads)
    dtype = np.dtype(args.dtype)
    has_torch = False
    if not args.no_torch:
        try:
            import torch

            torch.set_num_threads(args.threads)
            has_torch = True
        except Exception:  # torch is optional: ratios to it are skipped
            pass
    runs = [("numpy", np, SHAPES)]
    from minicaffe.backend import get_cupy

    cp = get_cupy()
    if cp is not None:
        runs.append(("cupy", cp, SHAPES + GPU_SHAPES))
    elif args.gpu:
        print("no CuPy/CUDA device: GPU runs skipped")
    print(
        f"SoftmaxWithLoss forward+backward, {dtype.name}, {args.threads} threads, median of "
        f"{args.repeat}; torch: {'yes' if has_torch else 'not importable'}"
    )
    header = (
        f"{'engine':6} {'shape':>18} {'ignore':>6} {'ms':>9} {'torch ms':>9} "
        f"{'x torch':>8} {'best x':>7} {'floor ms':>9} {'x floor':>8}"
    )
    print(header)
    print("-" * len(header))
    for engine, xp, shapes in runs:
        sync = _no_sync if xp is np else xp.cuda.Stream.null.synchronize
        for shape in shapes:
            nbytes = int(np.prod(shape)) * dtype.itemsize
            bandwidth = copy_bandwidth(nbytes, xp, sync, args.repeat)
            floor_ms = 2 * nbytes / bandwidth * 1e3
            for ignore in (False, True):
                step, x, y = build_layer(shape, ignore, xp, dtype)
                steps = {"mc": step}
                if has_torch:
                    device = "cpu" if xp is np else "cuda"
                    try:
                        steps["torch"] = torch_step(x, y, ignore, device)
                    except Exception:  # e.g. a CPU-only torch on a GPU run
                        pass
                t = interleaved(steps, args.repeat, sync)
                mc, mc_best = t["mc"]
                if "torch" in t:
                    tt, tt_best = t["torch"]
                    torch_cols = f"{tt:9.3f} {mc / tt:8.2f} {mc_best / tt_best:7.2f}"
                else:
                    torch_cols = f"{'-':>9} {'-':>8} {'-':>7}"
                print(
                    f"{engine:6} {str(shape):>18} {str(ignore):>6} {mc:9.3f} "
                    f"{torch_cols} {floor_ms:9.3f} {mc / floor_ms:8.2f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
