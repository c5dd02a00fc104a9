"""Threshold: y = 1 if x > threshold else 0 (forward only)."""

from __future__ import annotations

from minicaffe.layer import NeuronLayer
from minicaffe.registry import register_layer


@register_layer("Threshold")
class ThresholdLayer(NeuronLayer):
    """Step function with a strict comparison.

    Params (threshold_param): threshold = 0. Bottom: x, any shape. Top: y, same shape (0 or 1).
    In place allowed. No backward (as in Caffe): asking for a bottom gradient is an error.
    """

    def setup(self, bottom, top):
        self.threshold = float(self.layer_param.threshold_param.threshold)

    def forward(self, bottom, top):
        self.xp.greater(bottom[0].data, self.threshold, out=top[0].data)
