"""Blob storage semantics: views, growth, sharing, legacy dims."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe.blob import Blob, shape_equals_legacy
from minicaffe.errors import ShapeError


def test_reshape_keeps_memory_when_not_growing():
    b = Blob(2, 3, 4)
    b.data[...] = 1.0
    buf = b._data.array
    b.reshape(4, 6)
    assert b._data.array is buf and b.data.shape == (4, 6) and b.count == 24
    b.reshape(5, 6)  # grows: new zeroed memory on next access
    assert b.data.shape == (5, 6) and not b.data.any()
    assert b._data.array is not buf and b.count == 30


def test_data_setter_copies_and_views_write_through():
    b = Blob(2, 2)
    b.data = np.arange(4).reshape(2, 2)
    v = b.data
    v[0, 0] = 9
    assert b.data[0, 0] == 9
    b.diff[...] = 3
    assert b.diff.sum() == 12


def test_share_data_and_diff():
    a, b = Blob(6), Blob(2, 3)
    b.share_data(a)
    b.share_diff(a)
    a.data[...] = np.arange(6)
    np.testing.assert_array_equal(b.data, np.arange(6).reshape(2, 3))
    b.diff[1, 2] = 5
    assert a.diff[5] == 5
    with pytest.raises(ShapeError, match="6 and 5"):
        Blob(6).share_data(Blob(5))


def test_legacy_accessors_and_scalar():
    b = Blob(2, 3)
    assert (b.num, b.channels, b.height, b.width) == (2, 3, 1, 1)
    s = Blob(())
    assert s.count == 1 and s.data.shape == ()
    with pytest.raises(ShapeError, match=">= 0"):
        Blob(-1, 2)
    with pytest.raises(ShapeError, match="out of range"):
        Blob(2, 3).canonical_axis(2)
    assert Blob(2, 3, 4).canonical_axis(-1) == 2


def test_shape_equals_legacy():
    assert shape_equals_legacy((10, 20), (1, 1, 10, 20))
    assert not shape_equals_legacy((10, 20), (1, 10, 1, 20))
    assert not shape_equals_legacy((1, 2, 3, 4, 5), (1, 2, 3, 4))


def test_a_blob_too_large_for_memory_is_a_typed_error_naming_it():
    from minicaffe.errors import OutOfMemoryError

    blob = Blob(2**20, 2**20, 2**10, name="huge")  # 4 PiB of float32: no allocator gives that
    with pytest.raises(MemoryError) as info:  # (also a MemoryError, as before)
        _ = blob.data
    assert isinstance(info.value, OutOfMemoryError)
    assert "blob 'huge' of shape (1048576, 1048576, 1024) needs 4.00 PiB" in str(info.value)
