"""Adam (Caffe's ``type: "Adam"``)."""

from __future__ import annotations

import math

import numpy as np

from minicaffe.solver import Solver, register_solver


@register_solver("Adam")
class AdamSolver(Solver):
    """Adam with Caffe's bias correction folded into the rate (t = iter + 1):

        m <- b1 * m + (1 - b1) * g;   v <- b2 * v + (1 - b2) * g^2
        u = lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + delta);   w <- w - u

    Params read: momentum (b1), momentum2 (b2, 0.999), delta (1e-8). History: m for every
    learnable param, then v for every learnable param.
    """

    num_history_sets = 2

    def compute_update_value(self, pid: int, rate: float) -> None:
        blob = self.net.learnable_params[pid]
        xp, g = blob.xp, blob.diff
        m = self.history[pid]
        v = self.history[len(self.net.learnable_params) + pid]
        b1, b2 = self.param.momentum, self.param.momentum2
        t = self.iter + 1
        correction = np.float32(math.sqrt(1.0 - b2**t) / (1.0 - b1**t))
        tmp = self.scratch(pid, 0)
        xp.multiply(g, 1.0 - b1, out=tmp)
        m *= b1
        m += tmp
        xp.multiply(g, g, out=tmp)
        tmp *= 1.0 - b2
        v *= b2
        v += tmp
        xp.sqrt(v, out=tmp)
        tmp += self.param.delta
        xp.divide(m, tmp, out=g)
        g *= float(np.float32(self.local_rate(pid, rate)) * correction)

    fused_rule = "adam"

    def fused_update(self, pick, pid, lr, decay, scale) -> None:
        blob = self.net.learnable_params[pid]
        n = len(self.net.learnable_params)
        pick("adam_update")(
            blob.data,
            blob.diff,
            self.history[pid],
            self.history[n + pid],
            lr=lr,
            t=self.iter + 1,
            beta1=self.param.momentum,
            beta2=self.param.momentum2,
            delta=self.param.delta,
            decay=decay,
            regularization=self.param.regularization_type,
            scale=scale,
        )
