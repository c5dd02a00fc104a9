"""Power: y = (shift + scale * x) ^ power."""

from __future__ import annotations

from minicaffe.layer import NeuronLayer
from minicaffe.layers._broadcast import keep_input, saved_input, scratch
from minicaffe.registry import register_layer


@register_layer("Power")
class PowerLayer(NeuronLayer):
    """Affine map raised to a power.

    Params (power_param): power = 1, scale = 1, shift = 0. Bottom: x, any shape. Top: y, same.
    When power * scale == 0 the output is the constant 1 (power == 0) or shift^power, and the
    gradient is 0. Otherwise dx = dy * power * scale * (shift + scale * x)^(power - 1).
    In place allowed (x is kept when the gradient needs it, i.e. power not in {0, 1}).
    """

    def setup(self, bottom, top):
        p = self.layer_param.power_param
        self.power, self.scale, self.shift = float(p.power), float(p.scale), float(p.shift)
        self.diff_scale = self.power * self.scale
        # only a true power needs x in backward
        self.needs_x = self.diff_scale != 0 and self.power != 1

    def forward(self, bottom, top):
        xp, y = self.xp, top[0].data
        if self.diff_scale == 0:
            y.fill(1.0 if self.power == 0 else self.shift**self.power)
            return
        x = keep_input(self, bottom, top, needed=self.needs_x)
        xp.multiply(x, self.scale, out=y)
        if self.shift != 0:
            y += self.shift
        if self.power == 2:
            xp.square(y, out=y)
        elif self.power != 1:
            xp.power(y, self.power, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp, dy, dx = self.xp, top[0].diff, bottom[0].diff
        if self.diff_scale == 0:
            dx.fill(0)
            return
        if not self.needs_x:
            xp.multiply(dy, self.diff_scale, out=dx)
            return
        t = scratch(self, "base", dy.shape)
        xp.multiply(saved_input(self, bottom, top), self.scale, out=t)
        if self.shift != 0:
            t += self.shift
        if self.power != 2:
            xp.power(t, self.power - 1, out=t)
        t *= self.diff_scale
        xp.multiply(dy, t, out=dx)
