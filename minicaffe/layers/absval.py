"""AbsVal: y = |x|."""

from __future__ import annotations

from minicaffe.layer import NeuronLayer
from minicaffe.layers._broadcast import keep_input, saved_input, scratch
from minicaffe.registry import register_layer


@register_layer("AbsVal")
class AbsValLayer(NeuronLayer):
    """Absolute value.

    Params: none. Bottom: x, any shape. Top: y, same shape.
    Gradient: dx = dy * sign(x) (sign(0) = 0). In place allowed: x is kept, since |x| loses the
    sign the gradient needs.
    """

    def forward(self, bottom, top):
        x = keep_input(self, bottom, top)
        self.xp.abs(x, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp, dx = self.xp, bottom[0].diff
        s = scratch(self, "sign", dx.shape)
        xp.sign(saved_input(self, bottom, top), out=s)
        xp.multiply(top[0].diff, s, out=dx)
