"""ArgMax: indices (and optionally values) of the top_k largest entries."""

from __future__ import annotations

from minicaffe.errors import ShapeError
from minicaffe.layer import Layer
from minicaffe.registry import register_layer


@register_layer("ArgMax")
class ArgMaxLayer(Layer):
    """The top_k largest values of each item, largest first; equal values: larger index first.

    Params (argmax_param): out_max_val = false; top_k = 1; axis (unset: each item n is
    x[n].ravel()).
    Bottom: x. Top without axis: (N, 2 if out_max_val else 1, top_k) padded with trailing 1s to
    x's number of axes (at least 3 axes): [n, 0, k] = index, [n, 1, k] = value.
    Top with axis: x's shape with shape[axis] = top_k, holding the values if out_max_val, else the
    indices. Indices are stored as floats. No gradient.
    """

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom, top):
        p = self.layer_param.argmax_param
        self.top_k = int(p.top_k)
        self.out_max_val = bool(p.out_max_val)
        self.has_axis = p.HasField("axis")
        if self.top_k < 1:
            raise self.error(f"argmax_param.top_k must be >= 1; received {self.top_k}")

    def reshape(self, bottom, top):
        p = self.layer_param.argmax_param
        shape = bottom[0].shape
        if top[0] is bottom[0]:
            raise self.error("ArgMax cannot run in place")
        if self.has_axis:
            if not -len(shape) <= p.axis < len(shape):
                raise self.error(
                    f"argmax_param.axis {p.axis} is out of range for bottom shape {shape}",
                    ShapeError,
                )
            self.axis = p.axis % len(shape)
            size = shape[self.axis]
            out = list(shape)
            out[self.axis] = self.top_k
        else:
            if not shape:
                raise self.error(
                    "needs a bottom with at least one axis; received a 0-d blob", ShapeError
                )
            size = bottom[0].count_range(1)
            out = [1] * max(len(shape), 3)
            out[0] = shape[0]
            out[1] = 2 if self.out_max_val else 1
            out[2] = self.top_k
        if self.top_k > size:
            raise self.error(
                f"argmax_param.top_k {self.top_k} exceeds the {size} values it "
                f"chooses from (bottom shape {shape})",
                ShapeError,
            )
        top[0].reshape(tuple(out))

    def forward(self, bottom, top):
        xp = self.xp
        x = bottom[0].data
        if self.has_axis:
            x = xp.moveaxis(x, self.axis, -1)
        else:
            x = x.reshape(x.shape[0], -1)
        size = x.shape[-1]
        rev = x[..., ::-1]  # reversed, so the first of equal values is the largest index
        if self.top_k == 1:
            pos = xp.expand_dims(rev.argmax(axis=-1), -1)
        else:
            pos = xp.argsort(-rev, axis=-1, kind="stable")[..., : self.top_k]
        values = xp.take_along_axis(rev, pos, axis=-1)
        index = (size - 1) - pos
        y = top[0].data
        if self.has_axis:
            y = xp.moveaxis(y, self.axis, -1)
            y[...] = values if self.out_max_val else index
        else:
            y = y.reshape(y.shape[0], y.shape[1], self.top_k)
            y[:, 0] = index
            if self.out_max_val:
                y[:, 1] = values

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False
