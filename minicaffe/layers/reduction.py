"""Reduction: sums (of values, magnitudes or squares) or means over all axes from ``axis`` on."""

from __future__ import annotations

from minicaffe.errors import ShapeError
from minicaffe.layer import Layer
from minicaffe.registry import register_layer

SUM, ASUM, SUMSQ, MEAN = 1, 2, 3, 4
_OP_NAMES = {SUM: "SUM", ASUM: "ASUM", SUMSQ: "SUMSQ", MEAN: "MEAN"}


@register_layer("Reduction")
class ReductionLayer(Layer):
    """y[n] = coeff * r(x[n, :]) with x viewed as (prod(shape[:axis]), prod(shape[axis:])).

    r: SUM = sum x, ASUM = sum |x|, SUMSQ = sum x^2, MEAN = sum x / D (D = prod(shape[axis:])).
    Params (reduction_param): operation = SUM; axis = 0 (negative counts from the end); coeff = 1.
    Bottom: x. Top: shape[:axis] (axis 0 gives a 0-d top).
    Gradient: dx = coeff * dy[n] * (1, sign(x), 2x, 1/D) for (SUM, ASUM, SUMSQ, MEAN).
    """

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom, top):
        p = self.layer_param.reduction_param
        self.op = int(p.operation)
        if self.op not in _OP_NAMES:
            raise self.error(f"unknown reduction_param.operation {self.op}")
        self.coeff = float(p.coeff)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        axis = self.layer_param.reduction_param.axis
        if not -len(shape) <= axis < max(len(shape), 1):
            raise self.error(
                f"reduction_param.axis {axis} is out of range for bottom shape {shape}", ShapeError
            )
        self.axis = axis % len(shape) if shape else 0
        self.num = bottom[0].count_range(0, self.axis)
        self.dim = bottom[0].count_range(self.axis)
        if top[0] is bottom[0]:
            raise self.error("Reduction cannot run in place")
        top[0].reshape(shape[: self.axis])
        self.scale = self.coeff / self.dim if self.op == MEAN and self.dim else self.coeff

    def forward(self, bottom, top):
        xp = self.xp
        x = bottom[0].data.reshape(self.num, self.dim)
        y = top[0].data.reshape(self.num)
        if self.op in (SUM, MEAN):
            x.sum(axis=1, out=y)
        elif self.op == ASUM:
            xp.abs(x).sum(axis=1, out=y)
        else:
            xp.multiply(x, x).sum(axis=1, out=y)
        if self.scale != 1.0:
            y *= self.scale

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        dy = top[0].diff.reshape(self.num, 1)
        dx = bottom[0].diff.reshape(self.num, self.dim)
        if self.op in (SUM, MEAN):
            xp.copyto(dx, dy)
            if self.scale != 1.0:
                dx *= self.scale
            return
        x = bottom[0].data.reshape(self.num, self.dim)
        if self.op == ASUM:
            xp.sign(x, out=dx)
            xp.multiply(dx, dy * self.scale, out=dx)
        else:
            xp.multiply(x, dy * (2.0 * self.scale), out=dx)
