"""Clip: y = min(max(x, min), max)."""

from __future__ import annotations

from minicaffe.layer import NeuronLayer
from minicaffe.layers._broadcast import keep_input, saved_input, scratch
from minicaffe.registry import register_layer


@register_layer("Clip")
class ClipLayer(NeuronLayer):
    """Clamp to [min, max].

    Params (clip_param): min, max (both required; min <= max). Bottom: x, any shape.
    Top: y, same shape. Gradient: dx = dy where min <= x <= max, else 0.
    In place allowed (x is kept: the clamped output cannot tell a clipped value from a boundary).
    """

    def setup(self, bottom, top):
        p = self.layer_param.clip_param
        if not (p.HasField("min") and p.HasField("max")):
            raise self.error("clip_param.min and clip_param.max are both required")
        self.lo, self.hi = float(p.min), float(p.max)
        if self.lo > self.hi:
            raise self.error(
                f"clip_param.min must be <= max; received min {self.lo}, max {self.hi}"
            )

    def forward(self, bottom, top):
        xp, y = self.xp, top[0].data
        x = keep_input(self, bottom, top)
        xp.maximum(x, self.lo, out=y)
        xp.minimum(y, self.hi, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp, x = self.xp, saved_input(self, bottom, top)
        inside = scratch(self, "inside", x.shape, bool)
        above = scratch(self, "above", x.shape, bool)
        xp.greater_equal(x, self.lo, out=inside)
        xp.less_equal(x, self.hi, out=above)
        inside &= above
        xp.multiply(top[0].diff, inside, out=bottom[0].diff)
