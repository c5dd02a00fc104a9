"""AdaDelta (Caffe's ``type: "AdaDelta"``)."""

from __future__ import annotations

from minicaffe.solver import Solver, register_solver


@register_solver("AdaDelta")
class AdaDeltaSolver(Solver):
    """Zeiler's AdaDelta, scaled by the learning rate (Caffe's examples use base_lr 1):

        hg <- m * hg + (1 - m) * g^2
        d  =  g * sqrt((hu + delta) / (hg + delta))
        hu <- m * hu + (1 - m) * d^2;        u = lr * d;   w <- w - u

    Params read: momentum (the decay m), delta (1e-8). History: hg for every learnable param,
    then hu for every learnable param (Caffe's .solverstate order).
    """

    num_history_sets = 2

    def compute_update_value(self, pid: int, rate: float) -> None:
        blob = self.net.learnable_params[pid]
        xp, g = blob.xp, blob.diff
        hg = self.history[pid]
        hu = self.history[len(self.net.learnable_params) + pid]
        m, delta = self.param.momentum, self.param.delta
        a, b = self.scratch(pid, 0), self.scratch(pid, 1)
        xp.multiply(g, g, out=a)
        a *= 1.0 - m
        hg *= m
        hg += a
        xp.add(hu, delta, out=a)
        xp.add(hg, delta, out=b)
        a /= b
        xp.sqrt(a, out=a)
        g *= a
        xp.multiply(g, g, out=a)
        a *= 1.0 - m
        hu *= m
        hu += a
        g *= self.local_rate(pid, rate)

    fused_rule = "adadelta"

    def fused_update(self, pick, pid, lr, decay, scale) -> None:
        blob = self.net.learnable_params[pid]
        n = len(self.net.learnable_params)
        pick("adadelta_update")(
            blob.data,
            blob.diff,
            self.history[pid],
            self.history[n + pid],
            lr=lr,
            momentum=self.param.momentum,
            delta=self.param.delta,
            decay=decay,
            regularization=self.param.regularization_type,
            scale=scale,
        )
