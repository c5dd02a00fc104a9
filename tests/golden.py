"""Replay the golden cases recorded from real BVLC Caffe (tests/data/goldens, see its README).

    replay("conv_basic")            # forward values, loss, and every recorded gradient

Each case is a prototxt with Input layers plus an npz of inputs, parameters, outputs and diffs.
The recipe is the one in the goldens README: set params and inputs, forward, compare ``out::``
(and ``param_after::``, ``loss``); then, when the case has a backward, clear param diffs, write
``topdiff::`` into the top diffs, backward, compare ``diff::`` and ``paramdiff::``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from minicaffe.backend import CPU_DEVICE, Device, to_numpy

GOLDENS = Path(__file__).parent / "data" / "goldens"


def case_names(kind: str | None = None, group: str | None = None) -> list[str]:
    index = json.loads((GOLDENS / "index.json").read_text())
    cases = index["cases"] if isinstance(index, dict) and "cases" in index else index
    return [
        c["name"]
        for c in cases
        if (kind is None or c["kind"] == kind) and (group is None or c["group"] == group)
    ]


def load_case(name: str):
    z = np.load(GOLDENS / f"{name}.npz")
    meta = json.loads(str(z["meta"]))
    return GOLDENS / f"{name}.prototxt", {k: z[k] for k in z.files if k != "meta"}, meta


def replay(
    name: str,
    *,
    xp=np,
    dtype=np.float32,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    backward: bool = True,
):
    """Run case ``name`` through minicaffe and assert every recorded array matches."""
    from minicaffe import TEST, TRAIN, Net

    path, arrays, meta = load_case(name)
    device = CPU_DEVICE if xp is np else Device("gpu", 0)
    net = Net(str(path), TRAIN if meta["phase"] == "TRAIN" else TEST, device=device, dtype=dtype)
    for key, value in arrays.items():
        kind, *rest = key.split("::")
        if kind == "param":
            layer, i = rest[0], int(rest[1])
            net.params[layer][i].data[...] = xp.asarray(value.astype(dtype))
    reshaped = False
    for key, value in arrays.items():
        if key.startswith("in::"):
            blob = net.blobs[key[4:]]
            if blob.shape != value.shape:
                blob.reshape(value.shape)
                reshaped = True
            blob.data[...] = xp.asarray(value.astype(dtype))
    if reshaped:
        net.reshape()
    loss = net.forward_prefilled()

    def check(got, want, what):
        np.testing.assert_allclose(
            np.asarray(to_numpy(got), dtype=np.float64),
            want,
            rtol=rtol,
            atol=atol,
            err_msg=f"golden {name}: {what}",
        )

    for key, value in arrays.items():
        kind, *rest = key.split("::")
        if kind == "out":
            check(net.blobs[rest[0]].data, value, key)
        elif kind == "param_after":
            check(net.params[rest[0]][int(rest[1])].data, value, key)
    if "loss" in arrays:
        check(np.asarray(to_numpy(loss)), arrays["loss"], "loss")
    if not (backward and meta.get("backward")):
        return net
    net.clear_param_diffs()
    for layer in net.layers:  # param diffs of non-owner (shared) blobs share the owner's memory
        for blob in layer.blobs:
            blob.zero_diff()
    for key, value in arrays.items():
        if key.startswith("topdiff::"):
            net.blobs[key[9:]].diff[...] = xp.asarray(value.astype(dtype))
    net.backward_from_to()
    for key, value in arrays.items():
        kind, *rest = key.split("::")
        if kind == "diff":
            check(net.blobs[rest[0]].diff, value, key)
        elif kind == "paramdiff":
            check(net.params[rest[0]][int(rest[1])].diff, value, key)
    return net
