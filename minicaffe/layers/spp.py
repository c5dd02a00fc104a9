"""SPP: spatial pyramid pooling into a fixed-length vector."""

from __future__ import annotations

import math

import numpy as np

from minicaffe.backend import rng
from minicaffe.errors import ShapeError
from minicaffe.functional import PoolPlan, pool_out_size
from minicaffe.layer import Layer
from minicaffe.registry import register_layer

MAX, AVE, STOCHASTIC = 0, 1, 2


def spp_level(level: int, h: int, w: int):
    """Caffe's pooling geometry of pyramid level ``level`` (2^level bins per side):
    kernel = ceil(size / bins), pad = (kernel * bins - size + 1) // 2, stride = kernel."""
    bins = 2**level
    kernel = (math.ceil(h / bins), math.ceil(w / bins))
    pad = tuple((k * bins - s + 1) // 2 for k, s in zip(kernel, (h, w)))
    return kernel, kernel, pad


@register_layer("SPP")
class SPPLayer(Layer):
    """Spatial pyramid pooling.

    Params (spp_param): pyramid_height (required, >= 1), pool = MAX (AVE, STOCHASTIC), engine.
    Bottom: (N, C, H, W). Level l pools each channel into about 2^l x 2^l bins with Pooling's
    rules (kernel, pad, stride from :func:`spp_level`, CEIL rounding); the levels are flattened
    and concatenated: top (N, C * sum_l bins_l). With pyramid_height 1 the top is the single
    pooling output (N, C, 1, 1), as in Caffe.
    """

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom, top):
        p = self.layer_param.spp_param
        if not p.HasField("pyramid_height") or p.pyramid_height < 1:
            raise self.error("spp_param.pyramid_height must be set and >= 1")
        self.height = int(p.pyramid_height)
        self.method = int(p.pool)
        if self.method not in (MAX, AVE, STOCHASTIC):
            raise self.error(f"unknown pool method {self.method}")
        self._shape = None

    def reshape(self, bottom, top):
        shape = self.require_4d(bottom[0])
        n, c, h, w = shape
        if h < 1 or w < 1:
            raise self.error(f"input height and width must be > 0; received {shape}", ShapeError)
        if shape != self._shape:
            self.plans, self.offsets = [], [0]
            for level in range(self.height):
                kernel, stride, pad = spp_level(level, h, w)
                if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
                    raise self.error(
                        f"pyramid level {level} needs pad {pad} >= kernel {kernel} for a "
                        f"{h}x{w} input (Caffe's pooling requires pad < kernel); use a larger "
                        f"input or a smaller pyramid_height",
                        ShapeError,
                    )
                if pad != (0, 0) and self.method == STOCHASTIC:
                    raise self.error(
                        f"pyramid level {level} pads by {pad}, which STOCHASTIC "
                        "pooling does not support",
                        ShapeError,
                    )
                clip = bool(pad[0] or pad[1])
                out = tuple(
                    pool_out_size(s, k, st, pd, True, clip)
                    for s, k, st, pd in zip((h, w), kernel, stride, pad)
                )
                plan = PoolPlan(self.xp, self.dtype, shape, kernel, stride, pad, out)
                plan.y = self.xp.empty(plan.out_shape, self.dtype)
                self.plans.append(plan)
                self.offsets.append(self.offsets[-1] + c * out[0] * out[1])
            self._shape = shape
            self.dxbuf = None
        if self.height == 1:
            top[0].reshape(self.plans[0].out_shape)
        else:
            top[0].reshape((n, self.offsets[-1]))

    def _pool(self, plan, x) -> None:
        if self.method == MAX:
            plan.max_forward(x, plan.y, track=True)
        elif self.method == AVE:
            plan.ave_forward(x, plan.y)
        else:  # Caffe's inner pooling layers run in their default (TRAIN) phase
            u = self.xp.asarray(
                rng().random(plan.out_shape, dtype=np.float32).astype(self.dtype, copy=False)
            )
            plan.stochastic_train_forward(x, plan.y, u)

    def forward(self, bottom, top):
        x = bottom[0].data
        n = x.shape[0]
        y = top[0].data.reshape(n, -1)
        for plan, a, b in zip(self.plans, self.offsets, self.offsets[1:]):
            self._pool(plan, x)
            y[:, a:b] = plan.y.reshape(n, -1)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        n = dx.shape[0]
        dy = top[0].diff.reshape(n, -1)
        for i, (plan, a, b) in enumerate(zip(self.plans, self.offsets, self.offsets[1:])):
            plan.y.reshape(n, -1)[...] = dy[:, a:b]
            if i == 0:
                target = dx
            else:
                if self.dxbuf is None:
                    self.dxbuf = self.xp.empty(dx.shape, self.dtype)
                target = self.dxbuf
            if self.method == AVE:
                plan.ave_backward(plan.y, target)
            else:
                plan.max_backward(plan.y, target)
            if i:
                dx += target
