"""minicaffe: run and train Caffe nets (prototxt + caffemodel) on NumPy or CuPy.

The API follows pycaffe: ``minicaffe.Net(model, phase)``, ``net.forward()``, ``net.blobs``,
``net.params``, ``minicaffe.TRAIN``/``TEST``, ``set_mode_cpu()``/``set_mode_gpu()``.
"""

from __future__ import annotations

# OpenBLAS's own spin-wait between GEMMs is left as it is (OPENBLAS_THREAD_TIMEOUT unset): a
# short spin made cifar10_quick 1.2x faster on a quiet machine but up to 6x slower on a host
# that steals CPU time, where every GEMM then waits for its threads to be woken. See
# docs/performance.md.
from minicaffe.backend import (
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
