"""GPU benchmark of the CuPy engine, side by side with PyTorch CUDA when it is importable.

    python tools/bench_gpu.py [--json results.json] [--sections loss,kernels,nets]
                              [--budget SECONDS] [--only SUBSTR,...] [--dry-run]

Sections (each row: median ms over timed repetitions after warm-up, measured with CUDA events;
achieved bandwidth or FLOP rate; the same work in PyTorch and the ratio minicaffe / torch):

* loss: SoftmaxWithLoss forward + backward through a minicaffe Net on (256,1000), (4096,1000),
  (8,21,128,128), (8,21,512,512), (65536,1000), each with and without 10% ignore_label 255,
  against torch.nn.functional.cross_entropy forward + backward. Bandwidth counts the minimum
  traffic (read x and labels, write dx) and is also given as a fraction of the device-to-device
  copy bandwidth measured first.
* kernels: every fused kernel of minicaffe.gpu against its xp twin on the same inputs (the
  "fused only where it pays" evidence).
* nets: LeNet (batch 64), cifar10_quick (100), CaffeNet (256) and ResNet-50 (32; prototxt from
  tools/gen_resnet50.py): forward (TEST) and one training step (TRAIN: forward, backward and the
  SGD update through minicaffe's Solver), against the same graph run by a small PyTorch
  translation of the prototxt with the same weights; the forward outputs are compared.

Without CuPy and a CUDA device it prints one line saying so and exits 0. ``--dry-run`` runs the
whole script on NumPy and torch CPU at tiny sizes (to test the script itself; its numbers mean
nothing). TF32 is off on both sides (Caffe parity needs full float32).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "data" / "corpus" / "BVLC__caffe"
NETS = [
    ("LeNet", CORPUS / "examples" / "mnist" / "lenet.prototxt", 64),
    ("cifar10_quick", CORPUS / "examples" / "cifar10" / "cifar10_quick.prototxt", 100),
    ("CaffeNet", CORPUS / "models" / "bvlc_reference_caffenet" / "deploy.prototxt", 256),
    ("ResNet-50", ROOT / "tools" / "nets" / "resnet50_deploy.prototxt", 32),
]
LOSS_SHAPES = [(256, 1000), (4096, 1000), (8, 21, 128, 128), (8, 21, 512, 512), (65536, 1000)]
DRY_LOSS_SHAPES = [(16, 10), (2, 5, 6, 6)]
ONLY: list[str] = []  # --only filters
LR = 1e-5  # small: the timed steps must not diverge on random data


# ============================================================================ environment


class Env:
    """Array module, clocks and torch device for one run (CUDA, or the CPU dry run)."""

    def __init__(self, dry: bool):
        from minicaffe import backend

        self.dry = dry
        self.backend = backend
        self.cp = None if dry else backend.get_cupy()
        self.xp = np if dry else self.cp
        self.device = backend.CPU_DEVICE if dry else backend.gpu_device(0)
        self.torch = None
        self.torch_dev = None
        self.torch_note = ""
        try:
            import torch

            if dry:
                self.torch, self.torch_dev = torch, torch.device("cpu")
            elif torch.cuda.is_available():
                self.torch, self.torch_dev = torch, torch.device("cuda", 0)
                torch.backends.cuda.matmul.allow_tf32 = False
                torch.backends.cudnn.allow_tf32 = False
                torch.backends.cudnn.benchmark = True
            else:
                self.torch_note = "torch has no CUDA device"
        except Exception as exc:  # torch is optional
            self.torch_note = f"torch not importable ({type(exc).__name__})"

    def name(self) -> str:
        if self.dry:
            return "CPU dry run (numbers meaningless)"
        props = self.cp.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)

    def sync(self) -> None:
        if not self.dry:
            self.cp.cuda.Device().synchronize()

    def time_ms(self, fn, budget_s: float, warmup: int = 2, max_reps: int = 50) -> float:
        """Median milliseconds of ``fn`` (CUDA events on the device; perf_counter on the CPU)."""
        for _ in range(warmup):
            fn()
        self.sync()
        times: list[float] = []
        deadline = time.perf_counter() + budget_s
        if self.dry:
            while len(times) < min(max_reps, 3):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(times)
        start, end = self.cp.cuda.Event(), self.cp.cuda.Event()
        while len(times) < max_reps and (len(times) < 3 or time.perf_counter() < deadline):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(self.cp.cuda.get_elapsed_time(start, end))
        return statistics.median(times)

    def torch_time_ms(self, fn, budget_s: float, warmup: int = 2, max_reps: int = 50) -> float:
        torch = self.torch
        for _ in range(warmup):
            fn()
        if self.dry:
            times = []
            for _ in range(min(max_reps, 3)):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(times)
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        times, deadline = [], time.perf_counter() + budget_s
        while len(times) < max_reps and (len(times) < 3 or time.perf_counter() < deadline):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)


# ============================================================================ output


COLUMNS = [
    ("section", 8),
    ("case", 34),
    ("ms", 10),
    ("rate", 16),
    ("%copy", 6),
    ("torch_ms", 10),
    ("ratio", 7),
    ("note", 0),
]


def _fmt(v, width):
    if v is None:
        s = "-"
    elif isinstance(v, float):
        s = f"{v:.3f}" if abs(v) < 1000 else f"{v:.1f}"
    else:
        s = str(v)
    return s.ljust(width) if width else s


class Table:
    def __init__(self):
        self.rows: list[dict] = []

    def header(self) -> None:
        print("  ".join(_fmt(name, w) for name, w in COLUMNS), flush=True)

    def add(self, **row) -> None:
        ms, tms = row.get("ms"), row.get("torch_ms")
        if ms is not None and tms:
            row["ratio"] = ms / tms
        self.rows.append(row)
        print("  ".join(_fmt(row.get(name), w) for name, w in COLUMNS), flush=True)


def _selected(case: str) -> bool:
    return not ONLY or any(key in case for key in ONLY)


def _gbps(nbytes: float, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e9


def _err(exc: BaseException) -> str:
    return f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:150] if str(exc) else ''}"


# ============================================================================ copy bandwidth


def bench_copy(env: Env, table: Table, budget: float) -> float | None:
    n = (1 << 14) if env.dry else (1 << 28)  # 1 GiB of float32 on the device
    xp = env.xp
    src = xp.ones(n, xp.float32)
    dst = xp.empty_like(src)
    ms = env.time_ms(lambda: xp.copyto(dst, src), budget)
    gbps = _gbps(2 * src.nbytes, ms)
    table.add(
        section="copy",
        case=f"device copy {src.nbytes >> 20} MiB",
        ms=ms,
        rate=f"{gbps:.0f} GB/s",
        note="reference bandwidth for %copy",
    )
    return gbps


# ============================================================================ loss


def _loss_net_text(shape, label_shape, ignore: bool) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    ldims = " ".join(f"dim: {d}" for d in label_shape)
    lp = "loss_param { ignore_label: 255 }" if ignore else ""
    return (
        'name: "loss_bench"\nforce_backward: true\n'
        'layer { name: "input" type: "Input" top: "data" top: "label" '
        f"input_param {{ shape {{ {dims} }} shape {{ {ldims} }} }} }}\n"
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "data" bottom: "label" '
        f'top: "loss" {lp} }}\n'
    )


def bench_loss(env: Env, table: Table, budget: float, copy_gbps: float | None) -> None:
    from minicaffe import TRAIN, Net

    shapes = DRY_LOSS_SHAPES if env.dry else LOSS_SHAPES
    rng = np.random.default_rng(0)
    for shape in shapes:
        n, c = shape[0], shape[1]
        spatial = shape[2:]
        label_shape = (n,) if not spatial else (n, 1) + spatial
        for ignore in (False, True):
            case = f"SoftmaxWithLoss {shape}" + (" ign10%" if ignore else "")
            if not _selected(case):
                continue
            try:
                x = rng.standard_normal(shape, dtype=np.float32)
                labels = rng.integers(0, c, size=label_shape)
                if ignore:
                    labels[rng.random(label_shape) < 0.1] = 255
                net = Net(_loss_net_text(shape, label_shape, ignore), TRAIN, device=env.device)
                net.blobs["data"].data[...] = env.xp.asarray(x)
                net.blobs["label"].data[...] = env.xp.asarray(labels.astype(np.float32))
                ms = env.time_ms(net.forward_backward, budget)
                loss = float(env.backend.to_numpy(net.blobs["loss"].data))
                nbytes = 2 * x.nbytes + labels.size * 4
                gbps = _gbps(nbytes, ms)
                row = dict(
                    section="loss",
                    case=case,
                    ms=ms,
                    rate=f"{gbps:.0f} GB/s",
                    **{"%copy": f"{100 * gbps / copy_gbps:.0f}" if copy_gbps else None},
                )
            except Exception as exc:
                table.add(section="loss", case=case, note=_err(exc))
                continue
            if env.torch is not None:
                try:
                    row.update(_torch_loss(env, x, labels, budget, loss))
                except Exception as exc:
                    row["note"] = "torch " + _err(exc)
            else:
                row["note"] = env.torch_note
            table.add(**row)


def _torch_loss(env: Env, x, labels, budget: float, mc_loss: float) -> dict:
    torch = env.torch
    F = torch.nn.functional
    xt = torch.tensor(x, device=env.torch_dev, requires_grad=True)
    lt = torch.tensor(
        labels.reshape((labels.shape[0],) + labels.shape[2:]),
        dtype=torch.long,
        device=env.torch_dev,
    )

    def step():
        xt.grad = None
        F.cross_entropy(xt, lt, ignore_index=255).backward()

    ms = env.torch_time_ms(step, budget)
    with torch.no_grad():
        ref = F.cross_entropy(xt, lt, ignore_index=255).item()
    return dict(torch_ms=ms, note=f"loss rel.diff vs torch {abs(mc_loss - ref) / abs(ref):.1e}")


# ============================================================================ kernels


def _kernel_cases(env: Env):
    """(name, bytes moved by the fused kernel, setup() -> (fused fn, twin fn))."""
    from minicaffe.gpu import activations as act
    from minicaffe.gpu import im2col as i2c
    from minicaffe.gpu import pooling as pool
    from minicaffe.gpu import updates as upd

    xp, dry = env.xp, env.dry
    rng = np.random.default_rng(1)

    def arr(*shape):
        return xp.asarray(rng.standard_normal(shape, dtype=np.float32))

    n_act = (1 << 10) if dry else (1 << 26)
    img = (2, 3, 8, 8) if dry else (32, 64, 56, 56)
    big = (2, 3, 9, 9) if dry else (32, 64, 112, 112)
    n_par = 1000 if dry else 25_557_032  # ResNet-50's parameter count
    f4 = 4

    def act_case(name, nbytes, fused, ref, *shapes_or_arrays):
        def setup():
            args = [arr(*s) if isinstance(s, tuple) else s for s in shapes_or_arrays]
            out = xp.empty_like(args[0])
            return (lambda: fused(*args, out=out)), (lambda: ref(*args, out=out))

        return name, nbytes, setup

    cases = [
        act_case(
            "relu backward (leaky 0.1)",
            3 * f4 * n_act,
            lambda x, dy, out: act.relu_backward(x, dy, 0.1, out=out),
            lambda x, dy, out: act.relu_backward_ref(x, dy, 0.1, out=out),
            (n_act,),
            (n_act,),
        ),
        act_case(
            "relu forward (leaky 0.1)",
            2 * f4 * n_act,
            lambda x, out: act.relu_forward(x, 0.1, out=out),
            lambda x, out: act.relu_forward_ref(x, 0.1, out=out),
            (n_act,),
        ),
        act_case(
            "sigmoid backward",
            3 * f4 * n_act,
            act.sigmoid_backward,
            act.sigmoid_backward_ref,
            (n_act,),
            (n_act,),
        ),
        act_case(
            "tanh backward",
            3 * f4 * n_act,
            act.tanh_backward,
            act.tanh_backward_ref,
            (n_act,),
            (n_act,),
        ),
        act_case("elu forward", 2 * f4 * n_act, act.elu_forward, act.elu_forward_ref, (n_act,)),
        act_case(
            "elu backward",
            4 * f4 * n_act,
            act.elu_backward,
            act.elu_backward_ref,
            (n_act,),
            (n_act,),
            (n_act,),
        ),
    ]

    def prelu_setup():
        x, dy, a = arr(*img), arr(*img), xp.full(img[1], 0.25, xp.float32)
        dx, da = xp.empty_like(x), xp.zeros_like(a)
        return (
            (lambda: act.prelu_backward(x, dy, a, out=dx, slope_diff=da)),
            (lambda: act.prelu_backward_ref(x, dy, a, out=dx, slope_diff=da)),
        )

    cases.append(("prelu backward (+slope grad)", 3 * f4 * math.prod(img), prelu_setup))

    def conv_setup(which):
        def setup():
            x = arr(*img)
            col = i2c.im2col_ref(x, 3, 1, 1)
            if which == "im2col":
                return (lambda: i2c.im2col(x, 3, 1, 1, out=col)), (
                    lambda: i2c.im2col_ref(x, 3, 1, 1, out=col)
                )
            return (lambda: i2c.col2im(col, img, 3, 1, 1, out=x)), (
                lambda: i2c.col2im_ref(col, img, 3, 1, 1, out=x)
            )

        return setup

    col_bytes = f4 * (math.prod(img) + 9 * math.prod(img))
    cases.append((f"im2col 3x3 p1 {img}", col_bytes, conv_setup("im2col")))
    cases.append((f"col2im 3x3 p1 {img}", col_bytes, conv_setup("col2im")))

    def pool_setup(kind):
        def setup():
            x = arr(*big)
            y, mask = pool.max_pool_forward_ref(x, 3, 2)
            dy, dx = xp.ones_like(y), xp.empty_like(x)
            if kind == "max_fwd":
                return (lambda: pool.max_pool_forward(x, 3, 2, out=y, mask=mask)), (
                    lambda: pool.max_pool_forward_ref(x, 3, 2, out=y, mask=mask)
                )
            if kind == "max_bwd":
                return (lambda: pool.max_pool_backward(dy, mask, big, 3, 2, out=dx)), (
                    lambda: pool.max_pool_backward_ref(dy, mask, big, 3, 2, out=dx)
                )
            if kind == "ave_fwd":
                return (lambda: pool.ave_pool_forward(x, 3, 2, out=y)), (
                    lambda: pool.ave_pool_forward_ref(x, 3, 2, out=y)
                )
            return (lambda: pool.ave_pool_backward(dy, big, 3, 2, out=dx)), (
                lambda: pool.ave_pool_backward_ref(dy, big, 3, 2, out=dx)
            )

        return setup

    pooled = big[0] * big[1] * pool.pooled_size(big[2], 3, 2, 0) ** 2
    for kind, label, nbytes in [
        ("max_fwd", "max pool fwd 3x3/2", f4 * (math.prod(big) + 2 * pooled)),
        ("max_bwd", "max pool bwd 3x3/2", f4 * (math.prod(big) + 2 * pooled)),
        ("ave_fwd", "ave pool fwd 3x3/2", f4 * (math.prod(big) + pooled)),
        ("ave_bwd", "ave pool bwd 3x3/2", f4 * (math.prod(big) + pooled)),
    ]:
        cases.append((f"{label} {big}", nbytes, pool_setup(kind)))

    def update_setup(rule):
        def setup():
            w, g = arr(n_par), arr(n_par) * 1e-3
            hs = [xp.zeros(n_par, xp.float32) for _ in range(2 if rule == "adam" else 1)]
            kw = dict(lr=1e-3, decay=5e-4)
            if rule == "sgd":
                return (lambda: upd.sgd_update(w, g, hs[0], momentum=0.9, **kw)), (
                    lambda: upd.sgd_update_ref(w, g, hs[0], momentum=0.9, **kw)
                )
            return (lambda: upd.adam_update(w, g, hs[0], hs[1], t=10, **kw)), (
                lambda: upd.adam_update_ref(w, g, hs[0], hs[1], t=10, **kw)
            )

        return setup

    cases.append((f"SGD update {n_par} params", 6 * f4 * n_par, update_setup("sgd")))
    cases.append((f"Adam update {n_par} params", 8 * f4 * n_par, update_setup("adam")))
    return cases


def bench_kernels(env: Env, table: Table, budget: float, copy_gbps: float | None) -> None:
    for name, nbytes, setup in _kernel_cases(env):
        if not _selected(name):
            continue
        try:
            fused, twin = setup()
            if env.dry:  # no fused kernels on the CPU: time the twin only
                ms, twin_ms = env.time_ms(twin, budget), None
            else:
                ms = env.time_ms(fused, budget)
                twin_ms = env.time_ms(twin, budget)
            gbps = _gbps(nbytes, ms)
            note = f"xp twin {twin_ms:.3f} ms, fused {twin_ms / ms:.2f}x" if twin_ms else ""
            table.add(
                section="kernel",
                case=name,
                ms=ms,
                rate=f"{gbps:.0f} GB/s",
                note=note,
                twin_ms=twin_ms,
                **{"%copy": f"{100 * gbps / copy_gbps:.0f}" if copy_gbps else None},
            )
        except Exception as exc:
            table.add(section="kernel", case=name, note=_err(exc))
        finally:
            if env.cp is not None:
                env.cp.get_default_memory_pool().free_all_blocks()


# ============================================================================ nets


def _net_param(path: Path, batch: int, train: bool):
    """The deploy NetParameter with its Input batch set; for training the final Softmax becomes
    a SoftmaxWithLoss fed by a new ``label`` Input."""
    from minicaffe.prototxt import read_net_param

    param = read_net_param(str(path))
    for layer in param.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                shape.dim[0] = batch
    if train:
        last = param.layer[-1]
        if last.type != "Softmax":
            raise ValueError(f"{path.name}: expected a final Softmax layer, found {last.type}")
        bottom = last.bottom[0]
        del param.layer[-1]
        label = param.layer.add()
        label.name, label.type = "label", "Input"
        label.top.append("label")
        label.input_param.shape.add().dim.append(batch)
        loss = param.layer.add()
        loss.name, loss.type = "loss", "SoftmaxWithLoss"
        loss.bottom.extend([bottom, "label"])
        loss.top.append("loss")
    return param


def _init_weights(net, rng, xp) -> None:
    """Deterministic, well-scaled weights (deploy files carry no fillers)."""
    for layer in net.layers:
        for i, blob in enumerate(layer.blobs):
            shape = blob.shape
            if layer.type == "BatchNorm":
                value = np.full(shape, [0.0, 1.0, 1.0][i], np.float32)
            elif layer.type == "Scale":  # damped residual branches keep ResNet's scale sane
                value = np.full(shape, 0.5 if i == 0 else 0.0, np.float32)
            elif i == 0 and len(shape) >= 2:
                fan_in = math.prod(shape[1:])
                value = rng.standard_normal(shape, dtype=np.float32) * np.float32(
                    math.sqrt(1.0 / fan_in)
                )
            else:
                value = np.full(shape, 0.01, np.float32)
            blob.data[...] = xp.asarray(value)


def _net_flops(net) -> float:
    """Forward multiply-adds x2 of the Convolution, Deconvolution and InnerProduct layers."""
    total = 0.0
    for layer, tops, bottoms in zip(net.layers, net._top_vecs, net._bottom_vecs):
        if not layer.blobs:
            continue
        wcount = layer.blobs[0].count
        if layer.type == "Convolution":
            total += 2.0 * wcount * sum(t.count / t.shape[1] for t in tops)
        elif layer.type == "Deconvolution":
            total += 2.0 * wcount * sum(b.count / b.shape[1] for b in bottoms)
        elif layer.type == "InnerProduct":
            total += 2.0 * tops[0].count * (wcount / layer.blobs[0].shape[0])
    return total


def _solver_for(env: Env, net_param):
    from minicaffe.proto import caffe_pb2
    from minicaffe.solver import get_solver

    sp = caffe_pb2.SolverParameter()
    sp.net_param.CopyFrom(net_param)
    sp.type = "SGD"
    sp.base_lr, sp.momentum, sp.weight_decay = LR, 0.9, 5e-4
    sp.lr_policy = "fixed"
    sp.max_iter = 10**9
    sp.display = 0
    sp.snapshot = 0
    sp.snapshot_after_train = False
    sp.snapshot_prefix = "/tmp/minicaffe_bench_gpu"
    return get_solver(sp, device=env.device)


def bench_nets(env: Env, table: Table, budget: float) -> None:
    from minicaffe import TEST, Net

    for name, path, batch in NETS:
        batch = 1 if env.dry else batch
        for mode in ("forward", "train step"):
            case = f"{name} b{batch} {mode}"
            if not _selected(case):
                continue
            train = mode == "train step"
            rng = np.random.default_rng(2)
            try:
                param = _net_param(path, batch, train)
                if train:
                    solver = _solver_for(env, param)
                    net = solver.net
                    run = lambda s=solver: s.step(1)  # noqa: E731
                else:
                    net = Net(param, TEST, device=env.device)
                    run = net.forward_prefilled
                _init_weights(net, rng, env.xp)
                inputs = {}
                for blob_name in net.inputs:
                    shape = net.blobs[blob_name].shape
                    if blob_name == "label":
                        value = rng.integers(0, 10, size=shape).astype(np.float32)
                    else:
                        value = rng.standard_normal(shape, dtype=np.float32)
                    inputs[blob_name] = value
                    net.blobs[blob_name].data[...] = env.xp.asarray(value)
                flops = _net_flops(net) * (3 if train else 1)
                if not train:
                    net.forward_prefilled()
                    last = net.net_param.layer[-1]  # compare the logits, not a flat softmax
                    out_name = last.bottom[0] if last.type == "Softmax" else net.outputs[0]
                    mc_out = env.backend.to_numpy(net.blobs[out_name].data).copy()
                ms = env.time_ms(run, budget, warmup=2, max_reps=30)
                row = dict(
                    section="net",
                    case=case,
                    ms=ms,
                    rate=f"{flops / (ms * 1e-3) / 1e12:.2f} TFLOP/s",
                )
            except Exception as exc:
                table.add(section="net", case=case, note=_err(exc))
                if "--debug" in sys.argv:
                    traceback.print_exc()
                continue
            if env.torch is not None:
                try:
                    tnet = TorchNet(env, net)
                    if train:
                        row["torch_ms"] = env.torch_time_ms(
                            tnet.train_step_fn(inputs), budget, max_reps=30
                        )
                    else:
                        fn, outputs = tnet.forward_fn(inputs)
                        row["torch_ms"] = env.torch_time_ms(fn, budget, max_reps=30)
                        ref = outputs()[out_name]
                        scale = float(np.max(np.abs(ref))) or 1.0
                        diff = float(np.max(np.abs(ref - mc_out))) / scale
                        row["note"] = f"{out_name}: max|diff|/max|out| vs torch {diff:.1e}"
                except Exception as exc:
                    row["note"] = "torch " + _err(exc)
                    if "--debug" in sys.argv:
                        traceback.print_exc()
            else:
                row["note"] = env.torch_note
            table.add(**row)
            del net
            if not env.dry:
                env.cp.get_default_memory_pool().free_all_blocks()


class TorchNet:
    """The minicaffe Net's layer graph (after split insertion) run by torch.nn.functional, with
    the minicaffe weights copied over. Covers the layer types of the benchmark nets."""

    def __init__(self, env: Env, net):
        self.env, self.torch = env, env.torch
        torch = self.torch
        self.layers = []
        self.params = []
        for layer, lp in zip(net.layers, net.net_param.layer):
            ws = [
                torch.tensor(env.backend.to_numpy(b.data), device=env.torch_dev)
                for b in layer.blobs
            ]
            learn = layer.type in ("Convolution", "InnerProduct", "Scale", "Deconvolution")
            for w in ws:
                w.requires_grad_(learn)
                if learn:
                    self.params.append(w)
            self.layers.append((lp, ws))

    def upload(self, inputs: dict) -> dict:
        """The input arrays as device tensors (once, outside the timed steps)."""
        return {k: self.torch.as_tensor(v, device=self.env.torch_dev) for k, v in inputs.items()}

    def _run(self, inputs: dict, train: bool) -> dict:
        torch = self.torch
        F = torch.nn.functional
        blobs = dict(inputs)
        for lp, ws in self.layers:
            t = lp.type
            bots = [blobs[b] for b in lp.bottom]
            if t == "Input":
                continue
            if t == "Convolution":
                p = lp.convolution_param
                s = _pair(p.stride, p.stride_h, p.stride_w, 1)
                pad = _pair(p.pad, p.pad_h, p.pad_w, 0)
                d = _pair(p.dilation, 0, 0, 1)
                out = F.conv2d(bots[0], ws[0], ws[1] if p.bias_term else None, s, pad, d, p.group)
            elif t == "Pooling":
                p = lp.pooling_param
                x = bots[0]
                if p.global_pooling:
                    k, s, pad = tuple(x.shape[2:]), (1, 1), (0, 0)
                else:
                    k = _pair(
                        [p.kernel_size] if p.HasField("kernel_size") else [],
                        p.kernel_h,
                        p.kernel_w,
                        None,
                    )
                    s = _pair([p.stride] if p.HasField("stride") else [], p.stride_h, p.stride_w, 1)
                    pad = _pair([p.pad] if p.HasField("pad") else [], p.pad_h, p.pad_w, 0)
                ceil = p.round_mode == 0
                if p.pool == 0:
                    out = F.max_pool2d(x, k, s, pad, ceil_mode=ceil)
                else:
                    out = F.avg_pool2d(x, k, s, pad, ceil_mode=ceil, count_include_pad=True)
            elif t == "ReLU":
                slope = lp.relu_param.negative_slope
                out = F.leaky_relu(bots[0], slope) if slope else F.relu(bots[0])
            elif t == "LRN":
                p = lp.lrn_param
                out = F.local_response_norm(bots[0], p.local_size, p.alpha, p.beta, p.k)
            elif t == "InnerProduct":
                out = F.linear(
                    bots[0].flatten(1), ws[0], ws[1] if lp.inner_product_param.bias_term else None
                )
            elif t == "Dropout":
                out = F.dropout(bots[0], lp.dropout_param.dropout_ratio, training=train)
            elif t == "BatchNorm":
                factor = ws[2].reshape(()) if len(ws) > 2 else 1.0
                scale = 0 if float(factor) == 0 else 1 / factor
                out = F.batch_norm(
                    bots[0],
                    ws[0] * scale,
                    ws[1] * scale,
                    None,
                    None,
                    False,
                    0.0,
                    lp.batch_norm_param.eps,
                )
            elif t == "Scale":
                shape = (1, -1) + (1,) * (bots[0].dim() - 2)
                out = bots[0] * ws[0].reshape(shape)
                if len(ws) > 1:
                    out = out + ws[1].reshape(shape)
            elif t == "Eltwise":
                out = bots[0]
                for b in bots[1:]:
                    out = out + b
            elif t == "Split":
                for top in lp.top:
                    blobs[top] = bots[0]
                continue
            elif t == "Softmax":
                out = F.softmax(bots[0], dim=1)
            elif t == "SoftmaxWithLoss":
                out = F.cross_entropy(bots[0], bots[1].long().reshape(-1))
            else:
                raise NotImplementedError(f"TorchNet has no translation for {t}")
            blobs[lp.top[0]] = out
        return blobs

    def forward_fn(self, inputs):
        torch = self.torch
        state = {}
        inputs = self.upload(inputs)

        def fn():
            with torch.no_grad():
                state["blobs"] = self._run(inputs, train=False)

        def outputs():
            fn()
            return {k: v.detach().cpu().numpy() for k, v in state["blobs"].items()}

        return fn, outputs

    def train_step_fn(self, inputs):
        torch = self.torch
        opt = torch.optim.SGD(self.params, lr=LR, momentum=0.9, weight_decay=5e-4)
        inputs = self.upload(inputs)

        def fn():
            opt.zero_grad(set_to_none=True)
            self._run(inputs, train=True)["loss"].backward()
            opt.step()

        return fn


def _pair(repeated, h, w, default):
    """(h, w) from Caffe's repeated field or its _h/_w pair."""
    if h or w:
        return int(h), int(w)
    values = list(repeated)
    if not values:
        if default is None:
            raise ValueError("kernel size missing")
        return default, default
    return (
        (int(values[0]), int(values[0])) if len(values) == 1 else (int(values[0]), int(values[1]))
    )


