"""The update rules, one module per Caffe solver type (imported here so they register).

The loop they share (testing, iter_size, clipping, regularisation, snapshots) is in
:mod:`minicaffe.solver`; each class here only turns a regularised gradient into a step.
"""

from minicaffe.solvers.adadelta import AdaDeltaSolver
from minicaffe.solvers.adagrad import AdaGradSolver
from minicaffe.solvers.adam import AdamSolver
from minicaffe.solvers.nesterov import NesterovSolver
from minicaffe.solvers.rmsprop import RMSPropSolver
from minicaffe.solvers.sgd import SGDSolver

__all__ = [
    "AdaDeltaSolver",
    "AdaGradSolver",
    "AdamSolver",
    "NesterovSolver",
    "RMSPropSolver",
    "SGDSolver",
]
