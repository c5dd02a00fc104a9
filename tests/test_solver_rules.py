"""Each update rule against a plain float64 hand computation of Caffe's formulas.

The diffs are set by hand and ``apply_update()`` is called directly, so this checks the update
rules, clipping, iter_size normalisation, L1/L2 regularisation and lr_mult/decay_mult without
any forward pass.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from minicaffe.errors import SolverError
from minicaffe.proto import caffe_pb2
from minicaffe.solver import get_solver
from tests.test_solver_helpers import input_net

SPECS = {
    "ip1": [{"lr_mult": 2.0, "decay_mult": 0.0}, {"lr_mult": 1.0, "decay_mult": 1.0}],
    "ip2": [{"lr_mult": 0.0, "decay_mult": 1.0}, {"lr_mult": 0.5, "decay_mult": 2.0}],
}


def make(kind: str, **fields):
    p = caffe_pb2.SolverParameter(
        type=kind, base_lr=0.1, lr_policy="fixed", max_iter=10, weight_decay=0.01
    )
    for k, v in fields.items():
        setattr(p, k, v)
    p.net_param.CopyFrom(input_net(SPECS))
    return get_solver(p)


def reference(kind, p, ws, grads, hist, it, lr_mults, decay_mults):
    """One Caffe update in float64; returns (new weights, updates), mutating ``hist``."""
    n = len(ws)
    gs = [g.astype(np.float64) for g in grads]
    if p.clip_gradients >= 0:
        norm = math.sqrt(sum(float((g * g).sum()) for g in gs))
        if norm > p.clip_gradients:
            gs = [g * (p.clip_gradients / norm) for g in gs]
    new_ws, updates = [], []
    for k in range(n):
        w, g = ws[k], gs[k] / p.iter_size
        decay = p.weight_decay * decay_mults[k]
        g = g + decay * (w if p.regularization_type == "L2" else np.sign(w))
        lr = p.base_lr * lr_mults[k]
        m, d = p.momentum, p.delta
        if kind == "SGD":
            hist[k] = m * hist[k] + lr * g
            u = hist[k]
        elif kind == "Nesterov":
            old = hist[k]
            hist[k] = m * old + lr * g
            u = (1 + m) * hist[k] - m * old
        elif kind == "AdaGrad":
            hist[k] = hist[k] + g * g
            u = lr * g / (np.sqrt(hist[k]) + d)
        elif kind == "RMSProp":
            r = p.rms_decay
            hist[k] = r * hist[k] + (1 - r) * g * g
            u = lr * g / (np.sqrt(hist[k]) + d)
        elif kind == "AdaDelta":
            hist[k] = m * hist[k] + (1 - m) * g * g
            step = g * np.sqrt((hist[n + k] + d) / (hist[k] + d))
            hist[n + k] = m * hist[n + k] + (1 - m) * step * step
            u = lr * step
        elif kind == "Adam":
            b1, b2, t = p.momentum, p.momentum2, it + 1
            hist[k] = b1 * hist[k] + (1 - b1) * g
            hist[n + k] = b2 * hist[n + k] + (1 - b2) * g * g
            u = lr * math.sqrt(1 - b2**t) / (1 - b1**t) * hist[k] / (np.sqrt(hist[n + k]) + d)
        new_ws.append(w - u)
        updates.append(u)
    return new_ws, updates


CASES = [
    ("SGD", {"momentum": 0.9}),
    ("SGD", {"momentum": 0.9, "regularization_type": "L1"}),
    ("SGD", {"momentum": 0.5, "iter_size": 3}),
    ("SGD", {"momentum": 0.9, "clip_gradients": 0.5}),
    ("SGD", {"momentum": 0.9, "clip_gradients": 1e6}),
    ("Nesterov", {"momentum": 0.8}),
    ("AdaGrad", {"delta": 1e-6}),
    ("RMSProp", {"rms_decay": 0.9, "delta": 1e-6}),
    ("AdaDelta", {"momentum": 0.95, "delta": 1e-6, "base_lr": 1.0}),
    ("Adam", {"momentum": 0.9, "momentum2": 0.99, "delta": 1e-6}),
]


@pytest.mark.parametrize("kind, fields", CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CASES)])
def test_update_rule_matches_hand_computation(kind, fields):
    s = make(kind, **fields)
    params = s.net.learnable_params
    assert [b.name for b in params] == ["ip1[0]", "ip1[1]", "ip2[0]", "ip2[1]"]
    lr_mults = [2.0, 1.0, 0.0, 0.5]
    decay_mults = [0.0, 1.0, 1.0, 2.0]
    assert s.net.params_lr == lr_mults and s.net.params_weight_decay == decay_mults
    rng = np.random.default_rng(3)
    ws = [b.data.astype(np.float64) for b in params]
    hist = [np.zeros(b.shape) for _ in range(s.num_history_sets) for b in params]
    for it in range(4):
        grads = [rng.standard_normal(b.shape).astype(np.float32) for b in params]
        for b, g in zip(params, grads):
            b.diff[...] = g
        s.apply_update()
        ws, updates = reference(kind, s.param, ws, grads, hist, it, lr_mults, decay_mults)
        s.iter += 1
        for b, w, u in zip(params, ws, updates):
            np.testing.assert_allclose(b.data, w, rtol=2e-5, atol=1e-6)
            np.testing.assert_allclose(b.diff, u, rtol=2e-5, atol=1e-6)  # diff = applied step
        for h, want in zip(s.history, hist):
            np.testing.assert_allclose(h, want, rtol=2e-5, atol=1e-6)
    # the frozen weight (lr_mult 0) never moved
    assert np.array_equal(params[2].data, ws[2].astype(np.float32))


def test_clipping_logs_and_scales(caplog):
    s = make("SGD", clip_gradients=0.1)
    for b in s.net.learnable_params:
        b.diff[...] = 1.0
    with caplog.at_level("INFO", logger="minicaffe.solver"):
        s.apply_update()
    assert "Gradient clipping: scaling down gradients (L2 norm" in caplog.text


@pytest.mark.parametrize(
    "kind, fields, match",
    [
        ("AdaGrad", {"momentum": 0.9}, "AdaGrad does not use momentum"),
        ("RMSProp", {"momentum": 0.9}, "RMSProp does not use momentum"),
        ("RMSProp", {"rms_decay": 1.0}, r"rms_decay must be in \[0, 1\)"),
        ("SGD", {"regularization_type": "L3"}, "regularization_type must be 'L1' or 'L2'"),
        ("SGD", {"iter_size": 0}, "iter_size must be >= 1"),
        ("SGD", {"average_loss": 0}, "average_loss must be >= 1"),
    ],
)
def test_invalid_settings(kind, fields, match):
    with pytest.raises(SolverError, match=match):
        make(kind, **fields)


def test_unknown_type_lists_known_ones():
    with pytest.raises(SolverError, match="unknown solver type 'Adamax'.*SGD"):
        make("Adamax")


def test_classes_and_history_counts():
    import minicaffe

    for name, sets in (
        ("SGD", 1),
        ("Nesterov", 1),
        ("AdaGrad", 1),
        ("RMSProp", 1),
        ("AdaDelta", 2),
        ("Adam", 2),
    ):
        cls = getattr(minicaffe, f"{name}Solver")
        fields = {"momentum": 0.0} if name in ("AdaGrad", "RMSProp") else {}
        s = make(name, **fields)
        assert type(s) is cls and len(s.history) == 4 * sets


def _drive(solver, grads_per_step):
    for grads in grads_per_step:
        for b, g in zip(solver.net.learnable_params, grads):
            b.diff[...] = solver.net.learnable_params[0].xp.asarray(g)
        solver.apply_update()
        solver.iter += 1


@pytest.mark.parametrize(
    "kind, fields",
    CASES
    + [
        (
            "SGD",
            {"momentum": 0.9, "iter_size": 2, "clip_gradients": 0.5, "regularization_type": "L1"},
        )
    ],
    ids=[f"{k}-{i}" for i, (k, _) in enumerate(CASES + [("SGD", {})])],
)
def test_fused_gpu_dispatch_matches_xp_path(kind, fields):
    """The GPU path (one fused kernel per param) maps every setting like the xp path; on the
    CPU it runs the kernels' array-op twins."""
    rng = np.random.default_rng(5)
    a, b = make(kind, **fields), make(kind, **fields)
    b._fused_reference = True
    for pa, pb in zip(a.net.learnable_params, b.net.learnable_params):
        pb.data[...] = pa.data
    steps = [
        [rng.standard_normal(p.shape).astype(np.float32) for p in a.net.learnable_params]
        for _ in range(3)
    ]
    _drive(a, steps)
    _drive(b, steps)
    for pa, pb in zip(a.net.learnable_params, b.net.learnable_params):
        np.testing.assert_allclose(pb.data, pa.data, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(pb.diff, pa.diff, rtol=1e-5, atol=1e-7)
    for ha, hb in zip(a.history, b.history):
        np.testing.assert_allclose(hb, ha, rtol=1e-5, atol=1e-7)


@pytest.mark.gpu
@pytest.mark.parametrize("kind, fields", CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CASES)])
def test_gpu_solver_matches_cpu(kind, fields):
    from minicaffe import backend

    if not backend.gpu_available():
        pytest.skip("CuPy and a CUDA device are needed")
    rng = np.random.default_rng(6)
    cpu = make(kind, **fields)
    p = caffe_pb2.SolverParameter()
    p.CopyFrom(cpu.param)
    gpu = get_solver(p, device=backend.gpu_device(0))
    for pc, pg in zip(cpu.net.learnable_params, gpu.net.learnable_params):
        pg.data[...] = pg.xp.asarray(pc.data)
    steps = [
        [rng.standard_normal(q.shape).astype(np.float32) for q in cpu.net.learnable_params]
        for _ in range(3)
    ]
    _drive(cpu, steps)
    _drive(gpu, steps)
    for pc, pg in zip(cpu.net.learnable_params, gpu.net.learnable_params):
        np.testing.assert_allclose(backend.to_numpy(pg.data), pc.data, rtol=1e-5, atol=1e-6)


def test_custom_rule_subclass_is_not_fused():
    from minicaffe.solvers import SGDSolver

    class SignSGD(SGDSolver):
        def compute_update_value(self, pid, rate):
            g = self.net.learnable_params[pid].diff
            g[...] = np.sign(g) * self.local_rate(pid, rate)

    p = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy="fixed")
    p.net_param.CopyFrom(input_net())
    s = SignSGD(p)
    s._fused_reference = True
    assert not s._fusable() and make("SGD")._fusable()
    before = s.net.learnable_params[0].data.copy()
    s.net.learnable_params[0].diff[...] = 3.0
    s.apply_update()
    np.testing.assert_allclose(s.net.learnable_params[0].data, before - 0.1, rtol=1e-6)
