"""Log: y = log_base(shift + scale * x)."""

from __future__ import annotations

import math

from minicaffe.layer import NeuronLayer
from minicaffe.layers._broadcast import keep_input, saved_input, scratch
from minicaffe.registry import register_layer


@register_layer("Log")
class LogLayer(NeuronLayer):
    """Logarithm of an affine map: y = ln(shift + scale * x) / ln(base).

    Params (log_param): base = -1 (meaning e; otherwise > 0 and != 1), scale = 1, shift = 0.
    Bottom: x, any shape. Top: y, same shape. In place allowed (x is kept).
    Gradient: dx = dy * scale / (ln(base) * (shift + scale * x)).
    """

    def setup(self, bottom, top):
        p = self.layer_param.log_param
        base = float(p.base)
        if base != -1 and (base <= 0 or base == 1):
            raise self.error(f"log_param.base must be -1 (for e) or > 0 and != 1; received {base}")
        self.base_scale = 1.0 if base == -1 else 1.0 / math.log(base)
        self.scale, self.shift = float(p.scale), float(p.shift)

    def _affine(self, x, out):
        if self.scale == 1 and self.shift == 0:
            return x
        self.xp.multiply(x, self.scale, out=out)
        if self.shift != 0:
            out += self.shift
        return out

    def forward(self, bottom, top):
        xp, y = self.xp, top[0].data
        x = keep_input(self, bottom, top)
        xp.log(self._affine(x, y), out=y)
        if self.base_scale != 1:
            y *= self.base_scale

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp, dy, dx = self.xp, top[0].diff, bottom[0].diff
        t = self._affine(saved_input(self, bottom, top), scratch(self, "affine", dy.shape))
        xp.divide(dy, t, out=dx)
        if self.scale * self.base_scale != 1:
            dx *= self.scale * self.base_scale
