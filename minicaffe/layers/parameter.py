"""Parameter: exposes one learnable blob as a top (a learned input)."""

from __future__ import annotations

from minicaffe.layer import Layer
from minicaffe.registry import register_layer


@register_layer("Parameter")
class ParameterLayer(Layer):
    """top = the layer's blob 0, sharing its data and diff (so the blob's gradient is the diff
    that the consumers write into the top).

    Params (parameter_param): shape (BlobShape). The blob starts at zero (no filler), unless
    values come from the prototxt or a weights file.
    Bottoms: none. Top: one blob of that shape.
    """

    exact_num_bottom_blobs = 0
    exact_num_top_blobs = 1

    def setup(self, bottom, top):
        shape = tuple(int(d) for d in self.layer_param.parameter_param.shape.dim)
        self.init_param(0, shape)

    def reshape(self, bottom, top):
        top[0].reshape(self.blobs[0].shape)
        top[0].share_data(self.blobs[0])
        top[0].share_diff(self.blobs[0])

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass
