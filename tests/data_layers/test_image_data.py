"""ImageData: list parsing, BGR decoding, resize, grey, shuffle, rand_skip, state, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from minicaffe import backend
from minicaffe.data.image_io import resize_linear
from minicaffe.errors import DataError
from minicaffe.proto import caffe_pb2
from tests.data_layers.util import build_data_layer, next_batch


@pytest.fixture
def images(tmp_path, monkeypatch):
    """7 RGB PNGs (names with spaces) under img/, list.txt with labels 10*i; returns the BGR
    uint8 C x H x W arrays."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "img").mkdir()
    rgb = np.random.default_rng(0).integers(0, 256, (7, 5, 6, 3)).astype(np.uint8)
    for i, im in enumerate(rgb):
        Image.fromarray(im).save(tmp_path / "img" / f"pic {i}.png")
    (tmp_path / "list.txt").write_text("".join(f"pic {i}.png {10 * i}\n" for i in range(7)))
    return rgb[..., ::-1].transpose(0, 3, 1, 2)


def _text(extra="", batch=3, transform=""):
    return (
        'type: "ImageData" top: "data" top: "label" image_data_param { source: "list.txt" '
        f'root_folder: "img/" batch_size: {batch} {extra} }} transform_param {{ {transform} }}'
    )


def test_values_are_bgr_and_wrap(images):
    layer, tops = build_data_layer(_text(), prefetch=0)
    assert tops[0].shape == (3, 3, 5, 6) and tops[1].shape == (3,)
    for k in range(4):
        rows = (np.arange(3) + 3 * k) % 7
        x, y = next_batch(layer, tops)
        np.testing.assert_array_equal(x, images[rows])
        np.testing.assert_array_equal(y, 10 * rows)


def test_grey_resize_and_transform(images, tmp_path):
    layer, tops = build_data_layer(
        _text("is_color: false new_height: 8 new_width: 4", transform="scale: 0.5"), prefetch=0
    )
    x, _ = next_batch(layer, tops)
    assert x.shape == (3, 1, 8, 4)
    grey = np.asarray(Image.open(tmp_path / "img" / "pic 1.png").convert("L"))
    ref = resize_linear(grey[None], 8, 4)[0]  # OpenCV's INTER_LINEAR (tests/test_image_resize)
    np.testing.assert_array_equal(x[1, 0], ref.astype(np.float32) * 0.5)


