"""SmoothL1Loss: the box-regression loss of the py-faster-rcnn Caffe fork."""

from __future__ import annotations

from minicaffe.errors import LayerError, ShapeError
from minicaffe.losses import LossBase
from minicaffe.registry import register_layer


@register_layer("SmoothL1Loss")
class SmoothL1LossLayer(LossBase):
    """loss = sum(w_out * f(w_in * (p - t))) / N, N = shape(0) of p (at least 1), where

    f(x) = 0.5 (sigma x)^2 if |x| < 1/sigma^2, else |x| - 0.5/sigma^2.

    Params: ``smooth_l1_loss_param.sigma`` (float, default 1; py-faster-rcnn fork field 8266712).
    Bottoms: prediction p, target t, then optionally inside weights w_in and outside weights
    w_out (both or neither: 2 or 4 bottoms, as in the fork), all of the same shape. Top: the
    scalar loss (loss_weight 1 by default).

    Gradient (lambda = loss weight): dp = lambda/N * w_out * w_in * f'(d), dt = -dp, where
    d = w_in * (p - t) and f'(x) = sigma^2 x if |x| < 1/sigma^2 else sign(x). The fork never
    back-propagates into the weights; minicaffe gives their true gradients if asked
    (d w_out = lambda/N * f(d), d w_in = lambda/N * w_out * f'(d) * (p - t)).
    """

    min_bottom_blobs = 2
    max_bottom_blobs = 4
    exact_num_bottom_blobs = -1
    label_bottoms: dict[int, str] = {}

    def setup(self, bottom, top):
        super().setup(bottom, top)
        if len(bottom) == 3:
            raise self.error(
                "takes the inside and the outside weights together (4 bottoms) or neither "
                "(2 bottoms); received 3 bottoms",
                ShapeError,
            )
        sigma = float(self.layer_param.smooth_l1_loss_param.sigma)
        if not sigma > 0:
            raise self.error(
                f"smooth_l1_loss_param.sigma must be > 0; received {sigma}", LayerError
            )
        self.sigma2 = sigma * sigma
        self.has_weights = len(bottom) == 4

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        names = ("prediction", "target", "inside_weights", "outside_weights")
        for i in range(1, len(bottom)):
            if bottom[i].shape != bottom[0].shape:
                raise self.error(
                    f"the {names[i]} (bottom {i}) must have the prediction's shape "
                    f"{bottom[0].shape}; received {bottom[i].shape}",
                    ShapeError,
                )

    def forward(self, bottom, top):
        xp = self.xp
        n = bottom[0].count
        d = self.scratch("d", (n,))  # w_in * (p - t)
        e = self.scratch("e", (n,))  # f(d), times w_out
        a = self.scratch("a", (n,))  # |d|
        xp.subtract(bottom[0].data.reshape(-1), bottom[1].data.reshape(-1), out=d)
        if self.has_weights:
            xp.multiply(d, bottom[2].data.reshape(-1), out=d)
        xp.abs(d, out=a)
        small = a < 1.0 / self.sigma2
        # quadratic branch: 0.5 sigma^2 d^2; linear branch: |d| - 0.5/sigma^2
        xp.multiply(d, d, out=e)
        e *= 0.5 * self.sigma2
        a -= 0.5 / self.sigma2
        xp.copyto(e, a, where=~small)
        if self.has_weights:
            xp.multiply(e, bottom[3].data.reshape(-1), out=e)
        num = bottom[0].shape[0] if bottom[0].shape else 1
        self._num = max(int(num), 1)
        top[0].data[...] = e.sum() / self._num

    def backward(self, top, propagate_down, bottom):
        if not any(propagate_down):
            return
        xp = self.xp
        n = bottom[0].count
        d = self.scratch("d", (n,))
        g = self.scratch("g", (n,))  # f'(d) (times the weights)
        scale = self.lambda_over(top, self._num)
        if self.has_weights and propagate_down[3]:
            # f(d) again (the forward's buffer holds f(d) * w_out)
            a = xp.abs(d)
            f = xp.where(a < 1.0 / self.sigma2, 0.5 * self.sigma2 * d * d, a - 0.5 / self.sigma2)
            xp.multiply(f, scale, out=bottom[3].diff.reshape(-1))
        xp.multiply(d, self.sigma2, out=g)
        xp.copyto(g, xp.sign(d), where=xp.abs(d) >= 1.0 / self.sigma2)
        if self.has_weights:
            xp.multiply(g, bottom[3].data.reshape(-1), out=g)
            if propagate_down[2]:
                diff = bottom[2].diff.reshape(-1)
                xp.subtract(bottom[0].data.reshape(-1), bottom[1].data.reshape(-1), out=diff)
                diff *= g
                diff *= scale
            xp.multiply(g, bottom[2].data.reshape(-1), out=g)
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                xp.multiply(g, sign * scale, out=bottom[i].diff.reshape(-1))
