"""Whole-net speed of minicaffe on NumPy, side by side with the same nets in PyTorch.

    python tools/bench_nets.py [--nets lenet,cifar10_quick,caffenet] [--steps 30] [--threads 2]

* lenet: LeNet train step, batch 64 (tools/nets/lenet_train_test.prototxt, data layers replaced
  by Input layers): forward, backward and an SGD update (momentum 0.9, weight decay 5e-4) through
  ``minicaffe.SGDSolver``.
* cifar10_quick: the same for cifar10_quick, batch 100.
* caffenet: CaffeNet deploy forward, batch 10 (TEST phase).

Each net prints the median milliseconds per step of minicaffe and, when torch imports, of the
same architecture built with torch.nn (torch.set_num_threads); the ratio of the two medians; the
ratio to BVLC Caffe's own CPU figure from the shared performance anchors; and the minor page
faults per steady-state minicaffe step (resource.getrusage ru_minflt).

torch runs in its own subprocess (``--torch-worker``), never in the minicaffe process: two thread
pools (OpenBLAS and torch's OpenMP) in one process spin-wait against each other and distort both
timings (torch's LeNet step measured 48 ms interleaved in-process vs 27 ms alone). The worker
stays up and the two sides take turns in ``--rounds`` short blocks (torch, minicaffe, minicaffe,
torch, ...), each side idle while the other runs, so both see the same stretches of the shared
machine's load: besides the ratio of the overall medians, each round gives a paired ratio, and
their median and spread are printed, with the ratio of the two fastest steps. Timings on a
shared machine are noisy: run it several times and compare ratios, not absolute times. When the
host steals CPU time, minicaffe's medians can suffer more than torch's (where it splits NumPy
passes between its own threads, they hand work over through sleeping threads; torch's OpenMP
threads spin), which the ratio of minima shows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

NETS = Path(__file__).resolve().parent / "nets"
# BVLC Caffe CPU (OpenBLAS, 2 threads) on the reference 2-core machine, ms (perf-anchors.md).
CAFFE_MS = {"lenet": 25.5, "cifar10_quick": 177.0, "caffenet": 179.0}
# PyTorch 2.13 CPU (2 threads) on that machine, ms (perf-anchors.md; midpoints of the ranges):
# torch's time here over its time there scales the Caffe anchor to this machine's speed.
TORCH_ANCHOR_MS = {"lenet": 13.75, "cifar10_quick": 54.0, "caffenet": 132.0}
TARGET_VS_TORCH = {"lenet": 1.0, "cifar10_quick": 1.3, "caffenet": 1.2}


def _set_threads(n: int) -> None:
    for var in (
        "OPENBLAS_NUM_THREADS",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
    ):
        os.environ.setdefault(var, str(n))


# ------------------------------------------------------------------------------ minicaffe nets
def _train_net_param(path: Path, batch: int, shape):
    """The TRAIN net of a *_train_test prototxt with its data layers replaced by Input layers."""
    from minicaffe.graph import filter_net
    from minicaffe.proto import caffe_pb2
    from minicaffe.prototxt import read_net_param

    param = read_net_param(str(path))
    param.state.phase = caffe_pb2.TRAIN
    param = filter_net(param)
    out = caffe_pb2.NetParameter(name=param.name)
    inp = out.layer.add(name="data", type="Input")
    inp.top.extend(["data", "label"])
    inp.input_param.shape.add().dim.extend([batch, *shape])
    inp.input_param.shape.add().dim.extend([batch])
    for layer in param.layer:
        if layer.type not in ("Data", "ImageData", "HDF5Data", "MemoryData"):
            layer.ClearField("include")
            out.layer.add().CopyFrom(layer)
    return out


def _solver(net_param, lr: float):
    import minicaffe
    from minicaffe.proto import caffe_pb2

    sp = caffe_pb2.SolverParameter(
        base_lr=lr, momentum=0.9, weight_decay=5e-4, lr_policy="fixed", display=0, max_iter=10**9
    )
    sp.net_param.CopyFrom(net_param)
    sp.snapshot_after_train = False
    return minicaffe.SGDSolver(sp)


def _fill_inputs(net, classes: int, seed: int = 0) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    data = net.blobs["data"]
    data.data[...] = rng.standard_normal(data.shape).astype(np.float32) * 0.5
    if "label" in net.blobs:
        net.blobs["label"].data[...] = rng.integers(0, classes, net.blobs["label"].shape)


def minicaffe_lenet():
    solver = _solver(_train_net_param(NETS / "lenet_train_test.prototxt", 64, (1, 28, 28)), 0.01)
    _fill_inputs(solver.net, 10)
    return lambda: solver.step(1)


def minicaffe_cifar():
    param = _train_net_param(NETS / "cifar10_quick_train_test.prototxt", 100, (3, 32, 32))
    solver = _solver(param, 0.001)
    _fill_inputs(solver.net, 10)
    return lambda: solver.step(1)


def minicaffe_caffenet():
    import minicaffe

    net = minicaffe.Net(str(NETS / "caffenet_deploy.prototxt"), minicaffe.TEST)
    _fill_inputs(net, 1000)
    return net.forward_prefilled


# ------------------------------------------------------------------------------ torch nets
def torch_lenet(torch):
    nn, F = torch.nn, torch.nn.functional

    class LeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5)
            self.ip1, self.ip2 = nn.Linear(800, 500), nn.Linear(500, 10)

        def forward(self, x):
            x = F.max_pool2d(self.conv1(x), 2, 2)
            x = F.max_pool2d(self.conv2(x), 2, 2)
            return self.ip2(F.relu(self.ip1(x.flatten(1))))

    return _torch_train(torch, LeNet(), (64, 1, 28, 28), 10, 0.01)


def torch_cifar(torch):
    nn, F = torch.nn, torch.nn.functional

    class Quick(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 32, 5, padding=2)
            self.conv2 = nn.Conv2d(32, 32, 5, padding=2)
            self.conv3 = nn.Conv2d(32, 64, 5, padding=2)
            self.ip1, self.ip2 = nn.Linear(1024, 64), nn.Linear(64, 10)

        def forward(self, x):
            x = F.relu(F.max_pool2d(self.conv1(x), 3, 2, ceil_mode=True))
            x = F.avg_pool2d(F.relu(self.conv2(x)), 3, 2, ceil_mode=True)
            x = F.avg_pool2d(F.relu(self.conv3(x)), 3, 2, ceil_mode=True)
            return self.ip2(self.ip1(x.flatten(1)))

    return _torch_train(torch, Quick(), (100, 3, 32, 32), 10, 0.001)


def _torch_train(torch, model, shape, classes, lr):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(*shape) * 0.5
    y = torch.randint(0, classes, (shape[0],))

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return step


def torch_caffenet(torch):
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0),
        nn.Conv2d(96, 256, 5, padding=2, groups=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0),
        nn.Conv2d(256, 384, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Flatten(),
        nn.Linear(9216, 4096),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(4096, 1000),
        nn.Softmax(1),
    ).eval()
    x = torch.randn(10, 3, 227, 227) * 0.5

    def step():
        with torch.no_grad():
            model(x)

    return step


BENCHES = {
    "lenet": ("LeNet train step, batch 64", minicaffe_lenet, torch_lenet),
    "cifar10_quick": ("cifar10_quick train step, batch 100", minicaffe_cifar, torch_cifar),
    "caffenet": ("CaffeNet deploy forward, batch 10", minicaffe_caffenet, torch_caffenet),
}


# ------------------------------------------------------------------------------ measuring
def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000.0


def page_faults_per_step(fn, steps: int) -> float:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps


class TorchWorker:
    """The torch side in a subprocess that stays up between blocks (``--torch-worker``)."""

    def __init__(self, name: str, warmup: int, threads: int):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--torch-worker", name]
        cmd += ["--warmup", str(warmup), "--threads", str(threads)]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, env=os.environ.copy(),
        )
        hello = self._reply()
        self.version = hello.get("version") if hello else None

    def _reply(self):
        line = self.proc.stdout.readline()
        return json.loads(line) if line.strip() else None

    def block(self, steps: int):
        """ms of ``steps`` torch steps (None when the worker is gone)."""
        if self.version is None:
            return None
        self.proc.stdin.write(f"{steps}\n")
        self.proc.stdin.flush()
        reply = self._reply()
        return reply["ms"] if reply else None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def torch_worker(name: str, warmup: int, threads: int) -> int:
    """Subprocess side: build the torch net, warm it up, then answer each line ``N`` on stdin
    with one JSON line of N step times, until stdin closes."""
    try:
        import torch
    except ImportError:
        print("{}", flush=True)
        return 3
    torch.set_num_threads(threads)
    tc = BENCHES[name][2](torch)
    for _ in range(warmup):
        tc()
    print(json.dumps({"version": torch.__version__}), flush=True)
    for line in sys.stdin:
        ms = [_time(tc) for _ in range(int(line))]
        time.sleep(0.05)  # OpenMP's spinning threads settle before the other side runs
        print(json.dumps({"ms": ms}), flush=True)
    return 0


def run_bench(name: str, steps: int, warmup: int, use_torch: bool, threads: int,
              rounds: int = 4) -> dict:
    title, make_mc, _ = BENCHES[name]
    worker = TorchWorker(name, warmup, threads) if use_torch else None
    if worker is not None and worker.version is None:
        worker.close()
        worker = None
    mc = make_mc()
    for _ in range(warmup):
        mc()
    faults = page_faults_per_step(mc, max(5, steps // 3))
    per = max(1, -(-steps // rounds))
    mc_blocks, tc_blocks = [], []
    for r in range(rounds):
        sides = ["torch", "mc"] if r % 2 == 0 else ["mc", "torch"]
        for side in sides:
            if side == "mc":
                mc_blocks.append([_time(mc) for _ in range(per)])
                time.sleep(0.05)
            elif worker is not None:
                ms = worker.block(per)
                if ms is not None:
                    tc_blocks.append(ms)
    if worker is not None:
        worker.close()
    mc_ms = [t for b in mc_blocks for t in b]
    res = {
        "name": name,
        "title": title,
        "ms": statistics.median(mc_ms),
        "min_ms": min(mc_ms),
        "faults": faults,
        "caffe_ms": CAFFE_MS[name],
    }
    del mc
    if tc_blocks and len(tc_blocks) == len(mc_blocks):
        tc_ms = [t for b in tc_blocks for t in b]
        paired = [statistics.median(a) / statistics.median(b)
                  for a, b in zip(mc_blocks, tc_blocks)]
        res.update(
            torch_ms=statistics.median(tc_ms),
            torch_min_ms=min(tc_ms),
            torch_version=worker.version,
            paired=paired,
        )
        res["ratio"] = res["ms"] / res["torch_ms"]
    return res


def report(res: dict) -> str:
    lines = [f"{res['title']}:"]
    lines.append(f"  minicaffe  {res['ms']:8.2f} ms/step (median; min {res['min_ms']:.2f})")
    if "torch_ms" in res:
        target = TARGET_VS_TORCH[res["name"]]
        paired = sorted(res["paired"])
        lines.append(
            f"  torch      {res['torch_ms']:8.2f} ms/step (median; min {res['torch_min_ms']:.2f};"
            " own process, taking turns)"
        )
        lines.append(
            f"  ratio minicaffe/torch {res['ratio']:.2f}x (ratio of medians; target <= {target}x)"
        )
        lines.append(
            f"  paired ratio per round: median {statistics.median(paired):.2f}x, "
            f"range {paired[0]:.2f}-{paired[-1]:.2f}x over {len(paired)} rounds; "
            f"ratio of minima {res['min_ms'] / res['torch_min_ms']:.2f}x"
        )
    lines.append(
        f"  vs Caffe CPU anchor {res['caffe_ms']:.1f} ms: "
        f"{res['caffe_ms'] / res['ms']:.2f}x faster (target >= 1.5x; absolute times, "
        "other machine)"
    )
    if "torch_ms" in res:
        anchor = TORCH_ANCHOR_MS[res["name"]]
        scaled = res["caffe_ms"] * res["torch_ms"] / anchor
        lines.append(
            f"  vs Caffe scaled to this machine by torch's speed ({res['torch_ms']:.1f} ms here, "
            f"{anchor:g} ms there): ~{scaled:.1f} ms, {scaled / res['ms']:.2f}x faster"
        )
    lines.append(f"  minor page faults per steady-state step: {res['faults']:.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nets", default="lenet,cifar10_quick,caffenet")
    p.add_argument("--steps", type=int, default=30, help="timed steps per net (default 30)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=4,
                   help="turns of each side, the steps split between them (default 4)")
    p.add_argument("--threads", type=int, default=2, help="BLAS / torch threads (default 2)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch side")
    p.add_argument("--torch-worker", metavar="NET", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    _set_threads(args.threads)
    if args.torch_worker:
        return torch_worker(args.torch_worker, args.warmup, args.threads)
    import minicaffe  # noqa: F401

    np = sys.modules["numpy"]

    print(
        f"numpy {np.__version__}, {args.threads} threads"
        + ("" if args.no_torch else ", torch in a separate process")
    )
    for name in args.nets.split(","):
        if name not in BENCHES:
            p.error(f"unknown net {name!r}; choose from {', '.join(BENCHES)}")
        res = run_bench(name, args.steps, args.warmup, not args.no_torch, args.threads,
                        max(1, args.rounds))
        if not args.no_torch and "torch_ms" not in res:
            print("torch is not importable: minicaffe times only", file=sys.stderr)
        print(report(res), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
