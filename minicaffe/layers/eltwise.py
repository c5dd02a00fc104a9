"""Eltwise: element-by-element sum (with coefficients), product or maximum of several bottoms."""

from __future__ import annotations

import numpy as np

from minicaffe.errors import ShapeError
from minicaffe.layer import Layer
from minicaffe.registry import register_layer

PROD, SUM, MAX = 0, 1, 2
_OP_NAMES = {PROD: "PROD", SUM: "SUM", MAX: "MAX"}


@register_layer("Eltwise")
class EltwiseLayer(Layer):
    """y = op(x_0, x_1, ..., x_{K-1}) elementwise; every bottom has the same shape.

    Params (eltwise_param): operation = SUM (PROD, SUM or MAX); coeff (SUM only: none, or one per
    bottom; default all 1); stable_prod_grad = true.
    Bottoms: K >= 2 blobs of one shape. Top: y, the same shape.

    * SUM: y = sum_i c_i x_i; dx_i = c_i dy.
    * PROD: y = prod_i x_i; dx_i = dy prod_{j != i} x_j (stable_prod_grad) or dy y / x_i.
    * MAX: y = max_i x_i. The winner of each element is remembered: x_1 beats x_0 on ties, each
      later bottom needs to be strictly larger. dx_i = dy where bottom i won, else 0.
    """

    min_bottom_blobs = 2
    exact_num_top_blobs = 1

    def setup(self, bottom, top):
        p = self.layer_param.eltwise_param
        self.op = int(p.operation)
        if self.op not in _OP_NAMES:
            raise self.error(f"unknown eltwise_param.operation {self.op}")
        coeff = list(p.coeff)
        if coeff and self.op != SUM:
            raise self.error(
                "eltwise_param.coeff is only allowed with operation SUM; received "
                f"{len(coeff)} coefficients with operation {_OP_NAMES[self.op]}"
            )
        if coeff and len(coeff) != len(bottom):
            raise self.error(
                f"eltwise_param.coeff must be given once per bottom ({len(bottom)}) "
                f"or not at all; received {len(coeff)} values"
            )
        self.coeff = [float(c) for c in coeff] if coeff else [1.0] * len(bottom)
        self.stable_prod_grad = bool(p.stable_prod_grad)
        self._mask = None  # MAX: index of the winning bottom per element

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        for i, blob in enumerate(bottom[1:], 1):
            if blob.shape != shape:
                raise self.error(
                    f"every bottom must have the shape of bottom 0 {shape}; bottom "
                    f"{i} has shape {blob.shape}",
                    ShapeError,
                )
        if top[0] is not bottom[0]:
            top[0].reshape(shape)
        elif self.op == PROD:
            raise self.error("operation PROD cannot run in place (its gradient needs bottom 0)")
        if self.op == MAX:
            count = bottom[0].count
            if self._mask is None or self._mask.size < count:
                self._mask = self.xp.empty(max(count, 1), dtype=np.int32)

    def _mask_view(self, shape):
        return self._mask[: int(np.prod(shape, dtype=np.int64))].reshape(shape)

    def forward(self, bottom, top):
        xp = self.xp
        y = top[0].data
        xs = [b.data for b in bottom]
        if self.op == SUM:
            self._weighted_sum(xs, self.coeff, y, in_place=top[0] is bottom[0])
        elif self.op == PROD:
            xp.multiply(xs[0], xs[1], out=y)
            for x in xs[2:]:
                y *= x
        else:
            mask = self._mask_view(y.shape)
            mask[...] = xs[1] >= xs[0]  # before y is written: y may be bottom 0 (in place)
            xp.maximum(xs[0], xs[1], out=y)
            for i, x in enumerate(xs[2:], 2):
                won = x > y
                xp.copyto(mask, i, where=won)
                xp.copyto(y, x, where=won)

    def _weighted_sum(self, xs, coeff, out, in_place):
        xp = self.xp
        if coeff[0] != 1.0:
            xp.multiply(xs[0], coeff[0], out=out)
        elif not in_place:
            xp.copyto(out, xs[0])
        for c, x in zip(coeff[1:], xs[1:], strict=True):
            if c == 1.0:
                out += x
            elif c == -1.0:
                out -= x
            else:
                out += c * x

    def backward(self, top, propagate_down, bottom):
        xp = self.xp
        dy = top[0].diff
        in_place = top[0] is bottom[0]
        # Bottom 0 last: in place, its diff is the top diff the others still need.
        for i in range(len(bottom) - 1, -1, -1):
            if not propagate_down[i]:
                continue
            blob = bottom[i]
            dx = blob.diff
            if self.op == SUM:
                c = self.coeff[i]
                if c == 1.0:
                    if not (in_place and i == 0):
                        xp.copyto(dx, dy)
                else:
                    xp.multiply(dy, c, out=dx)
            elif self.op == MAX:
                xp.multiply(dy, self._mask_view(dy.shape) == i, out=dx)
            elif self.stable_prod_grad:
                others = [b.data for j, b in enumerate(bottom) if j != i]
                xp.multiply(dy, others[0], out=dx)
                for x in others[1:]:
                    dx *= x
            else:
                xp.divide(top[0].data, blob.data, out=dx)
                dx *= dy
