"""Shared fixtures for the solver, snapshot and train-command tests (no tests here).

The training net is a tiny regression built only from core layers, so these tests do not wait
on any particular loss layer: HDF5Data -> InnerProduct -> (Dropout) -> Eltwise(ip - target) ->
Reduction(SUMSQ, loss_weight 1), i.e. loss = coeff * sum((W x + b - y)^2).
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from minicaffe.proto import caffe_pb2
from minicaffe.registry import discover, layer_type_list

GOLDENS = os.path.join(os.path.dirname(__file__), "data", "goldens", "solvers")
GOLDEN_CASES = sorted(os.listdir(GOLDENS)) if os.path.isdir(GOLDENS) else []


def has_layers(*types: str) -> bool:
    discover()
    known = set(layer_type_list())
    return all(t in known for t in types)


NET = """name: "reg"
layer {{ name: "data" type: "HDF5Data" top: "data" top: "target" include {{ phase: TRAIN }}
  hdf5_data_param {{ source: "train_list.txt" batch_size: 4 shuffle: {shuffle} }} }}
layer {{ name: "data" type: "HDF5Data" top: "data" top: "target" include {{ phase: TEST }}
  hdf5_data_param {{ source: "test_list.txt" batch_size: 4 }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param {{ num_output: 2 weight_filler {{ type: "gaussian" std: 0.1 }}
    bias_filler {{ type: "constant" value: 0.1 }} }} }}
{dropout}
layer {{ name: "diff" type: "Eltwise" bottom: "ip" bottom: "target" top: "diff"
  eltwise_param {{ operation: SUM coeff: 1 coeff: -1 }} }}
layer {{ name: "loss" type: "Reduction" bottom: "diff" top: "loss"
  reduction_param {{ operation: SUMSQ coeff: 0.125 }} loss_weight: 1 }}
"""

DROPOUT = """layer { name: "drop" type: "Dropout" bottom: "ip" top: "ip"
  dropout_param { dropout_ratio: 0.2 } include { phase: TRAIN } }"""

SOLVER = """net: "net.prototxt"
base_lr: 0.05
lr_policy: "fixed"
momentum: 0.9
weight_decay: 0.001
max_iter: 20
display: 0
solver_mode: CPU
random_seed: 7
"""


def write_regression(
    directory,
    *,
    n_train: int = 22,
    n_test: int = 8,
    seed: int = 0,
    shuffle: bool = False,
    dropout: bool = False,
    solver_extra: str = "",
    solver: str = SOLVER,
    scale: float = 1.0,
) -> str:
    """Data, net and solver in ``directory``; returns the solver path (run with it as CWD)."""
    import h5py

    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((5, 2)).astype(np.float32)
    for name, n in (("train", n_train), ("test", n_test)):
        x = (rng.standard_normal((n, 5)) * scale).astype(np.float32)
        with h5py.File(os.path.join(directory, f"{name}.h5"), "w") as f:
            f["data"] = x
            f["target"] = (x @ w + 0.3).astype(np.float32)
        with open(os.path.join(directory, f"{name}_list.txt"), "w") as fh:
            fh.write(f"{name}.h5\n")
    with open(os.path.join(directory, "net.prototxt"), "w") as fh:
        fh.write(
            NET.format(shuffle="true" if shuffle else "false", dropout=DROPOUT if dropout else "")
        )
    path = os.path.join(directory, "solver.prototxt")
    with open(path, "w") as fh:
        fh.write(solver + solver_extra)
    return path


def copy_golden(case: str, directory) -> str:
    """A copy of golden solver case ``case`` without its snapshots; returns the folder."""
    dst = os.path.join(directory, case)
    shutil.copytree(os.path.join(GOLDENS, case), dst)
    for name in os.listdir(dst):
        if name.startswith("snap_iter_"):
            os.remove(os.path.join(dst, name))
    return dst


def input_net(param_specs: dict | None = None, shapes=((3, 4), (2, 3))) -> caffe_pb2.NetParameter:
    """Input -> ip1 -> ip2 with no loss: for driving apply_update() with hand-set diffs."""
    net = caffe_pb2.NetParameter(name="toy")
    inp = net.layer.add(name="in", type="Input", top=["x"])
    inp.input_param.shape.add(dim=[2, shapes[0][1]])
    bottom = "x"
    for i, (out, _) in enumerate(shapes, start=1):
        lp = net.layer.add(name=f"ip{i}", type="InnerProduct", bottom=[bottom], top=[f"ip{i}"])
        lp.inner_product_param.num_output = out
        lp.inner_product_param.weight_filler.type = "gaussian"
        lp.inner_product_param.bias_filler.type = "gaussian"
        for spec in (param_specs or {}).get(lp.name, []):
            lp.param.add(**spec)
        bottom = f"ip{i}"
    return net
