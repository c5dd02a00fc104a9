"""Input: tops whose shapes come from ``input_param.shape`` and whose data the user fills."""

from __future__ import annotations

from minicaffe.errors import ShapeError
from minicaffe.layer import Layer
from minicaffe.registry import register_layer


@register_layer("Input")
class InputLayer(Layer):
    """Net inputs. Params (input_param): shape (repeated BlobShape): none, one for every top, or
    one per top. Bottom: none. Tops: as many as named. Reshape keeps whatever shape the user set.
    """

    exact_num_bottom_blobs = 0
    min_top_blobs = 1

    def setup(self, bottom, top):
        shapes = self.layer_param.input_param.shape
        if len(shapes) not in (0, 1, len(top)):
            raise self.error(
                f"input_param.shape must be given 0, 1 or {len(top)} times (once per "
                f"top); received {len(shapes)}",
                ShapeError,
            )
        for i, blob in enumerate(top):
            if shapes:
                blob.reshape(tuple(shapes[0 if len(shapes) == 1 else i].dim))

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass
