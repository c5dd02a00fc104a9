"""Silence: consumes bottoms so they are not net outputs; no tops."""

from __future__ import annotations

from minicaffe.layer import Layer
from minicaffe.registry import register_layer


@register_layer("Silence")
class SilenceLayer(Layer):
    """Bottoms: one or more, any shape. Tops: none. Backward writes zero gradients."""

    min_bottom_blobs = 1
    exact_num_top_blobs = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        for blob, down in zip(bottom, propagate_down, strict=True):
            if down:
                blob.diff.fill(0)
