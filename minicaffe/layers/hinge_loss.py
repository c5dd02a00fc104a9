"""HingeLoss: one-versus-all hinge loss (L1 or squared L2), as Caffe."""

from __future__ import annotations

import numpy as np

from minicaffe.errors import ShapeError
from minicaffe.losses import LossBase, read_labels
from minicaffe.proto import caffe_pb2
from minicaffe.registry import register_layer


@register_layer("HingeLoss")
class HingeLossLayer(LossBase):
    """h[n, k] = max(0, 1 + s[n, k] * x[n, k]) with s = -1 at k = label[n], +1 elsewhere.

    x (N, ...) holds N items of C = count/N scores (every non-batch axis is a class).
    Params: hinge_loss_param.norm = L1: loss = sum(h) / N; L2: loss = sum(h^2) / N (no 1/2).
    Bottoms: x, label (N values in [0, C)). Top: loss (scalar).
    Gradient: L1 dx = lambda/N * s * [h > 0] (0 at the kink); L2 dx = 2 lambda/N * s * h.
    """

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        N = bottom[0].shape[0] if bottom[0].shape else 1
        if bottom[1].count != N:
            raise self.error(
                f"the label must hold one class index per item (N = {N}); received "
                f"label shape {bottom[1].shape} ({bottom[1].count} values) for "
                f"scores of shape {bottom[0].shape}",
                ShapeError,
            )
        self.N, self.C = N, bottom[0].count // N if N else 0

    def forward(self, bottom, top):
        xp, N, C = self.xp, self.N, self.C
        x = bottom[0].data.reshape(N, C)
        labels = read_labels(self, bottom[1].data, C, None, out=self.scratch("y", (N,), np.intp))
        idx = xp.arange(N, dtype=np.intp) * C + labels.y
        h = self.scratch("h", (N, C))
        xp.add(x, 1, out=h)
        h.reshape(-1)[idx] = 1 - x.reshape(-1)[idx]
        xp.maximum(h, 0, out=h)
        self._idx = idx
        if self.layer_param.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L2:
            top[0].data[...] = xp.vdot(h, h) / max(N, 1)
        else:
            top[0].data[...] = h.sum() / max(N, 1)

    def backward(self, top, propagate_down, bottom):
        self.refuse_label_gradients(propagate_down)
        if not propagate_down[0]:
            return
        xp, N, C = self.xp, self.N, self.C
        h = self.scratch("h", (N, C))
        d = bottom[0].diff.reshape(N, C)
        scale = self.lambda_over(top, max(N, 1))
        if self.layer_param.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L2:
            xp.multiply(h, 2 * scale, out=d)
        else:
            xp.multiply(h > 0, scale, out=d)
        flat = d.reshape(-1)
        flat[self._idx] = -flat[self._idx]
