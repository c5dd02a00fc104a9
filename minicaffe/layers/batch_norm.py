"""BatchNorm: y = (x - mean_c) / sqrt(var_c + eps), per channel, no scale or shift."""

from __future__ import annotations

from minicaffe.errors import ShapeError
from minicaffe.layer import NeuronLayer
from minicaffe.layers._broadcast import scratch
from minicaffe.proto import caffe_pb2
from minicaffe.registry import register_layer


@register_layer("BatchNorm")
class BatchNormLayer(NeuronLayer):
    """Caffe's batch normalisation (pair it with a Scale layer for the affine part).

    Params (batch_norm_param): use_global_stats (unset = phase is TEST),
    moving_average_fraction f = 0.999, eps = 1e-5.
    Bottom: x of shape (N, C, ...) (a 1-D x is one channel). Top: y, same shape.
    Blobs (statistics, never learned; their lr_mult is forced to 0): mean sum (C,),
    variance sum (C,), scale factor s (1,).
    Batch stats, over N and the spatial axes (m values per channel): mean, biased var. Each such
    forward updates s = f*s + 1, blob0 = f*blob0 + mean, blob1 = f*blob1 + m/(m-1)*var.
    Global stats: mean = blob0 / s, var = blob1 / s (0 when s == 0).
    Gradient with batch stats: dx = (dy - mean(dy) - y * mean(dy * y)) / sqrt(var + eps); with
    global stats: dx = dy / sqrt(var + eps). In place allowed (y is kept, as Caffe does).
    """

    def setup(self, bottom, top):
        p = self.layer_param.batch_norm_param
        if p.HasField("use_global_stats"):
            self.global_stats = p.use_global_stats
        else:
            self.global_stats = self.phase == caffe_pb2.TEST
        self.fraction = float(p.moving_average_fraction)
        self.eps = float(p.eps)
        x = bottom[0]
        if x.num_axes < 1:
            raise self.error(
                f"needs a bottom with at least 1 axis; received shape {x.shape}", ShapeError
            )
        self.channels = 1 if x.num_axes == 1 else x.shape[1]
        for i, shape in enumerate([(self.channels,), (self.channels,), (1,)]):
            self.init_param(i, shape)
        specs = self.layer_param.param
        for i, spec in enumerate(specs[:3]):
            if spec.lr_mult != 0:
                raise self.error(
                    f"its blobs are statistics, not parameters: param {i} must have "
                    f"lr_mult 0 (or be left out); received {spec.lr_mult}"
                )
        while len(specs) < 3:
            specs.add(lr_mult=0.0)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        c = 1 if len(shape) == 1 else (shape[1] if len(shape) > 1 else 0)
        if c != self.channels:
            raise self.error(
                f"was set up for {self.channels} channels (axis 1); received shape {shape}",
                ShapeError,
            )
        self.n = shape[0]
        self.spatial = bottom[0].count // max(self.n * c, 1)
        super().reshape(bottom, top)

    def _view(self, arr):
        return arr.reshape(self.n, self.channels, self.spatial)

    def forward(self, bottom, top):
        xp, c = self.xp, self.channels
        x3, y3 = self._view(bottom[0].data), self._view(top[0].data)
        m = self.n * self.spatial
        mean_sum, var_sum, factor = (b.data for b in self.blobs)
        if self.global_stats:
            # 1/s, or 0 when s == 0, without reading s on the host
            inv = 1.0 / xp.where(factor == 0, xp.inf, factor)
            mean, var = mean_sum * inv, var_sum * inv
        else:
            mean = xp.einsum("ncs->c", x3)
            mean /= m
        xp.subtract(x3, mean.reshape(1, c, 1), out=y3)
        if not self.global_stats:
            var = xp.einsum("ncs,ncs->c", y3, y3)
            var /= m
            factor *= self.fraction
            factor += 1
            mean_sum *= self.fraction
            mean_sum += mean
            var_sum *= self.fraction
            var_sum += var * (m / (m - 1) if m > 1 else 1.0)
        inv_std = scratch(self, "inv_std", (c,))
        xp.add(var, self.eps, out=inv_std)
        xp.sqrt(inv_std, out=inv_std)
        xp.divide(1.0, inv_std, out=inv_std)
        y3 *= inv_std.reshape(1, c, 1)
        if not self.global_stats:
            scratch(self, "x_norm", top[0].shape)[...] = top[0].data

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp, c = self.xp, self.channels
        dy3, dx3 = self._view(top[0].diff), self._view(bottom[0].diff)
        inv_std = scratch(self, "inv_std", (c,)).reshape(1, c, 1)
        if self.global_stats:
            xp.multiply(dy3, inv_std, out=dx3)
            return
        m = self.n * self.spatial
        y3 = self._view(scratch(self, "x_norm", top[0].shape))
        mean_dyy = xp.einsum("ncs,ncs->c", dy3, y3).reshape(1, c, 1) / m
        mean_dy = xp.einsum("ncs->c", dy3).reshape(1, c, 1) / m
        t = self._view(scratch(self, "tmp", top[0].shape))
        xp.multiply(y3, mean_dyy, out=t)
        xp.subtract(dy3, t, out=dx3)  # dx may be dy (in place): both means are taken already
        dx3 -= mean_dy
        dx3 *= inv_std
