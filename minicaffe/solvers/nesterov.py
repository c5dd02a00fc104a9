"""Nesterov's accelerated gradient (Caffe's ``type: "Nesterov"``)."""

from __future__ import annotations

from minicaffe.solver import Solver, register_solver
from minicaffe.solvers.sgd import SGDSolver, momentum_step


@register_solver("Nesterov")
class NesterovSolver(Solver):
    """Nesterov momentum in Caffe's form:

        v' = momentum * v + lr * g;   u = (1 + momentum) * v' - momentum * v;   w <- w - u

    Params read: momentum (0). History: v, one per learnable param.
    """

    def compute_update_value(self, pid: int, rate: float) -> None:
        g = self.net.learnable_params[pid].diff
        v = self.history[pid]
        m = self.param.momentum
        old = self.scratch(pid, 0)
        old[...] = v
        momentum_step(g, v, self.local_rate(pid, rate), m)
        old *= -m
        self.net.learnable_params[pid].xp.multiply(v, 1.0 + m, out=g)
        g += old

    fused_rule = "nesterov"

    # same arguments as SGD's kernel (lr, momentum, decay, regularization, scale)
    fused_update = SGDSolver.fused_update