@pytest.mark.parametrize("phase", [caffe_pb2.TRAIN, caffe_pb2.TEST])
def test_prefetch_on_off_identical_with_random_transform(images, phase):
    text = _text("shuffle: true", transform="crop_size: 4 mirror: true")
    runs = []
    for prefetch in (0, 3):
        backend.set_random_seed(11)
        layer, tops = build_data_layer(text, prefetch=prefetch, phase=phase)
        runs.append([next_batch(layer, tops) for _ in range(6)])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_shuffle_reshuffles_each_epoch_and_restores(images):
    backend.set_random_seed(2)
    layer, tops = build_data_layer(_text("shuffle: true", batch=7), prefetch=2)
    epochs = [next_batch(layer, tops)[1] // 10 for _ in range(3)]
    for e in epochs:
        assert sorted(e) == list(range(7))
    assert not (np.array_equal(epochs[0], epochs[1]) and np.array_equal(epochs[1], epochs[2]))
    state = layer.data_state()
    assert state.epoch == 3 and sorted(state.order) == list(range(7))
    want = [next_batch(layer, tops) for _ in range(3)]
    layer.restore_data_state(state)
    for w in want:
        got = next_batch(layer, tops)
        np.testing.assert_array_equal(got[0], w[0])
        np.testing.assert_array_equal(got[1], w[1])


def test_rand_skip_starts_inside_the_first_lines(images):
    starts = set()
    for seed in range(12):
        backend.set_random_seed(seed)
        layer, tops = build_data_layer(_text("rand_skip: 4", batch=1), prefetch=0)
        starts.add(int(next_batch(layer, tops)[1][0]) // 10)
    assert starts <= {0, 1, 2, 3} and len(starts) > 1


def test_errors(images, tmp_path):
    with pytest.raises(DataError, match="list file 'nope.txt' not found"):
        build_data_layer(_text().replace("list.txt", "nope.txt"))
    (tmp_path / "list.txt").write_text("pic 0.png 0\npic 1.png\n")
    with pytest.raises(DataError, match="'list.txt' line 2: expected '<image path> <integer"):
        build_data_layer(_text())
    (tmp_path / "list.txt").write_text("pic 0.png 0\nmissing.png 1\n")
    layer, tops = build_data_layer(_text(batch=2), prefetch=2)
    with pytest.raises(DataError, match="'list.txt' line 2: image 'img/missing.png' not found"):
        next_batch(layer, tops)
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "img" / "big.png")
    (tmp_path / "list.txt").write_text("pic 0.png 0\nbig.png 1\n")
    layer, tops = build_data_layer(_text(batch=2), prefetch=0)
    with pytest.raises(DataError, match=r"'img/big.png' \('list.txt' line 2\) is \(3, 9, 9\) "
                       r"\(C, H, W\) but the batch's first item is \(3, 5, 6\).*crop_size.*"
                       "new_height and new_width"):
        next_batch(layer, tops)
    (tmp_path / "img" / "bad.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "list.txt").write_text("bad.png 0\n")
    with pytest.raises(DataError, match="line 1: cannot read image 'img/bad.png'"):
        build_data_layer(_text())
    (tmp_path / "list.txt").write_text("pic 0.png 0\n")
    with pytest.raises(DataError, match="new_height and new_width must be given together"):
        build_data_layer(_text("new_height: 4"))


def test_list_names_need_not_be_utf8_and_labels_fit_int32(images, tmp_path):
    import os

    name = b"caf\xe9.png"  # a Latin-1 name, as Caffe reads list files: bytes
    Image.fromarray(np.full((4, 5, 3), 7, np.uint8)).save(tmp_path / "img" / os.fsdecode(name))
    (tmp_path / "list.txt").write_bytes(name + b" 4\n")
    layer, tops = build_data_layer(_text(batch=1))
    next_batch(layer, tops)
    assert tops[1].data[0] == 4 and np.all(tops[0].data == 7)
    (tmp_path / "list.txt").write_bytes(name + b" 99999999999\n")
    with pytest.raises(DataError, match="line 1: label 99999999999 does not fit"):
        build_data_layer(_text(batch=1))


@pytest.mark.parametrize("phase", [caffe_pb2.TRAIN, caffe_pb2.TEST])
def test_crop_takes_images_of_differing_sizes(images, tmp_path, phase):
    # Caffe crops every image at its own size: only the crop has to fit each one.
    big = np.random.default_rng(5).integers(0, 256, (9, 8, 3)).astype(np.uint8)
    Image.fromarray(big).save(tmp_path / "img" / "big.png")
    (tmp_path / "list.txt").write_text("pic 0.png 0\nbig.png 1\n")
    layer, tops = build_data_layer(
        _text(batch=2, transform="crop_size: 4 scale: 2"), prefetch=0, phase=phase
    )
    x, y = next_batch(layer, tops)
    assert x.shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(y, [0, 1])
    big_bgr = big[..., ::-1].transpose(2, 0, 1)
    for item, src in ((x[0], images[0]), (x[1], big_bgr)):
        windows = np.lib.stride_tricks.sliding_window_view(src, (4, 4), axis=(1, 2))
        if phase == caffe_pb2.TEST:
            h0, w0 = (src.shape[1] - 4) // 2, (src.shape[2] - 4) // 2
            np.testing.assert_array_equal(item, windows[:, h0, w0] * 2.0)
        else:
            found = (windows.transpose(1, 2, 0, 3, 4) * 2.0 == item).all(axis=(2, 3, 4))
            assert found.any()
    # an image smaller than the crop, or without a crop, is an error naming the line
    Image.fromarray(big[:3]).save(tmp_path / "img" / "small.png")
    (tmp_path / "list.txt").write_text("pic 0.png 0\nsmall.png 1\n")
    layer, tops = build_data_layer(_text(batch=2, transform="crop_size: 4"), prefetch=0)
    with pytest.raises(DataError, match="'img/small.png' \\('list.txt' line 2\\).*crop_size 4"):
        next_batch(layer, tops)


def test_force_gray_does_not_override_is_color(images, caplog):
    # Caffe's ImageData decodes with image_data_param.is_color; force_color / force_gray of
    # transform_param only apply to encoded Datums (Data layer), so here they are ignored.
    with caplog.at_level("WARNING", logger="minicaffe"):
        layer, tops = build_data_layer(_text(transform="force_gray: true"), prefetch=0)
    assert "ImageData ignores them" in caplog.text
    x, _ = next_batch(layer, tops)
    np.testing.assert_array_equal(x, images[:3])
    layer, tops = build_data_layer(_text("is_color: false", transform="force_color: true"))
    assert tops[0].shape == (3, 1, 5, 6)
