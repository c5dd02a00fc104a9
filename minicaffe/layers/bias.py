"""Bias: y = x + b, with b broadcast over a run of the bottom's axes."""

from __future__ import annotations

from minicaffe.layer import Layer
from minicaffe.layers._broadcast import broadcast_over, param_shape
from minicaffe.registry import register_layer


@register_layer("Bias")
class BiasLayer(Layer):
    """Add a bias that covers bottom axes [axis, axis + b.ndim) and repeats over the others.

    Params (bias_param): axis = 1 (negative counts from the end), num_axes = 1 (-1 = to the last
    axis, 0 = a scalar), filler (unset = constant 0).
    Bottoms: x; optionally b (then no learned blob and num_axes is ignored: b's own shape must
    equal x.shape[axis:axis + b.ndim]). Top: y, x's shape. Blob (one-bottom form): b of shape
    x.shape[axis:axis + num_axes].
    Gradients: dx = dy; db = sum of dy over the axes b does not cover (ACCUMULATED into the
    learned blob, ASSIGNED to a second bottom). In place allowed.
    """

    min_bottom_blobs = 1
    max_bottom_blobs = 2
    exact_num_top_blobs = 1

    def setup(self, bottom, top):
        p = self.layer_param.bias_param
        if len(bottom) == 1:
            shape = param_shape(self, bottom[0].shape, p.axis, p.num_axes)
            self.init_param(0, shape, p.filler if p.HasField("filler") else None)
        elif self.blobs:
            raise self.error(
                "takes its bias from bottom 1, so it has no parameter blob; "
                f"received {len(self.blobs)}"
            )

    def _bias(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def reshape(self, bottom, top):
        b = self._bias(bottom)
        self.bc = broadcast_over(
            self, bottom[0].shape, b.shape, self.layer_param.bias_param.axis, "bias"
        )
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        bc = self.bc
        self.xp.add(
            bc.view(bottom[0].data), bc.param(self._bias(bottom).data), out=bc.view(top[0].data)
        )

    def backward(self, top, propagate_down, bottom):
        bc, dy = self.bc, top[0].diff
        if len(bottom) > 1 and propagate_down[1]:
            bottom[1].diff[...] = bc.reduce(self.xp, bc.view(dy)).reshape(bottom[1].shape)
        elif len(bottom) == 1 and self.param_propagate_down[0]:
            self.blobs[0].diff += bc.reduce(self.xp, bc.view(dy)).reshape(self.blobs[0].shape)
        if propagate_down[0] and top[0] is not bottom[0]:
            bottom[0].diff[...] = dy
