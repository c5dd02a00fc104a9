"""Dropout (inverted): at TRAIN y = x * mask / (1 - p), at TEST y = x."""

from __future__ import annotations

from minicaffe.backend import rng
from minicaffe.layer import NeuronLayer
from minicaffe.layers._broadcast import scratch
from minicaffe.proto import caffe_pb2
from minicaffe.registry import register_layer


@register_layer("Dropout")
class DropoutLayer(NeuronLayer):
    """Zero each value with probability p and scale the kept ones by 1 / (1 - p) (TRAIN only).

    Params (dropout_param): dropout_ratio p = 0.5, 0 <= p < 1. The layer's phase decides:
    TRAIN draws a fresh Bernoulli(1 - p) mask every forward (host: minicaffe.backend.rng(), so
    set_random_seed reproduces it; GPU: xp.random); TEST is the identity.
    Bottom: x, any shape. Top: y, same shape. In place allowed.
    Gradient: dx = dy * mask / (1 - p) at TRAIN, dy at TEST.

    ``scale_train: false`` (a py-faster-rcnn fork field, used by its prototxts) moves the scaling
    to TEST as the fork does: TRAIN y = x * mask, TEST y = x * (1 - p), gradients alike.
    """

    def setup(self, bottom, top):
        p = float(self.layer_param.dropout_param.dropout_ratio)
        if not 0 <= p < 1:
            raise self.error(f"dropout_param.dropout_ratio must be in [0, 1); received {p}")
        self.ratio = p
        scale_train = self.layer_param.dropout_param.scale_train
        self.scale = 1.0 / (1.0 - p) if scale_train else 1.0  # applied to the TRAIN mask
        self.test_scale = 1.0 if scale_train else 1.0 - p
        self.train = self.phase == caffe_pb2.TRAIN

    def forward(self, bottom, top):
        xp, x, y = self.xp, bottom[0].data, top[0].data
        if not self.train:
            if self.test_scale != 1.0:
                xp.multiply(x, self.test_scale, out=y)
            elif top[0] is not bottom[0]:
                y[...] = x
            return
        mask = scratch(self, "mask", x.shape)  # holds mask / (1 - p)
        if self.device.is_gpu:
            mask[...] = xp.random.random_sample(x.shape, dtype=mask.dtype)
        else:
            rng().random(out=mask.reshape(-1), dtype=mask.dtype)
        xp.greater_equal(mask, self.ratio, out=mask)
        mask *= self.scale
        xp.multiply(x, mask, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp, dy, dx = self.xp, top[0].diff, bottom[0].diff
        if not self.train:
            if self.test_scale != 1.0:
                xp.multiply(dy, self.test_scale, out=dx)
            elif top[0] is not bottom[0]:
                dx[...] = dy
            return
        xp.multiply(dy, scratch(self, "mask", dy.shape), out=dx)
