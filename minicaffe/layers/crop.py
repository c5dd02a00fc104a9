"""Crop: cuts bottom 0 down to the shape of bottom 1 over the axes from ``axis`` on."""

from __future__ import annotations

from minicaffe.errors import ShapeError
from minicaffe.layer import Layer
from minicaffe.registry import register_layer


@register_layer("Crop")
class CropLayer(Layer):
    """y = x[..., o_a : o_a + R_a, ...] for every axis a >= ``axis``; earlier axes kept whole.

    Params (crop_param): axis = 2 (negative counts from the end); offset (none: 0 everywhere; one
    value: used for every cropped axis; else one per axis from ``axis`` to the end).
    Bottoms: x (to crop), ref (only its shape is read; it takes no gradient). Both have the same
    number of axes and x must be at least offset + ref.shape[a] long on each cropped axis.
    Top: x.shape[:axis] + ref.shape[axis:].
    Gradient: dx = dy placed at the offsets, 0 elsewhere.
    """

    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 1

    def reshape(self, bottom, top):
        p = self.layer_param.crop_param
        x, ref = bottom[0].shape, bottom[1].shape
        if len(x) != len(ref):
            raise self.error(
                f"both bottoms need the same number of axes; received {x} to crop "
                f"and reference {ref}",
                ShapeError,
            )
        n = len(x)
        if not -n <= p.axis < n:
            raise self.error(
                f"crop_param.axis {p.axis} is out of range for bottom shape {x}", ShapeError
            )
        start = p.axis % n
        offsets = [int(o) for o in p.offset]
        if len(offsets) > 1 and len(offsets) != n - start:
            raise self.error(
                f"crop_param.offset must hold 0, 1 or {n - start} values (one per "
                f"axis from {start} on); received {len(offsets)}",
                ShapeError,
            )
        if len(offsets) <= 1:
            offsets = [offsets[0] if offsets else 0] * (n - start)
        for a, off in zip(range(start, n), offsets, strict=True):
            if off + ref[a] > x[a]:
                raise self.error(
                    f"cannot crop axis {a}: offset {off} + reference size {ref[a]} "
                    f"exceeds size {x[a]} (shapes {x} and {ref})",
                    ShapeError,
                )
        self.index = (slice(None),) * start + tuple(
            slice(off, off + ref[a]) for a, off in zip(range(start, n), offsets, strict=True)
        )
        if top[0] is bottom[0]:
            raise self.error("Crop cannot run in place")
        top[0].reshape(x[:start] + ref[start:])

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def forward(self, bottom, top):
        self.xp.copyto(top[0].data, bottom[0].data[self.index])

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        dx.fill(0)
        dx[self.index] = top[0].diff
