"""EuclideanLoss: half the squared distance between two blobs per item, as Caffe."""

from __future__ import annotations

from minicaffe.errors import ShapeError
from minicaffe.losses import LossBase
from minicaffe.registry import register_layer


@register_layer("EuclideanLoss")
class EuclideanLossLayer(LossBase):
    """loss = sum((a - b)^2) / (2 N), N = shape(0) of a.

    No parameters. Bottoms: a, b (same first axis, same count). Top: loss (scalar).
    Gradient (to both bottoms, force_backward included): da = lambda/N * (a - b), db = -da.
    Caffe limits the blobs to 4 axes (legacy num()); minicaffe accepts any number.
    """

    label_bottoms: dict[int, str] = {}

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].count != bottom[1].count:
            raise self.error(
                f"both inputs must have the same dimension (count per item); "
                f"received shapes {bottom[0].shape} and {bottom[1].shape}",
                ShapeError,
            )

    def forward(self, bottom, top):
        xp = self.xp
        d = self.scratch("d", (bottom[0].count,))
        xp.subtract(bottom[0].data.reshape(-1), bottom[1].data.reshape(-1), out=d)
        num = bottom[0].shape[0] if bottom[0].shape else 1
        self._num = max(num, 1)
        top[0].data[...] = xp.dot(d, d) / (2 * self._num)

    def backward(self, top, propagate_down, bottom):
        xp = self.xp
        d = self.scratch("d", (bottom[0].count,))
        scale = self.lambda_over(top, self._num)
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                xp.multiply(d, sign * scale, out=bottom[i].diff.reshape(-1))
