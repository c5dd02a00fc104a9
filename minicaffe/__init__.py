"""minicaffe: run and train Caffe nets (prototxt + caffemodel) on NumPy or CuPy.

The API follows pycaffe: ``minicaffe.Net(model, phase)``, ``net.forward()``, ``net.blobs``,
``net.params``, ``minicaffe.TRAIN``/``TEST``, ``set_mode_cpu()``/``set_mode_gpu()``.
"""

from __future__ import annotations

import os as _os

# OpenBLAS threads spin for about 2^28 cycles after each GEMM before they sleep; meanwhile they
# take the cores from minicaffe's own threads (copies, pooling, elementwise passes), which
# measured 1.2x slower for a cifar10_quick train step. A short spin, unless the user chose one;
# OpenBLAS reads it when it loads, so this takes effect when minicaffe is imported before NumPy
# (the CLI always is). See docs/performance.md.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from minicaffe.backend import (  # noqa: E402
    Device,
    gpu_available,
    set_device,
    set_mode_cpu,
    set_mode_gpu,
    set_random_seed,
)
from minicaffe.blob import Blob
from minicaffe.classifier import Classifier
from minicaffe.compat import install_caffe_alias
from minicaffe.detector import Detector
from minicaffe.errors import (
    DataError,
    DeviceError,
    LabelError,
    LayerError,
    MinicaffeError,
    NetBuildError,
    NonFiniteError,
    PrototxtError,
    ShapeError,
    SolverError,
    UnknownLayerError,
    UpgradeError,
    WeightsError,
)
from minicaffe.layer import Layer, LossLayer, NeuronLayer
from minicaffe.net import TEST, TRAIN, CopyReport, Net
from minicaffe.net_spec import NetSpec, to_proto
from minicaffe.prototxt import read_net_param, read_solver_param
from minicaffe.registry import layer_type_list, register_layer
from minicaffe.solver import Solver, get_solver
from minicaffe.solvers import (
    AdaDeltaSolver,
    AdaGradSolver,
    AdamSolver,
    NesterovSolver,
    RMSPropSolver,
    SGDSolver,
)

__version__ = "0.1.0"

__all__ = [
    "Blob", "CopyReport", "DataError", "Device", "DeviceError", "LabelError", "Layer",
    "LayerError", "LossLayer", "MinicaffeError", "Net", "NetBuildError", "NeuronLayer",
    "NonFiniteError", "PrototxtError", "ShapeError", "SolverError", "TEST", "TRAIN",
    "UnknownLayerError", "UpgradeError", "WeightsError", "gpu_available", "layer_type_list",
    "read_net_param", "read_solver_param", "register_layer", "set_device", "set_mode_cpu",
    "set_mode_gpu", "set_random_seed", "__version__",
    "Solver", "get_solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
    "AdaDeltaSolver", "AdamSolver",
    "Classifier", "Detector", "NetSpec", "install_caffe_alias", "to_proto",
]
