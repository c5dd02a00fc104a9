"""PReLU: y = max(x, 0) + a_c * min(x, 0) with a learned slope per channel (or one shared)."""

from __future__ import annotations

from minicaffe.errors import ShapeError
from minicaffe.layer import NeuronLayer
from minicaffe.layers._broadcast import broadcast_over, keep_input, saved_input, scratch
from minicaffe.proto import caffe_pb2
from minicaffe.registry import register_layer


@register_layer("PReLU")
class PReLULayer(NeuronLayer):
    """Parametric ReLU.

    Params (prelu_param): filler (unset = constant 0.25), channel_shared = false.
    Bottom: x with >= 2 axes, channels on axis 1. Top: y, same shape.
    Blob: a, shape (C,) or () when channel_shared.
    y = x where x > 0, else a_c * x.
    Gradients: dx = dy * (1 if x > 0 else a_c); da_c += sum over n and spatial of dy * min(x, 0).
    In place allowed (x is kept, as Caffe does).
    """

    def setup(self, bottom, top):
        p = self.layer_param.prelu_param
        if bottom[0].num_axes < 2:
            raise self.error(
                f"needs a bottom with at least 2 axes (N, C, ...); received shape "
                f"{bottom[0].shape}",
                ShapeError,
            )
        self.shared = p.channel_shared
        if p.HasField("filler"):
            filler = p.filler
        else:
            filler = caffe_pb2.FillerParameter(type="constant", value=0.25)
        self.init_param(0, () if self.shared else (bottom[0].shape[1],), filler)

    def reshape(self, bottom, top):
        if bottom[0].num_axes < 2:
            raise self.error(
                f"needs a bottom with at least 2 axes (N, C, ...); received shape "
                f"{bottom[0].shape}",
                ShapeError,
            )
        self.bc = broadcast_over(self, bottom[0].shape, self.blobs[0].shape, 1, "slope")
        super().reshape(bottom, top)

    def forward(self, bottom, top):
        xp, bc, y = self.xp, self.bc, top[0].data
        x = keep_input(self, bottom, top)
        if self.device.is_gpu:
            from minicaffe.gpu import activations

            activations.prelu_forward(x, self.blobs[0].data, out=y)
            return
        # max(x, 0) + a * min(x, 0): four plain passes (masked copies are far slower in NumPy)
        t = scratch(self, "tmp", x.shape)
        xp.minimum(x, 0, out=t)
        t3 = bc.view(t)
        t3 *= bc.param(self.blobs[0].data)
        xp.maximum(x, 0, out=y)
        y += t

    def backward(self, top, propagate_down, bottom):
        xp, bc = self.xp, self.bc
        x, dy = saved_input(self, bottom, top), top[0].diff
        if self.device.is_gpu:
            from minicaffe.gpu import activations

            activations.prelu_backward(
                x, dy, self.blobs[0].data,
                out=bottom[0].diff if propagate_down[0] else None,
                slope_diff=self.blobs[0].diff if self.param_propagate_down[0] else None)
            return
        t = scratch(self, "tmp", x.shape)
        if self.param_propagate_down[0]:
            xp.minimum(x, 0, out=t)
            da = bc.reduce_product(xp, bc.view(dy), bc.view(t))
            self.blobs[0].diff += da.reshape(self.blobs[0].shape)
        if propagate_down[0]:
            # factor = 1 + (a - 1) * [x <= 0]
            xp.less_equal(x, 0, out=t)
            t3 = bc.view(t)
            t3 *= bc.param(self.blobs[0].data) - 1
            t += 1
            xp.multiply(dy, t, out=bottom[0].diff)
