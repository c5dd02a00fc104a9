"""Helpers shared by the data-layer tests."""

from __future__ import annotations

import numpy as np
from google.protobuf import text_format

from minicaffe.backend import CPU_DEVICE
from minicaffe.blob import Blob
from minicaffe.proto import caffe_pb2
from minicaffe.registry import create_layer


def build_data_layer(
    text: str, *, phase=caffe_pb2.TRAIN, dtype=np.float32, prefetch=None, num_tops=None
):
    """(layer, tops) for a data layer given as LayerParameter text; tops named as in ``text``."""
    lp = caffe_pb2.LayerParameter()
    text_format.Merge(text, lp)
    if not lp.name:
        lp.name = "data"
    layer = create_layer(lp, phase=phase, device=CPU_DEVICE, dtype=dtype)
    if prefetch is not None:
        layer.prefetch_count = prefetch
    n = len(lp.top) if lp.top else (num_tops or 1)
    tops = [Blob(dtype=dtype, name=lp.top[i] if i < len(lp.top) else f"t{i}") for i in range(n)]
    layer.set_up([], tops)
    return layer, tops


def next_batch(layer, tops):
    layer.reshape([], tops)
    layer.forward([], tops)
    return [t.data.copy() for t in tops]
