"""ELU: y = max(x, 0) + alpha * (exp(min(x, 0)) - 1)."""

from __future__ import annotations

from minicaffe.layer import NeuronLayer
from minicaffe.layers._broadcast import keep_input, saved_input, scratch
from minicaffe.registry import register_layer


@register_layer("ELU")
class ELULayer(NeuronLayer):
    """Exponential linear unit.

    Params (elu_param): alpha = 1. Bottom: x, any shape. Top: y, same shape.
    Gradient: dx = dy where x > 0, else dy * (y + alpha).
    In place allowed: for alpha >= 0, y > 0 exactly where x > 0, so the output tells the branch;
    for alpha < 0 a copy of x is kept.
    """

    def setup(self, bottom, top):
        self.alpha = float(self.layer_param.elu_param.alpha)

    def forward(self, bottom, top):
        xp, y = self.xp, top[0].data
        x = keep_input(self, bottom, top, needed=self.alpha < 0)
        if self.device.is_gpu:
            from minicaffe.gpu import activations

            activations.elu_forward(x, self.alpha, out=y)
            return
        t = scratch(self, "neg", x.shape)
        xp.minimum(x, 0, out=t)
        xp.expm1(t, out=t)
        t *= self.alpha
        xp.maximum(x, 0, out=y)
        y += t

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp, y, dy = self.xp, top[0].data, top[0].diff
        x = saved_input(self, bottom, top) if self.alpha < 0 else bottom[0].data
        if self.device.is_gpu:
            from minicaffe.gpu import activations

            activations.elu_backward(x, y, dy, self.alpha, out=bottom[0].diff)
            return
        # factor = 1 + [x <= 0] * (y + alpha - 1)
        m = scratch(self, "mask", y.shape)
        xp.less_equal(x, 0, out=m)
        t = scratch(self, "neg", y.shape)
        xp.add(y, self.alpha - 1, out=t)
        t *= m
        t += 1
        xp.multiply(dy, t, out=bottom[0].diff)
