"""Stochastic gradient descent with momentum (Caffe's ``type: "SGD"``)."""

from __future__ import annotations

from minicaffe import blas
from minicaffe.solver import Solver, register_solver


def momentum_step(g, v, lr: float, momentum: float) -> None:
    """``v = momentum * v + lr * g`` in place (SGD's and Nesterov's history; ``g`` may be
    scaled by ``lr`` on the way): one axpby pass through OpenBLAS, as Caffe's
    caffe_cpu_axpby, where it applies, else array operations."""
    if not blas.axpby(lr, g, momentum, v):
        g *= lr
        v *= momentum
        v += g


@register_solver("SGD")
class SGDSolver(Solver):
    """SGD with momentum, the learning rate kept inside the momentum buffer:

        v <- momentum * v + lr * g;   w <- w - v

    ``g`` is the clipped, iter_size-normalised, regularised gradient; ``lr`` = rate * lr_mult.
    Params read: momentum (0). History: v, one per learnable param. After the step the param's
    diff holds the update applied (as in Caffe).
    """

    def compute_update_value(self, pid: int, rate: float) -> None:
        g = self.net.learnable_params[pid].diff
        v = self.history[pid]
        momentum_step(g, v, self.local_rate(pid, rate), self.param.momentum)
        g[...] = v

    fused_rule = "sgd"

    def fused_update(self, pick, pid, lr, decay, scale) -> None:
        """One fused kernel per parameter; shared by the momentum rules (SGD, Nesterov)."""
        blob = self.net.learnable_params[pid]
        pick(f"{self.fused_rule}_update")(
            blob.data,
            blob.diff,
            self.history[pid],
            lr=lr,
            momentum=self.param.momentum,
            decay=decay,
            regularization=self.param.regularization_type,
            scale=scale,
        )