# ============================================================================ main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument(
        "--sections",
        default="loss,kernels,nets",
        help="comma list of: loss, kernels, nets (default: all)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=3.0,
        help="seconds of timed repetitions per measurement (default 3)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="run on NumPy + torch CPU at tiny sizes (tests the script only)",
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma list of substrings; run only the cases whose name contains one",
    )
    parser.add_argument("--debug", action="store_true", help="print tracebacks of failed rows")
    args = parser.parse_args(argv)
    from minicaffe import backend

    if not args.dry_run and backend.get_cupy() is None:
        print(
            "bench_gpu: no GPU benchmark run: CuPy with a CUDA device is not available "
            "(install minicaffe[gpu] on a machine with an NVIDIA GPU)"
        )
        return 0
    env = Env(args.dry_run)
    global ONLY
    ONLY = [s.strip() for s in args.only.split(",") if s.strip()]
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    started = time.perf_counter()
    date = datetime.date.today().isoformat()
    print(
        f"# minicaffe bench_gpu  {date}  device: {env.name()}  torch: "
        f"{env.torch.__version__ if env.torch else env.torch_note}",
        flush=True,
    )
    table = Table()
    table.header()
    copy_gbps = bench_copy(env, table, args.budget)
    if "loss" in sections:
        bench_loss(env, table, args.budget, copy_gbps)
    if "kernels" in sections:
        bench_kernels(env, table, args.budget, copy_gbps)
    if "nets" in sections:
        bench_nets(env, table, args.budget)
    elapsed = time.perf_counter() - started
    print(
        f"# {len(table.rows)} rows in {elapsed:.0f} s; ratio = minicaffe ms / torch ms "
        "(< 1: minicaffe faster)",
        flush=True,
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "date": date,
                    "device": env.name(),
                    "torch": env.torch.__version__ if env.torch else None,
                    "rows": table.rows,
                },
                indent=1,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
