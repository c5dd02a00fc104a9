"""BatchReindex: picks (and may repeat or reorder) items of a batch by index."""

from __future__ import annotations

from minicaffe.errors import ShapeError
from minicaffe.functional import scatter_add
from minicaffe.layer import Layer
from minicaffe.layers.embed import checked_indices
from minicaffe.registry import register_layer


@register_layer("BatchReindex")
class BatchReindexLayer(Layer):
    """y[i] = x[int(idx[i])].

    Bottoms: x (N, ...); idx, 1-D of M indices in [0, N) stored as floats. Top: (M,) + x.shape[1:].
    Gradient: dx[n] = sum of dy[i] over the i with idx[i] == n (0 for items never picked); the
    indices take no gradient.
    """

    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 1

    def reshape(self, bottom, top):
        x, idx = bottom[0].shape, bottom[1].shape
        if len(idx) != 1:
            raise self.error(
                f"the index bottom (bottom 1) must be 1-D; received shape {idx}", ShapeError
            )
        if not x:
            raise self.error(
                "the data bottom (bottom 0) needs at least one axis; received a 0-d blob",
                ShapeError,
            )
        if top[0] is bottom[0]:
            raise self.error("BatchReindex cannot run in place")
        top[0].reshape(idx[:1] + x[1:])

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def forward(self, bottom, top):
        n = bottom[0].shape[0]
        self._index = checked_indices(self, bottom[1].data, n, "indices (bottom 1)")
        self.xp.take(bottom[0].data, self._index, axis=0, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise self.error("cannot back-propagate to the indices (bottom 1)")
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        dx.fill(0)
        scatter_add(self.xp, dx, self._index, top[0].diff)
