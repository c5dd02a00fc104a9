"""AdaGrad (Caffe's ``type: "AdaGrad"``)."""

from __future__ import annotations

from minicaffe.solver import Solver, register_solver


@register_solver("AdaGrad")
class AdaGradSolver(Solver):
    """Per-element rates from the sum of squared gradients:

        h <- h + g^2;   u = lr * g / (sqrt(h) + delta);   w <- w - u

    Params read: delta (1e-8); momentum must be 0. History: h, one per learnable param.
    """

    def check_solver_params(self) -> None:
        self._refuse_momentum("AdaGrad")

    def compute_update_value(self, pid: int, rate: float) -> None:
        blob = self.net.learnable_params[pid]
        xp, g, h = blob.xp, blob.diff, self.history[pid]
        tmp = self.scratch(pid, 0)
        xp.multiply(g, g, out=tmp)
        h += tmp
        xp.sqrt(h, out=tmp)
        tmp += self.param.delta
        xp.divide(g, tmp, out=g)
        g *= self.local_rate(pid, rate)

    fused_rule = "adagrad"

    def fused_update(self, pick, pid, lr, decay, scale) -> None:
        blob = self.net.learnable_params[pid]
        pick("adagrad_update")(
            blob.data,
            blob.diff,
            self.history[pid],
            lr=lr,
            delta=self.param.delta,
            decay=decay,
            regularization=self.param.regularization_type,
            scale=scale,
        )
