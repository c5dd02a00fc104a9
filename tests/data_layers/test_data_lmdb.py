"""Data: LMDB of Datum records (raw, encoded, float), transform, prefetch, state, errors."""

from __future__ import annotations

import lmdb
import numpy as np
import pytest

from minicaffe import backend
from minicaffe.data.image_io import array_to_datum, encode_image
from minicaffe.errors import DataError
from minicaffe.proto import caffe_pb2
from tests.data_layers.util import build_data_layer, next_batch


def _write_db(path, values: list[bytes]):
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, v in enumerate(values):
            txn.put(f"{i:08d}_item{i}".encode(), v)
    env.close()


@pytest.fixture
def db(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    imgs = np.random.default_rng(0).integers(0, 256, (9, 3, 6, 5)).astype(np.uint8)
    _write_db(
        tmp_path / "db",
        [array_to_datum(im, 7 * i).SerializeToString() for i, im in enumerate(imgs)],
    )
    return imgs


def _text(source="db", batch=4, transform="", extra="backend: LMDB"):
    return (
        f'type: "Data" top: "data" top: "label" data_param {{ source: "{source}" '
        f"batch_size: {batch} {extra} }} transform_param {{ {transform} }}"
    )


@pytest.mark.parametrize("prefetch", [0, 4])
def test_records_in_key_order_with_transform(db, prefetch):
    layer, tops = build_data_layer(
        _text(transform="scale: 0.5 mean_value: 1 crop_size: 4"),
        prefetch=prefetch,
        phase=caffe_pb2.TEST,
    )
    assert tops[0].shape == (4, 3, 4, 4)
    for k in range(4):
        rows = (np.arange(4) + 4 * k) % 9
        x, y = next_batch(layer, tops)
        np.testing.assert_array_equal(x, (db[rows][:, :, 1:5, 0:4].astype(np.float32) - 1) * 0.5)
        np.testing.assert_array_equal(y, 7 * rows)


def test_encoded_and_float_datums(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    imgs = np.random.default_rng(1).integers(0, 256, (3, 3, 4, 4)).astype(np.uint8)
    enc = [
        caffe_pb2.Datum(data=encode_image(im, "png"), label=i, encoded=True)
        for i, im in enumerate(imgs)
    ]
    _write_db(tmp_path / "enc", [d.SerializeToString() for d in enc])
    layer, tops = build_data_layer(_text("enc", batch=3), prefetch=0)
    np.testing.assert_array_equal(next_batch(layer, tops)[0], imgs)
    layer, tops = build_data_layer(_text("enc", batch=3, transform="force_gray: true"))
    assert next_batch(layer, tops)[0].shape == (3, 1, 4, 4)
    vals = np.random.default_rng(2).standard_normal((2, 1, 2, 2)).astype(np.float32)
    floats = [
        caffe_pb2.Datum(channels=1, height=2, width=2, float_data=v.ravel(), label=1) for v in vals
    ]
    _write_db(tmp_path / "flt", [d.SerializeToString() for d in floats])
    layer, tops = build_data_layer(_text("flt", batch=2), prefetch=0)
    np.testing.assert_array_equal(next_batch(layer, tops)[0], vals)


def test_train_crop_mirror_same_with_and_without_prefetch_and_after_restore(db):
    text = _text(transform="crop_size: 3 mirror: true")
    runs = []
    for prefetch in (0, 4):
        backend.set_random_seed(5)
        layer, tops = build_data_layer(text, prefetch=prefetch)
        next_batch(layer, tops)
        state = layer.data_state()
        runs.append([next_batch(layer, tops) for _ in range(5)])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a[0], b[0])
    layer.restore_data_state(state)
    for want in runs[1]:
        np.testing.assert_array_equal(next_batch(layer, tops)[0], want[0])
    # a train and a test layer can read one database at once
    other, otops = build_data_layer(_text(), phase=caffe_pb2.TEST, prefetch=0)
    np.testing.assert_array_equal(next_batch(other, otops)[1], 7 * np.arange(4))


def test_errors(db, tmp_path):
    with pytest.raises(DataError, match="database 'nope' not found"):
        build_data_layer(_text("nope"))
    (tmp_path / "ldb").mkdir()
    (tmp_path / "ldb" / "CURRENT").write_text("MANIFEST-000001\n")
    with pytest.raises(DataError, match="LevelDB databases are not supported.*convert-imageset"):
        build_data_layer(_text("ldb", extra="backend: LEVELDB"))
    good = array_to_datum(np.zeros((3, 6, 5), np.uint8)).SerializeToString()
    small = array_to_datum(np.zeros((3, 2, 2), np.uint8)).SerializeToString()
    bad = caffe_pb2.Datum(channels=3, height=6, width=5, data=b"\0" * 10).SerializeToString()
    _write_db(tmp_path / "mixed", [good, small, bad, b"\xff\xff garbage"])
    layer, tops = build_data_layer(_text("mixed", batch=2), prefetch=0)
    with pytest.raises(DataError, match=r"record 1 \(key '00000001_item1'\).*\(3, 2, 2\)"):
        next_batch(layer, tops)
    layer.restore_data_state(caffe_pb2.DataLayerState(cursor=2))
    with pytest.raises(
        DataError,
        match=r"record 2 \(key '00000002_item2'\): Datum data holds "
        "10 bytes but channels\\*height\\*width = 3\\*6\\*5",
    ):
        next_batch(layer, tops)
    layer, tops = build_data_layer(_text("mixed", batch=1), prefetch=2)
    layer.restore_data_state(caffe_pb2.DataLayerState(cursor=3))
    with pytest.raises(DataError, match="record 3 .*not a serialized Datum"):
        next_batch(layer, tops)


def test_crop_takes_records_of_differing_sizes(tmp_path, monkeypatch):
    # Caffe crops every Datum at its own size; only the channels and the crop must fit.
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(3)
    imgs = [rng.integers(0, 256, s).astype(np.uint8) for s in ((3, 6, 5), (3, 9, 7), (3, 5, 5))]
    _write_db(
        tmp_path / "db", [array_to_datum(im, i).SerializeToString() for i, im in enumerate(imgs)]
    )
    layer, tops = build_data_layer(
        _text(batch=3, transform="crop_size: 5 mean_value: 10"), prefetch=0, phase=caffe_pb2.TEST
    )
    x, y = next_batch(layer, tops)
    assert x.shape == (3, 3, 5, 5)
    for item, im in zip(x, imgs):
        h0, w0 = (im.shape[1] - 5) // 2, (im.shape[2] - 5) // 2
        np.testing.assert_array_equal(item, im[:, h0 : h0 + 5, w0 : w0 + 5] - 10.0)
    np.testing.assert_array_equal(y, [0, 1, 2])
    layer, tops = build_data_layer(_text(batch=3), prefetch=0)
    with pytest.raises(DataError, match="record 1 .*Datum is \\(3, 9, 7\\).*crop_size"):
        next_batch(layer, tops)


def test_records_of_differing_sizes(tmp_path, monkeypatch):
    """Caffe crops every Datum at its own size, so with crop_size records may differ in height
    and width (only the crop must fit); without a crop, or with other channel counts, the
    batch is refused naming the record."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(4)
    sizes = [(3, 6, 5), (3, 8, 7), (3, 6, 5), (1, 6, 5), (3, 3, 3)]
    imgs = [rng.integers(0, 256, s).astype(np.uint8) for s in sizes]
    _write_db(tmp_path / "db", [array_to_datum(im, i).SerializeToString()
                                for i, im in enumerate(imgs)])
    layer, tops = build_data_layer(_text(batch=3, transform="crop_size: 4"),
                                   phase=caffe_pb2.TEST, prefetch=0)
    x, _ = next_batch(layer, tops)  # centre crops, each at its own size
    for got, im in zip(x, imgs[:3]):
        h0, w0 = (im.shape[1] - 4) // 2, (im.shape[2] - 4) // 2
        np.testing.assert_array_equal(got, im[:, h0 : h0 + 4, w0 : w0 + 4])
    with pytest.raises(DataError, match=r"record 4 .*is \(3, 3, 3\) \(C, H, W\) but the batch's "
                       r"first item is \(1, 6, 5\); they must have one number of channels"):
        next_batch(layer, tops)  # records 3, 4, 0: one grey, then colour
    layer, tops = build_data_layer(_text(batch=2), prefetch=0)
    with pytest.raises(DataError, match=r"record 1 .*\(3, 8, 7\).*set transform_param "
                       "crop_size to crop them, or convert-imageset --resize_height"):
        next_batch(layer, tops)
    layer, tops = build_data_layer(_text(batch=2, transform="crop_size: 4"), prefetch=0)
    layer.load_batch(np.array([0, 1]), np.random.default_rng(0), {})  # fits
    with pytest.raises(DataError, match=r"record 4 .*crop_size 4 is larger than the 3x3 input"):
        layer.load_batch(np.array([2, 4]), np.random.default_rng(0), {})
