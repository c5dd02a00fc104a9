"""Sigmoid: y = 1 / (1 + exp(-x))."""

from __future__ import annotations

from minicaffe.layer import NeuronLayer
from minicaffe.layers._broadcast import scratch
from minicaffe.registry import register_layer


@register_layer("Sigmoid")
class SigmoidLayer(NeuronLayer):
    """Logistic sigmoid, evaluated as y = 0.5 * tanh(0.5 * x) + 0.5 (no overflow for any x).

    Params (sigmoid_param): engine (parsed, one engine). Bottom: x, any shape. Top: y, same shape.
    In place allowed: the gradient reads only y. Gradient: dx = dy * y * (1 - y).
    """

    def forward(self, bottom, top):
        xp, y = self.xp, top[0].data
        if self.device.is_gpu:
            from minicaffe.gpu import activations

            activations.sigmoid_forward(bottom[0].data, out=y)
            return
        xp.multiply(bottom[0].data, 0.5, out=y)
        xp.tanh(y, out=y)
        y *= 0.5
        y += 0.5

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp, y, dy, dx = self.xp, top[0].data, top[0].diff, bottom[0].diff
        if self.device.is_gpu:
            from minicaffe.gpu import activations

            activations.sigmoid_backward(y, dy, out=dx)
            return
        t = scratch(self, "grad", y.shape)
        xp.subtract(1, y, out=t)
        t *= y
        xp.multiply(dy, t, out=dx)
