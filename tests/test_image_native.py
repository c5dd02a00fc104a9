"""Encoded images decoded as stored (Caffe's DecodeDatumNative: OpenCV's IMREAD_UNCHANGED) and
16-bit images, checked pixel by pixel against what OpenCV gives for each PNG colour type."""

from __future__ import annotations

import io
import struct
import zlib

import lmdb
import numpy as np
import pytest
from PIL import Image

from minicaffe.data.image_io import decode_image_bytes, native_channels, read_image_file
from minicaffe.errors import DataError
from minicaffe.proto import caffe_pb2
from tests.data_layers.util import build_data_layer, next_batch


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(samples: np.ndarray, color_type: int, extra: bytes = b"") -> bytes:
    """A PNG of (H, W, samples) uint8 or big-endian uint16 values, written by hand so that every
    colour type and bit depth is reachable (Pillow does not write 16-bit colour)."""
    h, w = samples.shape[:2]
    depth = 16 if samples.dtype.itemsize == 2 else 8
    rows = samples.reshape(h, -1).astype(">u2" if depth == 16 else "u1")
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + extra
            + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


RNG = np.random.default_rng(3)
RGBA = RNG.integers(0, 256, (3, 4, 4), dtype=np.uint8)
LA = RNG.integers(0, 256, (3, 4, 2), dtype=np.uint8)
GREY16 = RNG.integers(0, 65536, (3, 4, 1), dtype=np.uint16)
RGB16 = RNG.integers(0, 65536, (3, 4, 3), dtype=np.uint16)


def test_alpha_keeps_four_channels_in_bgra_order():
    chw = decode_image_bytes(_png(RGBA, 6))
    np.testing.assert_array_equal(chw, RGBA[:, :, [2, 1, 0, 3]].transpose(2, 0, 1))
    grey_alpha = decode_image_bytes(_png(LA, 4))  # OpenCV: grey + alpha -> 4 channels
    want = np.stack([LA[:, :, 0]] * 3 + [LA[:, :, 1]])
    np.testing.assert_array_equal(grey_alpha, want)
    # forcing colour or grey drops the alpha channel, as IMREAD_COLOR / IMREAD_GRAYSCALE do
    np.testing.assert_array_equal(decode_image_bytes(_png(RGBA, 6), color=True),
                                  RGBA[:, :, [2, 1, 0]].transpose(2, 0, 1))
    assert decode_image_bytes(_png(LA, 4), color=False).shape == (1, 3, 4)


def test_transparency_chunk_makes_an_alpha_channel():
    rgb = RNG.integers(0, 256, (2, 3, 3), dtype=np.uint8)
    rgb[0, 0] = (1, 2, 3)
    trns = _chunk(b"tRNS", struct.pack(">HHH", 1, 2, 3))
    chw = decode_image_bytes(_png(rgb, 2, trns))
    assert chw.shape == (4, 2, 3)
    np.testing.assert_array_equal(chw[:3], rgb[:, :, ::-1].transpose(2, 0, 1))
    assert chw[3, 0, 0] == 0 and (chw[3].ravel()[1:] == 255).all()
    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    palette.putpalette([10, 20, 30, 40, 50, 60])
    buf = io.BytesIO()
    palette.save(buf, "PNG", transparency=1)
    chw = decode_image_bytes(buf.getvalue())
    np.testing.assert_array_equal(chw[:, 0, 0], [30, 20, 10, 255])
    np.testing.assert_array_equal(chw[:, 0, 1], [60, 50, 40, 0])


def test_grey_and_colour_stay_as_stored():
    grey = RNG.integers(0, 256, (3, 4, 1), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image_bytes(_png(grey, 0)), grey.transpose(2, 0, 1))
    rgb = RGBA[:, :, :3].copy()
    np.testing.assert_array_equal(decode_image_bytes(_png(rgb, 2)),
                                  rgb[:, :, ::-1].transpose(2, 0, 1))


@pytest.mark.parametrize("samples,color_type", [(GREY16, 0), (RGB16, 2)])
def test_sixteen_bits_refused_as_stored_and_stripped_when_forced(samples, color_type):
    data = _png(samples, color_type)
    with pytest.raises(DataError, match="more than 8 bits.*force_color or force_gray"):
        decode_image_bytes(data, where="db 'x' record 3")
    high = (samples >> 8).astype(np.uint8)  # OpenCV keeps the high byte of each sample
    colour = np.repeat(high, 3, axis=2) if samples.shape[2] == 1 else high
    np.testing.assert_array_equal(decode_image_bytes(data, color=True),
                                  colour[:, :, ::-1].transpose(2, 0, 1))
    if samples.shape[2] == 1:
        np.testing.assert_array_equal(decode_image_bytes(data, color=False),
                                      high.transpose(2, 0, 1))


def test_native_channel_counts(tmp_path):
    cases = {"rgba.png": (_png(RGBA, 6), 4), "la.png": (_png(LA, 4), 4),
             "rgb.png": (_png(RGBA[:, :, :3].copy(), 2), 3), "g16.png": (_png(GREY16, 0), None)}
    for name, (data, want) in cases.items():
        (tmp_path / name).write_bytes(data)
        with Image.open(io.BytesIO(data)) as img:
            assert native_channels(img) == want, name
        # convert-imageset stores a file as it is only when it decodes to the channels asked
        chw, raw, native = read_image_file(str(tmp_path / name))
        assert raw == data and native == want and chw.shape[0] == 3, name


def test_data_layer_reads_an_rgba_datum_as_four_channels(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 22)
    with env.begin(write=True) as txn:
        for i in range(2):
            datum = caffe_pb2.Datum(data=_png(RGBA, 6), label=i, encoded=True)
            txn.put(b"%08d" % i, datum.SerializeToString())
    env.close()
    text = ('type: "Data" top: "data" top: "label" data_param { source: "db" batch_size: 2 '
            "backend: LMDB } transform_param { %s }")
    layer, tops = build_data_layer(text % "", prefetch=0)
    x, _ = next_batch(layer, tops)
    assert x.shape == (2, 4, 3, 4)
    np.testing.assert_array_equal(x[1], RGBA[:, :, [2, 1, 0, 3]].transpose(2, 0, 1))
    layer, tops = build_data_layer(text % "force_color: true", prefetch=0)
    assert next_batch(layer, tops)[0].shape == (2, 3, 3, 4)
