"""Softmax along one axis."""

from __future__ import annotations

from minicaffe.layer import Layer
from minicaffe.registry import register_layer


def softmax(xp, x, axis: int, out):
    """out = exp(x - max) / sum(exp(x - max)) along ``axis`` (``out`` may be ``x``)."""
    m = x.max(axis=axis, keepdims=True)
    xp.subtract(x, m, out=out)
    xp.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)
    return out


@register_layer("Softmax")
class SoftmaxLayer(Layer):
    """y_i = exp(x_i) / sum_j exp(x_j) over ``axis``.

    Params (softmax_param): axis = 1 (negative counts from the end), engine.
    Bottom: x, any shape. Top: y, same shape. In place allowed.
    Gradient: dx = (dy - sum(dy * y, axis)) * y.
    """

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom, top):
        self.axis = bottom[0].canonical_axis(self.layer_param.softmax_param.axis)

    def reshape(self, bottom, top):
        self.axis = bottom[0].canonical_axis(self.layer_param.softmax_param.axis)
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        softmax(self.xp, bottom[0].data, self.axis, top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y, dy, dx = top[0].data, top[0].diff, bottom[0].diff
        dot = (dy * y).sum(axis=self.axis, keepdims=True)
        self.xp.subtract(dy, dot, out=dx)
        dx *= y
