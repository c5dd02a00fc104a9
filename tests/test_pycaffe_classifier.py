"""caffe.Classifier and caffe.Detector (window scoring; selective search is not provided)."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe import io as cio
from minicaffe.classifier import Classifier
from minicaffe.detector import Detector
from minicaffe.errors import MinicaffeError

DEPLOY = """name: "tiny"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 3 dim: 3 dim: 4 dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.05 }
                              bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""

MEAN = np.array([0.3, 0.5, 0.7], dtype=np.float32) * 255


@pytest.fixture
def files(tmp_path):
    from minicaffe import Net

    model = tmp_path / "deploy.prototxt"
    model.write_text(DEPLOY)
    weights = tmp_path / "w.caffemodel"
    Net(str(model), 1).save(str(weights))
    return str(model), str(weights)


def _reference(net, crops):
    """Preprocess (RGB->BGR, x255, -mean, CHW) and score crops N x 4 x 4 x 3 by hand."""
    x = crops[..., ::-1] * 255 - MEAN[::-1]
    x = x.transpose(0, 3, 1, 2).reshape(len(crops), -1)
    w, b = (p.data for p in net.params["ip"])
    z = x @ w.T + b
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_classifier_predict_oversampled_and_centre(files):
    clf = Classifier(*files, image_dims=(6, 6), mean=MEAN[::-1], raw_scale=255,
                     channel_swap=(2, 1, 0))
    assert clf.transformer.transpose["data"] == (2, 0, 1)
    rng = np.random.default_rng(0)
    images = [rng.random((6, 6, 3)).astype(np.float32), rng.random((8, 10, 3)).astype(np.float32),
              rng.random((5, 7, 3)).astype(np.float32), rng.random((6, 6, 3)).astype(np.float32)]
    probs = clf.predict(images)  # 4 images x 10 crops = 40 > batch 3: forward_all pads
    assert probs.shape == (4, 5)
    resized = np.stack([cio.resize_image(im, (6, 6)) for im in images])
    expected = _reference(clf, cio.oversample(resized, (4, 4))).reshape(4, 10, 5).mean(axis=1)
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-6)
    centre = clf.predict(images, oversample=False)
    np.testing.assert_allclose(centre, _reference(clf, resized[:, 1:5, 1:5]), rtol=1e-4,
                               atol=1e-6)


def test_classifier_defaults_to_the_input_size(files):
    clf = Classifier(*files)
    assert list(clf.image_dims) == [4, 4] and list(clf.crop_dims) == [4, 4]
    assert clf.predict([np.zeros((4, 4, 3), np.float32)], oversample=False).shape == (1, 5)


def test_detector_scores_windows_with_and_without_context(files, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    img = (rng.random((20, 24, 3)) * 255).astype(np.uint8)
    path = str(tmp_path / "im.png")
    Image.fromarray(img).save(path)
    windows = np.array([[0, 0, 8, 8], [4, 6, 16, 20]])
    det = Detector(*files, mean=MEAN[::-1], raw_scale=255, channel_swap=(2, 1, 0))
    out = det.detect_windows([(path, windows)])
    assert [d["filename"] for d in out] == [path, path]
    image = cio.load_image(path)
    crops = np.stack([cio.resize_image(image[y0:y1, x0:x1], (4, 4))
                      for y0, x0, y1, x1 in windows])
    np.testing.assert_allclose(np.stack([d["prediction"] for d in out]),
                               _reference(det, crops), rtol=1e-4, atol=1e-6)
    padded = Detector(*files, mean=MEAN[::-1], raw_scale=255, channel_swap=(2, 1, 0),
                      context_pad=1)
    # the mean in image space (RGB, [0, 1]) fills context that falls outside the image
    np.testing.assert_allclose(padded.crop_mean.reshape(-1), MEAN / 255, rtol=1e-6)
    crop = padded.crop(image, np.array([0, 0, 8, 8]))
    assert crop.shape == (4, 4, 3)
    np.testing.assert_allclose(crop[0, 0], MEAN / 255, rtol=1e-6)  # above-left: mean
    assert len(padded.detect_windows([(path, windows)])) == 2
    with pytest.raises(MinicaffeError, match="selective-search"):
        det.detect_selective_search([path])


def test_bad_images_and_windows_are_clear_errors(files, tmp_path):
    from PIL import Image

    clf = Classifier(*files)
    clf.transformer.set_transpose("data", (2, 0, 1))
    with pytest.raises(MinicaffeError, match="1 channels but the input 'data' takes 3"):
        clf.predict([np.zeros((4, 4, 1), np.float32)])
    path = str(tmp_path / "im.png")
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(path)
    det = Detector(*files)
    for window in ([30, 30, 40, 40], [5, 5, 5, 9]):  # outside the image; no rows
        with pytest.raises(MinicaffeError, match="holds no pixel of the 20 x 24 image"):
            det.detect_windows([(path, np.array([window]))])
