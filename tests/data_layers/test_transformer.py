"""DataTransformer: Caffe's order (crop -> mirror -> mean -> scale), crop/mirror by phase, means."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from minicaffe.data.transformer import DataTransformer
from minicaffe.errors import DataError
from minicaffe.proto import caffe_pb2
from minicaffe.prototxt import write_binaryproto

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def _transformer(text: str, phase=TRAIN) -> DataTransformer:
    p = caffe_pb2.TransformationParameter()
    text_format.Merge(text, p)
    return DataTransformer(p, phase, where="layer 't' (Data)")


def _batch(n=6, c=3, h=5, w=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w)).astype(np.uint8)


def _candidates(x, mean, crop, scale):
    """Every legal output for one item: (x - mean) at some crop offset, maybe mirrored, scaled."""
    c, h, w = x.shape
    diff = x.astype(np.float32) - mean
    for top in range(h - crop + 1):
        for left in range(w - crop + 1):
            win = diff[:, top : top + crop, left : left + crop]
            yield (top, left, False), win * np.float32(scale)
            yield (top, left, True), win[:, :, ::-1] * np.float32(scale)


def _match(y, x, mean, crop, scale):
    found = [k for k, cand in _candidates(x, mean, crop, scale) if np.array_equal(cand, y)]
    assert found, "output is not a crop/mirror of (x - mean) * scale"
    return found[0]


def test_identity_keeps_values():
    x = _batch()
    out = _transformer("")(x, np.random.default_rng(0))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, x)


def test_train_random_crop_mirror_mean_file_then_scale(tmp_path):
    x = _batch(n=40, h=6, w=7)
    mean = np.random.default_rng(1).uniform(0, 255, (3, 6, 7)).astype(np.float32)
    write_binaryproto(tmp_path / "mean.binaryproto", mean[None], legacy=True)
    t = _transformer(
        f'crop_size: 4 mirror: true scale: 0.25 mean_file: "{tmp_path}/mean.binaryproto"'
    )
    out = t(x, np.random.default_rng(3))
    assert out.shape == (40, 3, 4, 4)
    picks = [_match(out[i], x[i], mean, 4, 0.25) for i in range(40)]
    assert {p[2] for p in picks} == {False, True}  # both mirror states occur
    assert len({p[:2] for p in picks}) > 4  # offsets vary per item


def test_test_phase_centre_crop_but_still_mirrors():
    x = _batch(n=30, h=6, w=7)
    out = _transformer("crop_size: 3 mirror: true", TEST)(x, np.random.default_rng(0))
    centre = x[:, :, 1:4, 2:5].astype(np.float32)
    same = np.array([np.array_equal(o, c) for o, c in zip(out, centre)])
    flipped = np.array([np.array_equal(o, c[:, :, ::-1]) for o, c in zip(out, centre)])
    assert np.all(same | flipped) and same.any() and flipped.any()


def test_test_phase_centre_crop_is_deterministic_and_mean_before_scale():
    x = _batch(h=7, w=7)
    t = _transformer("crop_size: 5 scale: 0.5 mean_value: 100", TEST)
    out = t(x, np.random.default_rng(0))
    np.testing.assert_array_equal(out, (x[:, :, 1:6, 1:6].astype(np.float32) - 100) * 0.5)


def test_mean_values_per_channel():
    x = _batch(c=3)
    out = _transformer("mean_value: 1 mean_value: 2 mean_value: 3 scale: 2")(x, None)
    ref = (x.astype(np.float32) - np.array([1, 2, 3], np.float32)[:, None, None]) * 2
    np.testing.assert_array_equal(out, ref)


def test_mean_file_is_cropped_at_the_same_window(tmp_path):
    x = _batch(h=6, w=6)
    mean = np.arange(3 * 36, dtype=np.float32).reshape(3, 6, 6)
    write_binaryproto(tmp_path / "m.binaryproto", mean, legacy=True)
    t = _transformer(f'crop_size: 2 mean_file: "{tmp_path}/m.binaryproto"', TEST)
    np.testing.assert_array_equal(t(x, None), (x - mean)[:, :, 2:4, 2:4])


def test_reproducible_with_the_same_generator():
    x = _batch(n=8)
    t = _transformer("crop_size: 3 mirror: true")
    a = t(x, np.random.default_rng(5))
    b = t(x, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


def test_errors(tmp_path):
    write_binaryproto(tmp_path / "m.binaryproto", np.zeros((3, 4, 4), np.float32), legacy=True)
    with pytest.raises(DataError, match="mean_file or mean_value, not both"):
        _transformer(f'mean_file: "{tmp_path}/m.binaryproto" mean_value: 3')
    with pytest.raises(DataError, match="force_color and force_gray"):
        _transformer("force_color: true force_gray: true")
    with pytest.raises(DataError, match="cannot read mean_file.*nope"):
        _transformer('mean_file: "nope.binaryproto"')
    t = _transformer(f'mean_file: "{tmp_path}/m.binaryproto"')
    with pytest.raises(DataError, match=r"layer 't' \(Data\).*\(3, 4, 4\).*\(3, 5, 6\)"):
        t(_batch(), None)
    with pytest.raises(DataError, match="crop_size 9 is larger than the 5x6 input"):
        _transformer("crop_size: 9")(_batch(), None)
    with pytest.raises(DataError, match=r"1 value or one per channel \(3\); received 2"):
        _transformer("mean_value: 1 mean_value: 2")(_batch(), None)
