"""DummyData: tops filled by fillers (constant ones once, random ones at every forward)."""

from __future__ import annotations

from minicaffe.errors import ShapeError
from minicaffe.fillers import fill
from minicaffe.layer import Layer
from minicaffe.registry import register_layer


@register_layer("DummyData")
class DummyDataLayer(Layer):
    """Params (dummy_data_param): data_filler (0 = constant 0, 1 = every top, or one per top);
    shape (1 or one per top) or the legacy num/channels/height/width lists (1 or one per top).
    Bottom: none. Tops: one or more.
    """

    exact_num_bottom_blobs = 0
    min_top_blobs = 1

    def setup(self, bottom, top):
        p = self.layer_param.dummy_data_param
        n = len(top)
        legacy = [list(p.num), list(p.channels), list(p.height), list(p.width)]
        if p.shape and any(legacy):
            raise self.error("give either shape or num/channels/height/width, not both")
        if p.shape:
            if len(p.shape) not in (1, n):
                raise self.error(
                    f"shape must be given once or once per top ({n}); received {len(p.shape)}",
                    ShapeError,
                )
            shapes = [tuple(p.shape[0 if len(p.shape) == 1 else i].dim) for i in range(n)]
        else:
            for values in legacy:
                if len(values) not in (1, n):
                    raise self.error(
                        "num, channels, height and width must each be given once or "
                        f"once per top ({n})",
                        ShapeError,
                    )
            shapes = [tuple(v[0 if len(v) == 1 else i] for v in legacy) for i in range(n)]
        fillers = list(p.data_filler)
        if len(fillers) not in (0, 1, n):
            raise self.error(
                f"data_filler must be given 0, 1 or {n} times; received {len(fillers)}"
            )
        self._fillers = [
            (fillers[0] if len(fillers) == 1 else fillers[i]) if fillers else None for i in range(n)
        ]
        self._refill = [f is not None and f.type != "constant" for f in self._fillers]
        for blob, shape, filler in zip(top, shapes, self._fillers, strict=True):
            blob.reshape(shape)
            fill(blob, filler, layer=self)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        for blob, filler, refill in zip(top, self._fillers, self._refill, strict=True):
            if refill:
                fill(blob, filler, layer=self)

    def backward(self, top, propagate_down, bottom):
        pass
