"""LRN: local response normalisation across or within channels."""

from __future__ import annotations

import numpy as np

from minicaffe.functional import negative_power, window_sum
from minicaffe.layer import Layer
from minicaffe.registry import register_layer

ACROSS_CHANNELS, WITHIN_CHANNEL = 0, 1


@register_layer("LRN")
class LRNLayer(Layer):
    """Local response normalisation: y = x * scale^-beta.

    Params (lrn_param): local_size = 5 (odd), alpha = 1, beta = 0.75,
    norm_region = ACROSS_CHANNELS (or WITHIN_CHANNEL), k = 1, engine.
    ACROSS_CHANNELS: scale = k + alpha / n * sum of x^2 over the n channels centred on c
    (zero beyond the ends). WITHIN_CHANNEL: scale = 1 + alpha / n^2 * sum of x^2 over the n x n
    window centred on (h, w), zero-padded (k is not used, as in Caffe).
    Bottom: (N, C, H, W). Top: same shape (not in place).
    Gradient: dx = dy * scale^-beta - 2 alpha beta / m * x * S(dy * y / scale), where S is the
    same window sum and m = n (across) or n^2 (within).
    """

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom, top):
        p = self.layer_param.lrn_param
        self.size = int(p.local_size)
        if self.size < 1 or self.size % 2 == 0:
            raise self.error(f"local_size must be a positive odd number; received {self.size}")
        self.alpha, self.beta, self.k = float(p.alpha), float(p.beta), float(p.k)
        self.region = int(p.norm_region)
        if self.region not in (ACROSS_CHANNELS, WITHIN_CHANNEL):
            raise self.error(f"unknown norm_region {self.region}")
        self._shape = None
        self._key = None
        self._chwn = False

    def takes_chwn(self, bottom_index: int) -> bool:
        # across channels, a (C, H, W, N) blob is one "image" of H*W*N positions
        return self.xp is np and self.region == ACROSS_CHANNELS

    def reshape(self, bottom, top):
        shape = self.require_4d(bottom[0])
        if top[0] is bottom[0]:
            raise self.error("cannot run in place (backward needs both input and output)")
        top[0].reshape(shape)
        self._buffers(shape, bottom[0].is_chwn())

    def _buffers(self, shape, chwn: bool) -> None:
        """Buffers for an (N, C, H, W) input held in Caffe's order or as (C, H, W, N)."""
        if (shape, chwn) != self._key:
            self._key, self._chwn = (shape, chwn), chwn
            if chwn:
                n, c, h, w = shape
                shape = (c, h, w, n)
            self._shape = shape  # the buffers' shape
            xp, dt = self.xp, self.dtype
            n, c, h, w = (1, shape[0], shape[1], shape[2] * shape[3]) if chwn else shape
            pad = self.size - 1
            if self.region == ACROSS_CHANNELS:
                self.padded = xp.zeros((n, c + pad, h * w), dt)
                self.tmp = None
            else:
                self.padded = xp.zeros((n, c, h + pad, w + pad), dt)
                self.tmp = xp.empty((n, c, h, w + pad), dt)
            self.scale = xp.empty(shape, dt)
            self.spow = xp.empty(shape, dt)
            self.work = xp.empty(shape, dt)

    def _interior(self):
        half = (self.size - 1) // 2
        if self.region == ACROSS_CHANNELS:
            return self.padded[:, half : self.padded.shape[1] - half].reshape(self._shape)
        _, _, h, w = self._shape
        return self.padded[:, :, half : half + h, half : half + w]

    def _window(self, out) -> None:
        """out = window sum of the values in the padded buffer's interior."""
        xp = self.xp
        if self.region == ACROSS_CHANNELS:
            window_sum(
                xp,
                self.padded,
                1,
                self.size,
                out.reshape(self.padded.shape[0], -1, self.padded.shape[2]),
            )
        else:
            window_sum(xp, self.padded, 2, self.size, self.tmp)
            window_sum(xp, self.tmp, 3, self.size, out)

    def _arrays(self, bottom, top):
        """x, y, dy and dx in the order of this pass's buffers: (C, H, W, N) views when the
        forward ran on a bottom held that way (strided views of Caffe's order where a blob is
        not), else Caffe's order."""
        if not self._chwn:
            return bottom[0].data, top[0].data, top[0].diff, bottom[0].diff
        b, t = bottom[0], top[0]  # (the bottom was held at forward, so it is chwn_ok)
        return b.chwn_view(), t.chwn_view(), t.chwn_view(diff=True), b.write_chwn(diff=True)

    def forward(self, bottom, top):
        self._buffers(bottom[0].shape, bottom[0].is_chwn())
        xp = self.xp
        if self._chwn:
            x = bottom[0].chwn()
            y = top[0].write_chwn() if top[0].chwn_ok else top[0].data.transpose(1, 2, 3, 0)
        else:
            x, y = bottom[0].data, top[0].data
        xp.multiply(x, x, out=self._interior())
        self._window(self.scale)
        if self.region == ACROSS_CHANNELS:
            self.scale *= self.alpha / self.size
            self.scale += self.k
        else:
            self.scale *= self.alpha / (self.size * self.size)
            self.scale += 1.0
        negative_power(xp, self.scale, self.beta, self.spow)
        xp.multiply(x, self.spow, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        x, y, dy, dx = self._arrays(bottom, top)
        m = self.size if self.region == ACROSS_CHANNELS else self.size * self.size
        inner = self._interior()
        xp.multiply(dy, y, out=inner)
        xp.divide(inner, self.scale, out=inner)
        self._window(self.work)
        self.work *= x
        self.work *= 2.0 * self.alpha * self.beta / m
        xp.multiply(dy, self.spow, out=dx)
        dx -= self.work
