"""MemoryData: batches taken in turn from arrays the user hands over (``net.set_input_arrays``)."""

from __future__ import annotations

import logging

import numpy as np

from minicaffe.errors import DataError, ShapeError
from minicaffe.layer import Layer
from minicaffe.registry import register_layer

log = logging.getLogger("minicaffe")


@register_layer("MemoryData")
class MemoryDataLayer(Layer):
    """Tops data (batch_size, channels, height, width) and label (batch_size,), filled from the
    arrays given to :meth:`reset` (pycaffe's ``net.set_input_arrays(data, labels)``).

    Params (memory_data_param): batch_size, channels, height, width (all > 0). ``reset(data,
    labels)`` takes data of shape (n, channels, height, width) and n labels (shape (n,) or
    (n, 1, 1, 1)) with n a multiple of batch_size; each forward returns the next batch_size rows
    and wraps to row 0 after the last. The arrays are used as given: as in Caffe, transform_param
    does not apply to them. The position is saved like the other data layers' (``data_state``).
    """

    exact_num_bottom_blobs = 0
    exact_num_top_blobs = 2
    host_only = True

    def setup(self, bottom, top):
        p = self.layer_param.memory_data_param
        dims = {
            "batch_size": p.batch_size,
            "channels": p.channels,
            "height": p.height,
            "width": p.width,
        }
        bad = {k: v for k, v in dims.items() if v <= 0}
        if bad:
            raise self.error(
                f"memory_data_param needs positive {', '.join(bad)}; received "
                + ", ".join(f"{k}={v}" for k, v in bad.items()),
                ShapeError,
            )
        self.batch_size = int(p.batch_size)
        self.item_shape = (int(p.channels), int(p.height), int(p.width))
        tp = self.layer_param.transform_param
        if tp.ListFields():
            log.warning(
                "%s: transform_param is not applied to arrays given by reset() / "
                "set_input_arrays (as in Caffe); transform them beforehand",
                self.where(),
            )
        self._data: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._pos = 0
        self._epoch = 0
        self._pending: tuple[int, int] | None = None
        top[0].reshape((self.batch_size, *self.item_shape))
        top[1].reshape((self.batch_size,))

    def reset(self, data, labels) -> None:
        """Use ``data`` (n, C, H, W) and ``labels`` (n,) from the next forward on (row 0 first)."""
        data = np.asarray(data)
        labels = np.asarray(labels)
        if data.ndim != 4 or data.shape[1:] != self.item_shape:
            raise self.error(
                f"data must have shape (n, {', '.join(map(str, self.item_shape))}) "
                f"(n, channels, height, width); received {data.shape}",
                ShapeError,
            )
        n = data.shape[0]
        if labels.ndim > 1 and labels.size == labels.shape[0]:
            labels = labels.reshape(-1)
        if labels.shape != (n,):
            raise self.error(
                f"labels must hold one value per data row, shape ({n},); received {labels.shape}",
                ShapeError,
            )
        if n == 0 or n % self.batch_size:
            raise self.error(
                f"the number of rows must be a positive multiple of batch_size "
                f"{self.batch_size}; received {n}",
                ShapeError,
            )
        self._data = np.ascontiguousarray(data, dtype=self.dtype)
        self._labels = np.ascontiguousarray(labels, dtype=self.dtype)
        self._pos, self._epoch = 0, 0
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] < n:  # a position restored before the data came
            self._pos, self._epoch = pending

    def set_batch_size(self, batch_size: int) -> None:
        """pycaffe's ``set_batch_size``: change the batch size (the arrays must be reset)."""
        if batch_size <= 0:
            raise self.error(f"batch_size must be positive; received {batch_size}", ShapeError)
        self.batch_size = int(batch_size)
        self._data = self._labels = None

    def reshape(self, bottom, top):
        top[0].reshape((self.batch_size, *self.item_shape))
        top[1].reshape((self.batch_size,))

    def forward(self, bottom, top):
        if self._data is None:
            raise self.error(
                "no data: call net.set_input_arrays(data, labels) (or the layer's "
                "reset) before running the net",
                DataError,
            )
        rows = slice(self._pos, self._pos + self.batch_size)
        top[0].data = self._data[rows]
        top[1].data = self._labels[rows]
        self._pos += self.batch_size
        if self._pos >= len(self._data):
            self._pos = 0
            self._epoch += 1

    def backward(self, top, propagate_down, bottom):
        pass

    # saved position (same protocol as BaseDataLayer)
    def data_state(self):
        from minicaffe.proto import caffe_pb2

        return caffe_pb2.DataLayerState(layer=self.name, cursor=self._pos, epoch=self._epoch)

    def restore_data_state(self, state) -> None:
        """Continue at a saved row; before any data is given, at the next reset's data."""
        if self._data is None:
            self._pending = (int(state.cursor), int(state.epoch))
            return
        if not 0 <= state.cursor < len(self._data):
            raise self.error(
                f"saved position {state.cursor} is outside the {len(self._data)} rows given",
                DataError,
            )
        self._pos, self._epoch = int(state.cursor), int(state.epoch)
