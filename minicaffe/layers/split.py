"""Split: copies one bottom to several tops (inserted by the net for fan-out)."""

from __future__ import annotations

from minicaffe.layer import Layer
from minicaffe.registry import register_layer


@register_layer("Split")
class SplitLayer(Layer):
    """Every top shares the bottom's data; the bottom's gradient is the sum of the tops'.

    Bottom: x, any shape. Tops: one or more, same shape (not in place).
    """

    exact_num_bottom_blobs = 1
    min_top_blobs = 1

    def reshape(self, bottom, top):
        for blob in top:
            if blob is bottom[0]:
                raise self.error("Split cannot run in place")
            blob.reshape(bottom[0].shape)
            blob.share_data(bottom[0])

    def forward(self, bottom, top):
        pass  # the tops already share the bottom's memory

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        out = bottom[0].diff
        if len(top) == 1:
            out[...] = top[0].diff
            return
        self.xp.add(top[0].diff, top[1].diff, out=out)
        for blob in top[2:]:
            out += blob.diff
