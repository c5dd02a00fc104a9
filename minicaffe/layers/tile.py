"""Tile: repeats the trailing block of a blob several times along one axis."""

from __future__ import annotations

from minicaffe.errors import ShapeError
from minicaffe.layer import Layer
from minicaffe.registry import register_layer


@register_layer("Tile")
class TileLayer(Layer):
    """y viewed as (outer, tiles, inner) holds x viewed as (outer, 1, inner) ``tiles`` times.

    outer = prod(shape[:axis]), inner = prod(shape[axis:]): the whole block from ``axis`` to the
    end is repeated, so shape[axis] becomes tiles * shape[axis].
    Params (tile_param): axis = 1 (negative counts from the end); tiles (required, > 0).
    Bottom: x. Top: y. Gradient: dx = sum of dy over the tiles.
    """

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom, top):
        p = self.layer_param.tile_param
        if not p.HasField("tiles") or p.tiles <= 0:
            raise self.error(f"tile_param.tiles must be set and > 0; received {p.tiles}")
        self.tiles = int(p.tiles)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        axis = self.layer_param.tile_param.axis
        if not -len(shape) <= axis < len(shape):
            raise self.error(
                f"tile_param.axis {axis} is out of range for bottom shape {shape}", ShapeError
            )
        self.axis = axis % len(shape)
        if top[0] is bottom[0]:
            raise self.error("Tile cannot run in place")
        self.outer = bottom[0].count_range(0, self.axis)
        self.inner = bottom[0].count_range(self.axis)
        top[0].reshape(
            shape[: self.axis] + (shape[self.axis] * self.tiles,) + shape[self.axis + 1 :]
        )

    def forward(self, bottom, top):
        y = top[0].data.reshape(self.outer, self.tiles, self.inner)
        self.xp.copyto(y, bottom[0].data.reshape(self.outer, 1, self.inner))

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff.reshape(self.outer, self.tiles, self.inner)
        dy.sum(axis=1, out=bottom[0].diff.reshape(self.outer, self.inner))
