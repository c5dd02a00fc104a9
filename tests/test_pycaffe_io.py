"""caffe.io: pycaffe's test_io.py behaviours plus Transformer, images, resize and oversample."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe import io as cio
from minicaffe.errors import DataError, ShapeError, WeightsError
from minicaffe.proto import caffe_pb2

# ---------------------------------------------------------------- blobproto (pycaffe test_io)


def test_blobproto_old_format():
    blob = caffe_pb2.BlobProto()
    blob.data.extend(np.zeros((10, 10)).ravel().tolist())
    blob.num, blob.channels, blob.height, blob.width = (1, 1, 10, 10)
    assert cio.blobproto_to_array(blob).shape == (1, 1, 10, 10)


def test_blobproto_new_format():
    data = np.arange(20.0).reshape(4, 5)
    blob = caffe_pb2.BlobProto()
    blob.data.extend(data.ravel().tolist())
    blob.shape.dim.extend(data.shape)
    arr = cio.blobproto_to_array(blob)
    assert arr.shape == (4, 5) and arr.dtype == np.float64
    np.testing.assert_array_equal(arr, data)


def test_blobproto_no_shape_is_a_value_error():
    blob = caffe_pb2.BlobProto()
    blob.data.extend(np.zeros(100).tolist())
    with pytest.raises(ValueError, match="holds 100 data values but its shape"):
        cio.blobproto_to_array(blob)
    with pytest.raises(WeightsError):
        cio.blobproto_to_array(blob)


def test_blobproto_scalar():
    blob = caffe_pb2.BlobProto()
    blob.data.append(123.0)
    arr = cio.blobproto_to_array(blob)
    assert arr.shape == () and arr == 123


def test_blobproto_round_trip_with_diff_and_vectors():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 3, 4)).astype(np.float32)
    d = rng.standard_normal((2, 3, 4)).astype(np.float32)
    blob = cio.array_to_blobproto(a, d)
    assert list(blob.shape.dim) == [2, 3, 4]
    np.testing.assert_array_equal(cio.blobproto_to_array(blob), a)
    np.testing.assert_array_equal(cio.blobproto_to_array(blob, return_diff=True), d)
    arrays = [a, np.ones((5,), np.float32)]
    back = cio.blobprotovector_str_to_arraylist(cio.arraylist_to_blobprotovector_str(arrays))
    assert [x.shape for x in back] == [(2, 3, 4), (5,)]
    np.testing.assert_array_equal(back[0], a)


# ---------------------------------------------------------------- datum


def test_array_to_datum_label_none_is_smaller():
    d1 = cio.array_to_datum(np.ones((10, 10, 3)), label=1)
    d2 = cio.array_to_datum(np.ones((10, 10, 3)))
    assert len(d1.SerializeToString()) > len(d2.SerializeToString())
    assert d1.label == 1 and not d2.HasField("label")


def test_datum_round_trips_uint8_and_float():
    u = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    d = cio.array_to_datum(u, label=7)
    assert d.data == u.tobytes() and len(d.float_data) == 0
    assert (d.channels, d.height, d.width) == (2, 3, 4)
    back = cio.datum_to_array(d)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, u)
    f = np.linspace(0, 1, 24).reshape(2, 3, 4)
    back = cio.datum_to_array(cio.array_to_datum(f))
    assert back.dtype == np.float64
    np.testing.assert_allclose(back, f.astype(np.float32), rtol=1e-7)
    with pytest.raises(ValueError, match="3-D"):
        cio.array_to_datum(np.zeros((2, 2)))
    with pytest.raises(DataError):
        cio.array_to_datum(np.zeros((2, 2)))


# ---------------------------------------------------------------- images


def test_load_image_rgb_grey_and_alpha(tmp_path):
    from PIL import Image

    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 255
    rgb[1, 2] = (10, 20, 30)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    im = cio.load_image(str(tmp_path / "c.png"))
    assert im.shape == (4, 5, 3) and im.dtype == np.float32
    np.testing.assert_allclose(im[0, 0], [1, 0, 0])
    np.testing.assert_allclose(im[1, 2], np.array([10, 20, 30]) / 255, rtol=1e-6)
    grey = cio.load_image(str(tmp_path / "c.png"), color=False)
    assert grey.shape == (4, 5, 1)
    np.testing.assert_allclose(grey[1, 2, 0], (0.2125 * 10 + 0.7154 * 20 + 0.0721 * 30) / 255,
                               rtol=1e-5)
    Image.fromarray(np.full((3, 3), 51, np.uint8)).save(tmp_path / "g.png")
    g3 = cio.load_image(str(tmp_path / "g.png"))
    assert g3.shape == (3, 3, 3)
    np.testing.assert_allclose(g3, 0.2, rtol=1e-6)
    rgba = np.dstack([rgb, np.full((4, 5), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_allclose(cio.load_image(str(tmp_path / "a.png")), im)  # alpha dropped
    with pytest.raises(DataError, match="no such image"):
        cio.load_image(str(tmp_path / "missing.png"))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot read as an image"):
        cio.load_image(str(tmp_path / "bad.png"))


def test_resize_image_bilinear_and_nearest():
    im = np.arange(12, dtype=np.float32).reshape(3, 4, 1)
    same = cio.resize_image(im, (3, 4))
    np.testing.assert_array_equal(same, im)
    assert same is not im
    up = cio.resize_image(np.array([[0.0, 1.0]], np.float32)[:, :, None], (1, 4))
    # pixel-centre alignment with edge replication: 0, .25, .75, 1
    np.testing.assert_allclose(up[0, :, 0], [0, 0.25, 0.75, 1], atol=1e-7)
    down = cio.resize_image(im, (1, 2))
    np.testing.assert_allclose(down[0, :, 0], [im[:, 0:2].mean(), im[:, 2:4].mean()], atol=1e-6)
    near = cio.resize_image(im, (6, 8), interp_order=0)
    np.testing.assert_array_equal(near[::2, ::2], im)
    multi = cio.resize_image(np.random.default_rng(0).random((5, 5, 7)), (9, 3))
    assert multi.shape == (9, 3, 7) and multi.dtype == np.float32
    with pytest.raises(ShapeError):
        cio.resize_image(np.zeros(3), (2, 2))


def test_oversample_ten_crops_in_pycaffe_order():
    ims = np.random.default_rng(1).random((2, 6, 8, 3)).astype(np.float32)
    crops = cio.oversample(ims, (4, 4))
    assert crops.shape == (20, 4, 4, 3)
    first = ims[0]
    expected = [first[0:4, 0:4], first[0:4, 4:8], first[2:6, 0:4], first[2:6, 4:8],
                first[1:5, 2:6]]
    for k, e in enumerate(expected):
        np.testing.assert_array_equal(crops[k], e)
        np.testing.assert_array_equal(crops[5 + k], e[:, ::-1])
    np.testing.assert_array_equal(crops[10], ims[1, 0:4, 0:4])
    with pytest.raises(ShapeError, match="larger"):
        cio.oversample(ims, (7, 4))


# ---------------------------------------------------------------- Transformer


def _transformer():
    t = cio.Transformer({"data": (1, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([10.0, 20.0, 30.0]))
    t.set_input_scale("data", 0.5)
    return t


def test_transformer_preprocess_order_and_deprocess_inverts():
    t = _transformer()
    img = np.random.default_rng(2).random((4, 5, 3)).astype(np.float32)
    before = img.copy()
    out = t.preprocess("data", img)
    np.testing.assert_array_equal(img, before)  # the caller's image is not modified
    expected = (img.transpose(2, 0, 1)[[2, 1, 0]] * 255 - np.array([10, 20, 30])[:, None, None])
    np.testing.assert_allclose(out, expected * 0.5, rtol=1e-5)
    assert out.shape == (3, 4, 5) and out.dtype == np.float32
    np.testing.assert_allclose(t.deprocess("data", out[None]), img, rtol=1e-5, atol=1e-6)


def test_transformer_resizes_inputs_and_means():
    t = cio.Transformer({"data": [1, 3, 4, 4]})
    t.set_transpose("data", (2, 0, 1))
    assert t.preprocess("data", np.ones((8, 6, 3))).shape == (3, 4, 4)
    t.set_mean("data", np.ones((3, 8, 8)))
    assert t.mean["data"].shape == (3, 4, 4)
    np.testing.assert_allclose(t.mean["data"], 1.0)


@pytest.mark.parametrize("call, pattern", [
    (lambda t: t.preprocess("nope", np.zeros((4, 5, 3))), "not one of the net inputs"),
    (lambda t: t.set_transpose("data", (1, 0)), "must have 3 axes"),
    (lambda t: t.set_channel_swap("data", (1, 0)), "must list 3 channels"),
    (lambda t: t.set_mean("data", np.zeros(4)), "mean has 4 channels"),
    (lambda t: t.set_mean("data", np.zeros((2, 4, 5))), "mean has 2 channels"),
    (lambda t: t.set_mean("data", np.zeros((1, 2, 3, 4, 5))), "mean must be"),
    # a grey image (with or without its channel axis) into a colour input
    (lambda t: t.preprocess("data", np.zeros((4, 5))), "1 channels but the input 'data' takes 3"),
    (lambda t: t.preprocess("data", np.zeros((4, 5, 1))),
     "1 channels but the input 'data' takes 3"),
    (lambda t: t.preprocess("data", np.zeros((2, 4, 5, 3))), "one image H x W x K"),
])
def test_transformer_errors(call, pattern):
    t = cio.Transformer({"data": (1, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    with pytest.raises(cio.TransformerError, match=pattern):
        call(t)


def test_grey_image_without_channel_axis_is_one_channel():
    t = cio.Transformer({"data": (1, 1, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    image = np.arange(20, dtype=np.float32).reshape(4, 5)
    np.testing.assert_array_equal(t.preprocess("data", image), image[None])
    with pytest.raises(cio.BlobProtoError, match="not a serialized BlobProtoVector"):
        cio.blobprotovector_str_to_arraylist(b"\xff\xff\xff")


def test_mean_binaryproto_workflow(tmp_path):
    """The usual pycaffe recipe: parse a mean .binaryproto (legacy 4-D dims, as
    compute_image_mean writes) with caffe_pb2 and turn it into an array."""
    from minicaffe.prototxt import write_binaryproto

    mean = np.arange(24, dtype=np.float32).reshape(3, 2, 4)
    path = tmp_path / "mean.binaryproto"
    write_binaryproto(str(path), mean, legacy=True)
    blob = caffe_pb2.BlobProto()
    blob.ParseFromString(path.read_bytes())
    arr = np.array(cio.blobproto_to_array(blob))
    assert arr.shape == (1, 3, 2, 4)
    np.testing.assert_array_equal(arr[0], mean)
    t = cio.Transformer({"data": (1, 3, 2, 4)})
    t.set_mean("data", arr[0])
    np.testing.assert_array_equal(t.mean["data"], mean)
