"""Exp: y = base ^ (shift + scale * x)."""

from __future__ import annotations

import math

from minicaffe.layer import NeuronLayer
from minicaffe.registry import register_layer


@register_layer("Exp")
class ExpLayer(NeuronLayer):
    """Exponential of an affine map, computed as y = base^shift * exp(scale * ln(base) * x).

    Params (exp_param): base = -1 (meaning e; otherwise must be > 0), scale = 1, shift = 0.
    Bottom: x, any shape. Top: y, same shape. In place allowed: the gradient reads only y.
    Gradient: dx = dy * y * scale * ln(base).
    """

    def setup(self, bottom, top):
        p = self.layer_param.exp_param
        base = float(p.base)
        if base != -1 and base <= 0:
            raise self.error(f"exp_param.base must be -1 (for e) or > 0; received {base}")
        log_base = 1.0 if base == -1 else math.log(base)
        self.inner_scale = log_base * float(p.scale)
        self.outer_scale = 1.0 if p.shift == 0 else math.exp(log_base * float(p.shift))

    def forward(self, bottom, top):
        xp, y = self.xp, top[0].data
        xp.multiply(bottom[0].data, self.inner_scale, out=y)
        xp.exp(y, out=y)
        if self.outer_scale != 1:
            y *= self.outer_scale

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp, dx = self.xp, bottom[0].diff
        xp.multiply(top[0].diff, top[0].data, out=dx)
        if self.inner_scale != 1:
            dx *= self.inner_scale
