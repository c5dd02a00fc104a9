"""Filter: keeps the batch items whose selector is non-zero."""

from __future__ import annotations

from minicaffe.errors import ShapeError
from minicaffe.layer import Layer
from minicaffe.registry import register_layer


@register_layer("Filter")
class FilterLayer(Layer):
    """top_i = bottom_i[selector != 0] along axis 0, for every bottom but the last.

    Bottoms: K >= 1 blobs of N items, then the selector of shape (N, 1, 1, ...) (every axis after
    the first is 1). Tops: K blobs of shape (number kept,) + bottom_i.shape[1:]. At setup, before
    any selector values exist, each top gets all N items (as Caffe sizes them).
    Gradient: dx_i = dy_i at the kept items, 0 at the dropped ones; the selector takes none.
    Reshape reads the selector's values (a host sync on a GPU): the top size depends on them.
    """

    min_bottom_blobs = 2

    def setup(self, bottom, top):
        if len(top) != len(bottom) - 1:
            raise self.error(
                f"needs one top per filtered bottom ({len(bottom) - 1}, all but the "
                f"selector); received {len(top)} tops",
                ShapeError,
            )
        self._first = True
        self._selector = len(bottom) - 1

    def reshape(self, bottom, top):
        sel = bottom[-1].shape
        if not sel or any(d != 1 for d in sel[1:]):
            raise self.error(
                f"the selector (last bottom) must have shape (N, 1, ...); received {sel}",
                ShapeError,
            )
        for i, blob in enumerate(bottom[:-1]):
            if not blob.shape or blob.shape[0] != sel[0]:
                raise self.error(
                    f"bottom {i} must have the selector's {sel[0]} items on axis 0; "
                    f"received shape {blob.shape}",
                    ShapeError,
                )
        if self._first:
            self._first = False
            self._keep = self.xp.arange(sel[0])
        else:
            self._keep = self.xp.flatnonzero(bottom[-1].data.reshape(-1))
        kept = int(self._keep.shape[0])
        for i, (b, t) in enumerate(zip(bottom, top, strict=False)):
            if t is b:
                raise self.error(f"Filter cannot run in place (top {i})")
            t.reshape((kept,) + b.shape[1:])

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != self._selector

    def forward(self, bottom, top):
        for b, t in zip(bottom, top, strict=False):
            self.xp.take(b.data, self._keep, axis=0, out=t.data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[-1]:
            raise self.error("cannot back-propagate to the selector (last bottom)")
        for t, b, down in zip(top, bottom, propagate_down, strict=False):
            if down:
                dx = b.diff
                dx.fill(0)
                dx[self._keep] = t.diff
