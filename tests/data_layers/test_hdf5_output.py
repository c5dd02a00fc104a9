"""HDF5Output: rows of every forward appended to the datasets data and label."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from minicaffe.errors import DataError, ShapeError
from tests.helpers import make_layer


def test_writes_and_appends(tmp_path):
    path = tmp_path / "out.h5"
    x = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    y = np.array([1.0, 0.0])
    layer, bottom, top = make_layer(
        f'type: "HDF5Output" hdf5_output_param {{ file_name: "{path}" }}', [x, y], num_tops=0
    )
    assert layer.host_only
    for _ in range(2):
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
    with h5py.File(path, "r") as f:  # readable while the layer still holds the file
        # Caffe saves the bottoms with their legacy 4-D shapes: (2, 3, 2) -> (2, 3, 2, 1)
        np.testing.assert_array_equal(f["data"][...], np.concatenate([x, x])[..., None])
        np.testing.assert_array_equal(f["label"][...], np.concatenate([y, y])[:, None, None, None])
        assert f["data"].dtype == np.float32
    layer.close()


def test_errors(tmp_path):
    x, y = np.zeros((2, 3)), np.zeros(3)
    with pytest.raises(DataError, match="file_name is required"):
        make_layer('type: "HDF5Output"', [x, y[:2]], num_tops=0)
    with pytest.raises(DataError, match="cannot create HDF5 file"):
        make_layer(
            f'type: "HDF5Output" hdf5_output_param {{ file_name: "{tmp_path}/no/x.h5" }}',
            [x, y[:2]],
            num_tops=0,
        )
    with pytest.raises(ShapeError, match="same number of rows"):
        make_layer(
            f'type: "HDF5Output" hdf5_output_param {{ file_name: "{tmp_path}/x.h5" }}',
            [x, y],
            num_tops=0,
        )
