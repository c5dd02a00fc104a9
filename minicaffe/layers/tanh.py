"""TanH: y = tanh(x)."""

from __future__ import annotations

from minicaffe.layer import NeuronLayer
from minicaffe.layers._broadcast import scratch
from minicaffe.registry import register_layer


@register_layer("TanH")
class TanHLayer(NeuronLayer):
    """Hyperbolic tangent.

    Params (tanh_param): engine (parsed, one engine). Bottom: x, any shape. Top: y, same shape.
    In place allowed: the gradient reads only y. Gradient: dx = dy * (1 - y^2).
    """

    def forward(self, bottom, top):
        self.xp.tanh(bottom[0].data, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp, y, dy, dx = self.xp, top[0].data, top[0].diff, bottom[0].diff
        if self.device.is_gpu:
            from minicaffe.gpu import activations

            activations.tanh_backward(y, dy, out=dx)
            return
        t = scratch(self, "grad", y.shape)
        xp.multiply(y, y, out=t)
        xp.subtract(1, t, out=t)
        xp.multiply(dy, t, out=dx)
