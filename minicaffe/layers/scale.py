"""Scale: y = x * s (+ b), with s (and b) broadcast over a run of the bottom's axes."""

from __future__ import annotations

from minicaffe.layer import Layer
from minicaffe.layers._broadcast import broadcast_over, param_shape, scratch
from minicaffe.proto import caffe_pb2
from minicaffe.registry import register_layer


@register_layer("Scale")
class ScaleLayer(Layer):
    """Multiply by a scale covering bottom axes [axis, axis + s.ndim), optionally add a bias.

    Params (scale_param): axis = 1 (negative counts from the end), num_axes = 1 (-1 = to the
    last axis, 0 = a scalar), filler (unset = constant 1), bias_term = false, bias_filler
    (unset = constant 0).
    Bottoms: x; optionally s (then s is not learned and num_axes is ignored: s's own shape must
    equal x.shape[axis:axis + s.ndim]). Top: y, x's shape.
    Blobs: one-bottom form [s, (b)]; two-bottom form [(b)], b shaped like s.
    y = x * s + b. Gradients: dx = dy * s; ds = sum of dy * x and db = sum of dy over the axes
    s does not cover (ACCUMULATED into learned blobs, ASSIGNED to the second bottom).
    In place allowed (x is kept for ds, as Caffe does).
    """

    min_bottom_blobs = 1
    max_bottom_blobs = 2
    exact_num_top_blobs = 1

    def setup(self, bottom, top):
        p = self.layer_param.scale_param
        if len(bottom) == 1:
            shape = param_shape(self, bottom[0].shape, p.axis, p.num_axes)
            if p.HasField("filler"):
                filler = p.filler
            else:
                filler = caffe_pb2.FillerParameter(type="constant", value=1.0)
            self.init_param(0, shape, filler)
        else:
            shape = bottom[1].shape
            param_shape(self, bottom[0].shape, p.axis, len(shape))  # axis/rank check
        self.bias_index = len(bottom) % 2  # 1 after a learned scale, else 0
        if p.bias_term:
            self.init_param(
                self.bias_index, shape, p.bias_filler if p.HasField("bias_filler") else None
            )
        n_blobs = self.bias_index + int(p.bias_term)
        if len(self.blobs) != n_blobs:
            raise self.error(
                f"expects {n_blobs} parameter blob(s) (bias_term "
                f"{str(p.bias_term).lower()}, {len(bottom)} bottoms); received "
                f"{len(self.blobs)}"
            )

    def _scale(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def reshape(self, bottom, top):
        s = self._scale(bottom)
        self.bc = broadcast_over(
            self, bottom[0].shape, s.shape, self.layer_param.scale_param.axis, "scale"
        )
        if self.layer_param.scale_param.bias_term:
            broadcast_over(
                self, bottom[0].shape, self.blobs[self.bias_index].shape, self.bc.axis, "bias"
            )
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def _needs_x(self, bottom):
        return len(bottom) > 1 or self.param_propagate_down[0]

    def forward(self, bottom, top):
        xp, bc, x = self.xp, self.bc, bottom[0].data
        if top[0] is bottom[0] and self._needs_x(bottom):
            scratch(self, "input", x.shape)[...] = x
        y3 = bc.view(top[0].data)
        xp.multiply(bc.view(x), bc.param(self._scale(bottom).data), out=y3)
        if self.layer_param.scale_param.bias_term:
            y3 += bc.param(self.blobs[self.bias_index].data)

    def backward(self, top, propagate_down, bottom):
        xp, bc, dy = self.xp, self.bc, top[0].diff
        two = len(bottom) > 1
        if self.layer_param.scale_param.bias_term and self.param_propagate_down[self.bias_index]:
            b = self.blobs[self.bias_index]
            b.diff += bc.reduce(xp, bc.view(dy)).reshape(b.shape)
        if (two and propagate_down[1]) or (not two and self.param_propagate_down[0]):
            x = scratch(self, "input", dy.shape) if top[0] is bottom[0] else bottom[0].data
            ds = bc.reduce_product(xp, bc.view(dy), bc.view(x)).reshape(self._scale(bottom).shape)
            if two:
                bottom[1].diff[...] = ds
            else:
                self.blobs[0].diff += ds
        if propagate_down[0]:
            xp.multiply(
                bc.view(dy), bc.param(self._scale(bottom).data), out=bc.view(bottom[0].diff)
            )
