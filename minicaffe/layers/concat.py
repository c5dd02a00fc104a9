"""Concat: joins several bottoms along one axis."""

from __future__ import annotations

from minicaffe.errors import ShapeError
from minicaffe.layer import Layer
from minicaffe.registry import register_layer


def concat_axis(layer, bottom, param, legacy_field: str) -> int:
    """The axis from ``param.axis`` or its legacy alias (``concat_dim``/``slice_dim``)."""
    if param.HasField("axis") and param.HasField(legacy_field):
        raise layer.error(f"give either axis or {legacy_field}, not both")
    num_axes = bottom[0].num_axes
    if param.HasField(legacy_field):
        axis = int(getattr(param, legacy_field))
        if not 0 <= axis < num_axes:
            raise layer.error(
                f"{legacy_field} {axis} is out of range for a bottom of shape {bottom[0].shape}",
                ShapeError,
            )
        return axis
    axis = int(param.axis)
    if not -num_axes <= axis < num_axes:
        raise layer.error(
            f"axis {axis} is out of range for a bottom of shape {bottom[0].shape}", ShapeError
        )
    return axis % num_axes


@register_layer("Concat")
class ConcatLayer(Layer):
    """y = [x_0, x_1, ...] stacked along ``axis``.

    Params (concat_param): axis = 1 (negative counts from the end), or the legacy concat_dim
    (non-negative; not together with axis).
    Bottoms: one or more blobs with equal shapes except along ``axis``. Top: the same shape with
    shape[axis] = sum of the bottoms' shape[axis]. With one bottom the top shares its data and diff.
    Gradient: dx_i = the slice of dy that x_i filled.
    """

    min_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom, top):
        self.axis = concat_axis(self, bottom, self.layer_param.concat_param, "concat_dim")

    def reshape(self, bottom, top):
        self.axis = concat_axis(self, bottom, self.layer_param.concat_param, "concat_dim")
        ref = bottom[0].shape
        total = 0
        for i, blob in enumerate(bottom):
            shape = blob.shape
            if len(shape) != len(ref) or any(
                a != b for k, (a, b) in enumerate(zip(shape, ref)) if k != self.axis
            ):
                raise self.error(
                    f"bottoms must match in every axis but the concat axis "
                    f"{self.axis}; bottom 0 has shape {ref}, bottom {i} has shape "
                    f"{shape}",
                    ShapeError,
                )
            total += shape[self.axis]
        if top[0] is bottom[0] and len(bottom) > 1:
            raise self.error("Concat cannot run in place")
        top[0].reshape(ref[: self.axis] + (total,) + ref[self.axis + 1 :])
        if len(bottom) == 1 and top[0] is not bottom[0]:
            top[0].share_data(bottom[0])
            top[0].share_diff(bottom[0])

    def forward(self, bottom, top):
        if len(bottom) > 1:
            self.xp.concatenate([b.data for b in bottom], axis=self.axis, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if len(bottom) == 1:
            return
        dy = top[0].diff
        lead = (slice(None),) * self.axis
        start = 0
        for blob, down in zip(bottom, propagate_down, strict=True):
            n = blob.shape[self.axis]
            if down:
                self.xp.copyto(blob.diff, dy[lead + (slice(start, start + n),)])
            start += n
