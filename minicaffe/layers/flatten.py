"""Flatten: merges a run of axes into one; the top shares the bottom's memory."""

from __future__ import annotations

from minicaffe.errors import ShapeError
from minicaffe.layer import Layer
from minicaffe.registry import register_layer


def share_memory(layer, bottom, top, shape) -> None:
    """Give ``top`` ``shape`` and the bottom's data and diff (no copy; not in place)."""
    if top[0] is bottom[0]:
        raise layer.error(
            f"{layer.type} cannot run in place: its top shares the bottom's memory "
            "under a new shape, so give the top its own name"
        )
    top[0].reshape(shape)
    top[0].share_data(bottom[0])
    top[0].share_diff(bottom[0])


@register_layer("Flatten")
class FlattenLayer(Layer):
    """Axes axis..end_axis (inclusive) become one axis of their product.

    Params (flatten_param): axis = 1, end_axis = -1 (negative counts from the end).
    Bottom: x of shape S. Top: S[:axis] + (prod(S[axis:end_axis+1]),) + S[end_axis+1:], sharing
    x's data and diff, so forward and backward do nothing. Not in place.
    """

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def reshape(self, bottom, top):
        p = self.layer_param.flatten_param
        shape = bottom[0].shape
        n = len(shape)
        for name, value in (("axis", p.axis), ("end_axis", p.end_axis)):
            if not -n <= value < n:
                raise self.error(
                    f"flatten_param.{name} {value} is out of range for a bottom of shape {shape}",
                    ShapeError,
                )
        start, end = p.axis % n, p.end_axis % n
        if end < start:
            raise self.error(
                f"flatten_param.end_axis ({p.end_axis} -> {end}) comes before axis "
                f"({p.axis} -> {start}) for a bottom of shape {shape}",
                ShapeError,
            )
        flat = 1
        for d in shape[start : end + 1]:
            flat *= d
        share_memory(self, bottom, top, shape[:start] + (flat,) + shape[end + 1 :])

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass
