"""BNLL (binomial normal log likelihood): y = log(1 + exp(x))."""

from __future__ import annotations

from minicaffe.layer import NeuronLayer
from minicaffe.layers._broadcast import scratch
from minicaffe.registry import register_layer


@register_layer("BNLL")
class BNLLLayer(NeuronLayer):
    """Softplus, y = log(1 + e^x), evaluated stably as max(x, 0) + log1p(exp(-|x|)).

    Params: none. Bottom: x, any shape. Top: y, same shape.
    Gradient: dx = dy * sigmoid(x), computed from the output as dy * (1 - e^-y) (e^y = 1 + e^x),
    so in place works without keeping x.
    """

    def forward(self, bottom, top):
        xp, x, y = self.xp, bottom[0].data, top[0].data
        t = scratch(self, "tmp", x.shape)
        xp.abs(x, out=t)
        xp.negative(t, out=t)
        xp.exp(t, out=t)
        xp.log1p(t, out=t)
        xp.maximum(x, 0, out=y)  # y may be x (in place); t no longer needs x
        y += t

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp, y, dx = self.xp, top[0].data, bottom[0].diff
        t = scratch(self, "tmp", y.shape)
        xp.negative(y, out=t)
        xp.expm1(t, out=t)  # e^-y - 1 = -sigmoid(x)
        xp.negative(t, out=t)
        xp.multiply(top[0].diff, t, out=dx)
