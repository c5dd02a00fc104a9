"""Test helpers: build one layer from a prototxt snippet, and check gradients numerically.

    layer, bottom, top = make_layer('type: "ReLU"', [x])
    check_gradient(layer, bottom, top)

``make_layer`` runs the layer's full setup (blob counts, setup, reshape, loss weights) exactly as
the Net does. ``check_gradient`` compares backward() with central finite differences of
sum(top * R) for a fixed random R, for every bottom it is told to check and every parameter blob.
"""

from __future__ import annotations

import contextlib
import json
import types
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from minicaffe.backend import CPU_DEVICE, Device, to_numpy
from minicaffe.blob import Blob
from minicaffe.proto import caffe_pb2
from minicaffe.registry import create_layer

# The worked loss cases of the spec (tests/data/loss-cases.json), by case name.
LOSS_CASES = json.loads((Path(__file__).parent / "data" / "loss-cases.json").read_text())


def case_input(case: str, key: str):
    """Input ``key`` of loss case ``case`` as a float64 array."""
    return np.asarray(LOSS_CASES[case]["inputs"][key], dtype=np.float64)


def case_output(case: str, key: str):
    """Expected output ``key`` of loss case ``case`` as a float64 array."""
    return np.asarray(LOSS_CASES[case]["outputs"][key], dtype=np.float64)


class FakeCupy(types.ModuleType):
    """A stand-in 'cupy' backed by NumPy: lets device-placement and GPU-dispatch code run on a
    machine without a GPU (``monkeypatch.setattr(backend, "get_cupy", lambda: fake)``)."""

    def __init__(self):
        super().__init__("fakecupy")
        self.cuda = types.SimpleNamespace(
            runtime=types.SimpleNamespace(getDeviceCount=lambda: 1),
            Device=lambda i=0: contextlib.nullcontext(),
        )

    def __getattr__(self, name):
        return getattr(np, name)

    def asnumpy(self, a):
        return np.asarray(a)

    def get_array_module(self, a):
        return np


def device_for(xp) -> Device:
    return CPU_DEVICE if xp is np else Device("gpu", 0)


def make_layer(
    text: str,
    bottoms,
    *,
    phase=caffe_pb2.TRAIN,
    dtype=np.float64,
    xp=np,
    num_tops: int | None = None,
    name: str = "layer",
):
    """(layer, bottom blobs, top blobs) for a LayerParameter given as text (``type`` required).

    ``bottoms``: arrays. Tops: as many as ``top`` entries in the text, else ``num_tops``, else 1
    (auto tops of loss layers are added as the Net would).
    """
    lp = caffe_pb2.LayerParameter()
    text_format.Merge(text, lp)
    if not lp.name:
        lp.name = name
    bottom = []
    for i, arr in enumerate(bottoms):
        arr = np.asarray(to_numpy(arr), dtype=dtype)
        blob = Blob(*arr.shape, xp=xp, dtype=dtype, name=f"b{i}")
        blob.data[...] = xp.asarray(arr)
        bottom.append(blob)
    layer = create_layer(lp, phase=phase, device=device_for(xp), dtype=dtype)
    n_top = len(lp.top) if lp.top else (num_tops if num_tops is not None else 1)
    top = [Blob(xp=xp, dtype=dtype, name=f"t{i}") for i in range(n_top)]
    if layer.auto_top_blobs:
        while len(top) < layer.needed_auto_tops():
            top.append(Blob(xp=xp, dtype=dtype))
    layer.set_up(bottom, top)
    layer.param_propagate_down = [True] * len(layer.blobs)
    return layer, bottom, top


def run_forward(layer, bottom, top):
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return [to_numpy(t.data).copy() for t in top]


def check_gradient(
    layer,
    bottom,
    top,
    *,
    check_bottoms=None,
    check_params=True,
    eps=1e-6,
    rtol=1e-5,
    atol=1e-7,
    seed=0,
    top_weights=None,
    kink=None,
):
    """Assert that backward() matches finite differences of sum_i sum(top_i * R_i).

    ``check_bottoms``: indices of bottoms to check (default: all). ``top_weights``: the R_i
    (default: random normal). ``kink``: callable(x array, bottom index) -> bool mask of points
    too close to a non-differentiable point; those entries are skipped.
    """
    xp = layer.xp
    rng = np.random.default_rng(seed)
    check_bottoms = list(range(len(bottom))) if check_bottoms is None else list(check_bottoms)
    run_forward(layer, bottom, top)
    if top_weights is None:
        top_weights = [np.asarray(rng.standard_normal(t.shape)) for t in top]

    def objective() -> float:
        outs = run_forward(layer, bottom, top)
        return float(sum(np.sum(o * w) for o, w in zip(outs, top_weights, strict=True)))

    # analytic
    run_forward(layer, bottom, top)
    for t, w in zip(top, top_weights, strict=True):
        t.diff[...] = xp.asarray(np.asarray(w, dtype=t.dtype))
    for p in layer.blobs:
        p.diff.fill(0)
    for i in check_bottoms:
        bottom[i].diff.fill(0)
    propagate = [i in check_bottoms for i in range(len(bottom))]
    layer.backward(top, propagate, bottom)
    analytic = {("bottom", i): to_numpy(bottom[i].diff).copy() for i in check_bottoms}
    if check_params:
        for j, p in enumerate(layer.blobs):
            if j < len(layer.param_propagate_down) and layer.param_propagate_down[j]:
                analytic[("param", j)] = to_numpy(p.diff).copy()

    for (kind, idx), grad in analytic.items():
        blob = bottom[idx] if kind == "bottom" else layer.blobs[idx]
        host = to_numpy(blob.data).copy()
        numeric = np.zeros_like(host, dtype=np.float64)
        flat = host.reshape(-1)
        skip = np.zeros(flat.shape, bool)
        if kink is not None and kind == "bottom":
            skip = np.asarray(kink(host, idx)).reshape(-1)
        for k in range(flat.size):
            if skip[k]:
                continue
            orig = flat[k]
            flat[k] = orig + eps
            blob.data[...] = xp.asarray(host)
            f_plus = objective()
            flat[k] = orig - eps
            blob.data[...] = xp.asarray(host)
            f_minus = objective()
            flat[k] = orig
            numeric.reshape(-1)[k] = (f_plus - f_minus) / (2 * eps)
        blob.data[...] = xp.asarray(host)
        g = grad.reshape(-1)[~skip]
        n = numeric.reshape(-1)[~skip]
        scale = max(1.0, float(np.max(np.abs(n))) if n.size else 1.0)
        np.testing.assert_allclose(
            g, n, rtol=rtol, atol=atol * scale, err_msg=f"{layer.where()}: {kind} {idx} gradient"
        )
    return analytic
