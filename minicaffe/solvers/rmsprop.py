"""RMSProp (Caffe's ``type: "RMSProp"``)."""

from __future__ import annotations

from minicaffe.solver import Solver, register_solver


@register_solver("RMSProp")
class RMSPropSolver(Solver):
    """Rates from a running mean of squared gradients:

        h <- rms_decay * h + (1 - rms_decay) * g^2;   u = lr * g / (sqrt(h) + delta)

    Params read: rms_decay (0.99, in [0, 1)), delta (1e-8); momentum must be 0.
    History: h, one per learnable param.
    """

    def check_solver_params(self) -> None:
        p = self.param
        self._refuse_momentum("RMSProp")
        if not 0 <= p.rms_decay < 1:
            raise self._error(f"rms_decay must be in [0, 1); received {p.rms_decay}")

    def compute_update_value(self, pid: int, rate: float) -> None:
        blob = self.net.learnable_params[pid]
        xp, g, h = blob.xp, blob.diff, self.history[pid]
        decay = self.param.rms_decay
        tmp = self.scratch(pid, 0)
        xp.multiply(g, g, out=tmp)
        tmp *= 1.0 - decay
        h *= decay
        h += tmp
        xp.sqrt(h, out=tmp)
        tmp += self.param.delta
        xp.divide(g, tmp, out=g)
        g *= self.local_rate(pid, rate)

    fused_rule = "rmsprop"

    def fused_update(self, pick, pid, lr, decay, scale) -> None:
        blob = self.net.learnable_params[pid]
        pick("rmsprop_update")(
            blob.data,
            blob.diff,
            self.history[pid],
            lr=lr,
            rms_decay=self.param.rms_decay,
            delta=self.param.delta,
            decay=decay,
            regularization=self.param.regularization_type,
            scale=scale,
        )
