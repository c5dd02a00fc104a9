"""MemoryData: batches cycle through the arrays given to reset(); shapes and errors."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe.errors import DataError, ShapeError
from tests.data_layers.util import build_data_layer, next_batch

TEXT = (
    'type: "MemoryData" top: "data" top: "label" '
    "memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 }"
)


def _arrays(n=6):
    data = np.arange(n * 6, dtype=np.float32).reshape(n, 1, 2, 3)
    return data, np.arange(n, dtype=np.float32) * 10


def test_batches_cycle_and_wrap():
    layer, tops = build_data_layer(TEXT)
    assert tops[0].shape == (2, 1, 2, 3) and tops[1].shape == (2,)
    data, labels = _arrays()
    layer.reset(data, labels[:, None, None, None])  # pycaffe's 4-D labels are accepted
    for k in range(5):
        x, y = next_batch(layer, tops)
        rows = (np.arange(2) + 2 * k) % 6
        np.testing.assert_array_equal(x, data[rows])
        np.testing.assert_array_equal(y, labels[rows])


def test_state_round_trip():
    layer, tops = build_data_layer(TEXT)
    layer.reset(*_arrays())
    next_batch(layer, tops)
    state = layer.data_state()
    assert (state.cursor, state.layer) == (2, "data")
    want = next_batch(layer, tops)
    fresh, ftops = build_data_layer(TEXT)
    fresh.restore_data_state(state)  # before the arrays arrive: applied at reset
    fresh.reset(*_arrays())
    for got, w in zip(next_batch(fresh, ftops), want):
        np.testing.assert_array_equal(got, w)


def test_errors():
    layer, tops = build_data_layer(TEXT)
    with pytest.raises(DataError, match="set_input_arrays"):
        next_batch(layer, tops)
    data, labels = _arrays()
    with pytest.raises(ShapeError, match=r"\(n, 1, 2, 3\).*received \(6, 2, 3\)"):
        layer.reset(data[:, 0], labels)
    with pytest.raises(ShapeError, match=r"one value per data row, shape \(6,\); received \(5,\)"):
        layer.reset(data, labels[:5])
    with pytest.raises(ShapeError, match="multiple of batch_size 2; received 5"):
        layer.reset(data[:5], labels[:5])
    with pytest.raises(ShapeError, match="positive channels, height"):
        build_data_layer('type: "MemoryData" top: "d" top: "l" memory_data_param { batch_size: 2 }')


def test_net_set_input_arrays():
    from minicaffe.net import Net

    net = Net(
        "layer { name: 'mem' type: 'MemoryData' top: 'data' top: 'label' "
        "memory_data_param { batch_size: 3 channels: 1 height: 2 width: 3 } }",
        phase="TRAIN",
    )
    data, labels = _arrays(6)
    net.set_input_arrays(data, labels)
    for k in range(3):
        net.forward()
        rows = (np.arange(3) + 3 * k) % 6
        np.testing.assert_array_equal(net.blobs["data"].data, data[rows])
        np.testing.assert_array_equal(net.blobs["label"].data, labels[rows])
