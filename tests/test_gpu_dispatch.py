"""On a GPU device, layers call their fused CuPy kernels (minicaffe.gpu) and get the xp results.

No GPU is needed: a NumPy-backed stand-in plays CuPy, and each fused function is replaced by its
NumPy twin (``<name>_ref``, tested against references in test_gpu_kernels.py) with a call
counter. So this checks the wiring — which kernel, which arguments, which buffers — while the
kernels themselves are checked by the nvcc/host-compiled and GPU tests.
"""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe import backend
from minicaffe.gpu import activations
from tests.helpers import FakeCupy, check_gradient, make_layer, run_forward


@pytest.fixture
def fused_calls(monkeypatch):
    fake = FakeCupy()
    monkeypatch.setattr(backend, "get_cupy", lambda: fake)
    calls: dict[str, int] = {}
    for name in (
        "relu_forward",
        "relu_backward",
        "sigmoid_forward",
        "sigmoid_backward",
        "tanh_backward",
        "elu_forward",
        "elu_backward",
        "prelu_forward",
        "prelu_backward",
    ):
        twin = getattr(activations, f"{name}_ref")

        def counted(*a, _twin=twin, _name=name, **k):
            calls[_name] = calls.get(_name, 0) + 1
            return _twin(*a, **k)

        monkeypatch.setattr(activations, name, counted)
    return fake, calls


CASES = [
    ('type: "ReLU" relu_param { negative_slope: 0.1 }', {"relu_forward", "relu_backward"}),
    ('type: "ReLU"', {"relu_backward"}),
    ('type: "Sigmoid"', {"sigmoid_forward", "sigmoid_backward"}),
    ('type: "TanH"', {"tanh_backward"}),
    ('type: "ELU" elu_param { alpha: 0.7 }', {"elu_forward", "elu_backward"}),
    ('type: "ELU" elu_param { alpha: -0.5 }', {"elu_forward", "elu_backward"}),
    (
        'type: "PReLU" prelu_param { filler { type: "uniform" min: 0.1 max: 0.4 } }',
        {"prelu_forward", "prelu_backward"},
    ),
    ('type: "PReLU" prelu_param { channel_shared: true }', {"prelu_forward", "prelu_backward"}),
]


@pytest.mark.parametrize("text, expected", CASES, ids=[c[0][6:22] for c in CASES])
def test_layer_uses_fused_kernels_and_matches_xp(fused_calls, text, expected):
    fake, calls = fused_calls
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 5))
    x[np.abs(x) < 1e-2] = 0.5  # away from the kink
    cpu = make_layer(text, [x])
    gpu = make_layer(text, [x], xp=fake)
    assert gpu[0].device.is_gpu and not cpu[0].device.is_gpu
    for layer in (cpu[0], gpu[0]):
        if layer.blobs:
            layer.blobs[0].data[...] = cpu[0].blobs[0].data
    np.testing.assert_allclose(run_forward(*gpu)[0], run_forward(*cpu)[0], rtol=1e-12)
    grads = check_gradient(*gpu, kink=lambda a, i: np.abs(a) < 1e-3)
    ref = check_gradient(*cpu, kink=lambda a, i: np.abs(a) < 1e-3)
    for key in ref:
        np.testing.assert_allclose(grads[key], ref[key], rtol=1e-12)
    assert expected <= set(calls), f"fused calls made: {sorted(calls)}"
