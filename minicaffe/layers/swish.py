"""Swish: y = x * sigmoid(beta * x)."""

from __future__ import annotations

from minicaffe.layer import NeuronLayer
from minicaffe.layers._broadcast import scratch
from minicaffe.registry import register_layer


@register_layer("Swish")
class SwishLayer(NeuronLayer):
    """Swish (SiLU when beta = 1).

    Params (swish_param): beta = 1. Bottom: x, any shape. Top: y, same shape.
    Keeps s = sigmoid(beta * x) from forward. Gradient: dx = dy * (beta * y + s * (1 - beta * y)).
    In place allowed: the gradient reads y and s only.
    """

    def setup(self, bottom, top):
        self.beta = float(self.layer_param.swish_param.beta)

    def forward(self, bottom, top):
        xp, x, y = self.xp, bottom[0].data, top[0].data
        s = scratch(self, "sigmoid", x.shape)
        xp.multiply(x, 0.5 * self.beta, out=s)
        xp.tanh(s, out=s)
        s *= 0.5
        s += 0.5
        xp.multiply(x, s, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp, y, dy, dx = self.xp, top[0].data, top[0].diff, bottom[0].diff
        s = scratch(self, "sigmoid", y.shape)
        # beta*y + s*(1 - beta*y) == s + beta*y*(1 - s)
        t = scratch(self, "grad", y.shape)
        xp.subtract(1, s, out=t)
        t *= y
        if self.beta != 1:
            t *= self.beta
        t += s
        xp.multiply(dy, t, out=dx)
