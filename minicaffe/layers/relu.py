"""ReLU: y = max(0, x) + negative_slope * min(0, x)."""

from __future__ import annotations

import numpy as np

from minicaffe.layer import NeuronLayer, elementwise_grad_io, elementwise_io
from minicaffe.registry import register_layer


@register_layer("ReLU")
class ReLULayer(NeuronLayer):
    """Rectified linear unit (leaky when negative_slope != 0).

    Params (relu_param): negative_slope = 0, engine. Bottom: x, any shape. Top: y, same shape.
    In place allowed: the gradient test ``x > 0`` reads the same sign from y.
    Gradient: dx = dy * (1 if x > 0 else negative_slope).
    """

    def setup(self, bottom, top):
        self.slope = float(self.layer_param.relu_param.negative_slope)

    def takes_chwn(self, bottom_index: int) -> bool:
        return self.xp is np  # elementwise: any order, kept from bottom to top

    def forward(self, bottom, top):
        xp = self.xp
        x, y = elementwise_io(bottom[0], top[0])
        if self.device.is_gpu and self.slope != 0:  # one fused pass (slope 0 is one maximum)
            from minicaffe.gpu import activations

            activations.relu_forward(x, self.slope, out=y)
            return
        if self.slope == 0:
            xp.maximum(x, 0, out=y)
        else:
            # max(x, 0) + slope * min(x, 0) == where(x > 0, x, slope * x)
            xp.multiply(x, xp.where(x > 0, 1, self.slope).astype(x.dtype, copy=False), out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        x, dy, dx = elementwise_grad_io(bottom[0], top[0])
        if self.device.is_gpu:
            from minicaffe.gpu import activations

            activations.relu_backward(x, dy, self.slope, out=dx)
            return
        if self.slope == 0:
            xp.multiply(dy, x > 0, out=dx)
        else:
            xp.multiply(dy, xp.where(x > 0, 1, self.slope).astype(dy.dtype, copy=False), out=dx)
