"""LRN: local response normalisation across or within channels."""

from __future__ import annotations

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

    def reshape(self, bottom, top):
        shape = self.require_4d(bottom[0])
        if top[0] is bottom[0]:
            raise self.error("cannot run in place (backward needs both input and output)")
        top[0].reshape(shape)
        if shape != self._shape:
            self._shape = shape
            xp, dt = self.xp, self.dtype
            n, c, h, w = shape
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
        n, c, h, w = self._shape
        if self.region == ACROSS_CHANNELS:
            return self.padded[:, half : half + c].reshape(self._shape)
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

    def forward(self, bottom, top):
        xp, x, y = self.xp, bottom[0].data, top[0].data
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
        x, y, dy, dx = bottom[0].data, top[0].data, top[0].diff, bottom[0].diff
        m = self.size if self.region == ACROSS_CHANNELS else self.size * self.size
        inner = self._interior()
        xp.multiply(dy, y, out=inner)
        xp.divide(inner, self.scale, out=inner)
        self._window(self.work)
        self.work *= x
        self.work *= 2.0 * self.alpha * self.beta / m
        xp.multiply(dy, self.spow, out=dx)
        dx -= self.work
