"""MVN: subtract the mean (and divide by the standard deviation) of each sample's channels."""

from __future__ import annotations

from minicaffe.errors import ShapeError
from minicaffe.layer import NeuronLayer
from minicaffe.layers._broadcast import scratch
from minicaffe.registry import register_layer


@register_layer("MVN")
class MVNLayer(NeuronLayer):
    """Mean-variance normalisation over groups of values.

    Params (mvn_param): normalize_variance = true, across_channels = false, eps = 1e-9.
    Bottom: x of shape (N, C, ...) (at most 4 axes, as Caffe). Top: y, same shape.
    Groups: one per (n, c), or one per n when across_channels; each group's d values get
    y = x - mean, then (normalize_variance) y /= (std + eps) with std = sqrt(mean((x-mean)^2));
    eps is added to the standard deviation, not to the variance.
    Gradient (Caffe's, exact as eps -> 0): dx = (dy - mean(dy) - y * mean(dy * y)) / (std + eps),
    or dx = dy - mean(dy) without normalize_variance. In place allowed (reads y only).
    """

    def setup(self, bottom, top):
        p = self.layer_param.mvn_param
        self.normalize = p.normalize_variance
        self.across = p.across_channels
        self.eps = float(p.eps)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if not 1 <= len(shape) <= 4:
            raise self.error(
                f"needs a bottom of 1 to 4 axes (N, C, H, W); received shape {shape}", ShapeError
            )
        n = shape[0] if self.across or len(shape) == 1 else shape[0] * shape[1]
        self.groups = n
        self.dim = bottom[0].count // n if n else 0
        super().reshape(bottom, top)

    def forward(self, bottom, top):
        xp = self.xp
        x2 = bottom[0].data.reshape(self.groups, self.dim)
        y2 = top[0].data.reshape(self.groups, self.dim)
        mean = x2.mean(axis=1, keepdims=True)
        xp.subtract(x2, mean, out=y2)
        if not self.normalize:
            return
        std = scratch(self, "std", (self.groups, 1))
        std[:, 0] = xp.einsum("gd,gd->g", y2, y2)
        std /= self.dim
        xp.sqrt(std, out=std)
        std += self.eps
        y2 /= std

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        dy2 = top[0].diff.reshape(self.groups, self.dim)
        dx2 = bottom[0].diff.reshape(self.groups, self.dim)
        mean_dy = dy2.mean(axis=1, keepdims=True)
        if not self.normalize:
            xp.subtract(dy2, mean_dy, out=dx2)
            return
        y2 = top[0].data.reshape(self.groups, self.dim)
        mean_dyy = xp.einsum("gd,gd->g", dy2, y2).reshape(-1, 1) / self.dim
        t = scratch(self, "tmp", y2.shape)
        xp.multiply(y2, mean_dyy, out=t)
        xp.subtract(dy2, t, out=dx2)  # dx may be dy (in place): both means are taken already
        dx2 -= mean_dy
        dx2 /= scratch(self, "std", (self.groups, 1))
