"""Reshape: a new shape over the same values; the top shares the bottom's memory."""

from __future__ import annotations

from minicaffe.errors import ShapeError
from minicaffe.layer import Layer
from minicaffe.layers.flatten import share_memory
from minicaffe.registry import register_layer


@register_layer("Reshape")
class ReshapeLayer(Layer):
    """Replaces bottom axes [axis, axis + num_axes) by ``shape``.

    Params (reshape_param): shape (BlobShape; 0 = copy the bottom dim at the same position,
    -1 = inferred from the count, at most one -1); axis = 0 (negative: -1 is the end of the shape,
    -2 before the last axis, ...); num_axes = -1 (all axes from ``axis`` on).
    Bottom: x. Top: the new shape (same count), sharing x's data and diff. Not in place.
    """

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom, top):
        dims = [int(d) for d in self.layer_param.reshape_param.shape.dim]
        bad = [d for d in dims if d < -1]
        if bad:
            raise self.error(
                f"reshape_param.shape dims must be >= -1 (0 copies, -1 infers); received {dims}",
                ShapeError,
            )
        if dims.count(-1) > 1:
            raise self.error(
                f"reshape_param.shape may hold at most one -1; received {dims}", ShapeError
            )
        self.dims = dims

    def reshape(self, bottom, top):
        p = self.layer_param.reshape_param
        shape = bottom[0].shape
        n = len(shape)
        start = p.axis if p.axis >= 0 else n + p.axis + 1
        if not 0 <= start <= n:
            raise self.error(
                f"reshape_param.axis {p.axis} is out of range for a bottom of shape {shape}",
                ShapeError,
            )
        if p.num_axes < -1:
            raise self.error(
                f"reshape_param.num_axes must be >= -1; received {p.num_axes}", ShapeError
            )
        end = n if p.num_axes == -1 else start + p.num_axes
        if end > n:
            raise self.error(
                f"reshape_param axis {p.axis} + num_axes {p.num_axes} go past the "
                f"{n} axes of the bottom shape {shape}",
                ShapeError,
            )
        new = list(self.dims)
        for i, d in enumerate(new):
            if d == 0:
                if start + i >= n:
                    raise self.error(
                        f"reshape_param.shape {self.dims}: dim {i} is 0 (copy) but "
                        f"the bottom shape {shape} has no axis {start + i}",
                        ShapeError,
                    )
                new[i] = shape[start + i]
        out = list(shape[:start]) + new + list(shape[end:])
        count = bottom[0].count
        if -1 in new:
            known = 1
            for d in out:
                if d != -1:
                    known *= d
            if known == 0 or count % known:
                raise self.error(
                    f"cannot infer the -1 dim of reshape_param.shape {self.dims}: "
                    f"the bottom shape {shape} has {count} values, not a multiple "
                    f"of {known}",
                    ShapeError,
                )
            out[out.index(-1)] = count // known
        total = 1
        for d in out:
            total *= d
        if total != count:
            raise self.error(
                f"reshape_param.shape {self.dims} gives shape {tuple(out)} with "
                f"{total} values; the bottom shape {shape} has {count}",
                ShapeError,
            )
        share_memory(self, bottom, top, tuple(out))

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass
