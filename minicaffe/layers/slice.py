"""Slice: cuts one bottom into several tops along one axis."""

from __future__ import annotations

from minicaffe.errors import ShapeError
from minicaffe.layer import Layer
from minicaffe.layers.concat import concat_axis
from minicaffe.registry import register_layer


@register_layer("Slice")
class SliceLayer(Layer):
    """Tops are consecutive pieces of the bottom along ``axis``.

    Params (slice_param): axis = 1 (negative counts from the end), or the legacy slice_dim
    (non-negative; not together with axis); slice_point (none: equal pieces, which must divide
    shape[axis]; else len(top) - 1 strictly increasing cut positions inside (0, shape[axis])).
    Bottom: x. Tops: the pieces, shape[axis] = their lengths. With one top it shares the bottom.
    Gradient: dx = the top diffs joined back along ``axis``.
    """

    exact_num_bottom_blobs = 1
    min_top_blobs = 1

    def setup(self, bottom, top):
        self.axis = concat_axis(self, bottom, self.layer_param.slice_param, "slice_dim")

    def _sizes(self, dim: int, n_top: int) -> list[int]:
        points = [int(p) for p in self.layer_param.slice_param.slice_point]
        if not points:
            if dim % n_top:
                raise self.error(
                    f"cannot split axis {self.axis} of size {dim} (bottom shape "
                    f"{self._shape}) into {n_top} equal pieces; give slice_point",
                    ShapeError,
                )
            return [dim // n_top] * n_top
        if len(points) != n_top - 1:
            raise self.error(
                f"slice_point must have one value fewer than the tops ({n_top}); "
                f"received {len(points)} values {points}",
                ShapeError,
            )
        cuts = [0, *points, dim]
        if any(a >= b for a, b in zip(cuts, cuts[1:])):
            raise self.error(
                f"slice_point {points} must be strictly increasing and inside "
                f"(0, {dim}) for axis {self.axis} of bottom shape {self._shape}",
                ShapeError,
            )
        return [b - a for a, b in zip(cuts, cuts[1:])]

    def reshape(self, bottom, top):
        self.axis = concat_axis(self, bottom, self.layer_param.slice_param, "slice_dim")
        shape = self._shape = bottom[0].shape
        self.sizes = self._sizes(shape[self.axis], len(top))
        for blob, n in zip(top, self.sizes, strict=True):
            if blob is bottom[0] and len(top) > 1:
                raise self.error("Slice cannot run in place")
            blob.reshape(shape[: self.axis] + (n,) + shape[self.axis + 1 :])
        if len(top) == 1 and top[0] is not bottom[0]:
            top[0].share_data(bottom[0])
            top[0].share_diff(bottom[0])

    def forward(self, bottom, top):
        if len(top) == 1:
            return
        x = bottom[0].data
        lead = (slice(None),) * self.axis
        start = 0
        for blob, n in zip(top, self.sizes, strict=True):
            self.xp.copyto(blob.data, x[lead + (slice(start, start + n),)])
            start += n

    def backward(self, top, propagate_down, bottom):
        if len(top) == 1 or not propagate_down[0]:
            return
        self.xp.concatenate([t.diff for t in top], axis=self.axis, out=bottom[0].diff)
