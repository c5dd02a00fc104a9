"""Classifier: a Net that classifies images end to end, as pycaffe's ``caffe.Classifier``.

    clf = Classifier("deploy.prototxt", "weights.caffemodel", image_dims=(256, 256),
                     mean=np.array([104, 117, 123]), raw_scale=255, channel_swap=(2, 1, 0))
    probs = clf.predict([minicaffe.io.load_image("cat.jpg")])     # N x classes

predict: resize each image (H x W x K, RGB in [0, 1]) to ``image_dims``, take the ten
oversampled crops (corners + centre, and their mirrors) or the centre crop of the net's input
size, preprocess with the Transformer (transpose to K x H x W, channel swap, raw scale, mean,
input scale), run forward_all, and average the predictions over the ten crops.
"""

from __future__ import annotations

import numpy as np

from minicaffe import io as caffe_io
from minicaffe.errors import ShapeError
from minicaffe.net import TEST, Net


def _preprocess_batch(transformer, name: str, images: np.ndarray) -> np.ndarray:
    """Transformer.preprocess over N x H x W x K images of the input's size, vectorised."""
    out = np.asarray(images, dtype=np.float32)
    transpose = transformer.transpose.get(name)
    if transpose is not None:
        out = out.transpose((0,) + tuple(t + 1 for t in transpose))
        transformer.check_channels(name, out.shape[1], "each image")
    swap = transformer.channel_swap.get(name)
    if swap is not None:
        out = out[:, list(swap)]
    out = np.array(out, dtype=np.float32)  # own contiguous copy for the in-place steps
    return transformer.scale_and_center(name, out)


def input_transformer(net, model_file, mean, input_scale, raw_scale, channel_swap) -> str:
    """Give ``net`` (a Classifier or Detector) a Transformer for its first input, configured as
    pycaffe's constructors do (HxWxC images in, CxHxW blobs out); returns the input's name."""
    if not net.inputs:
        raise ShapeError(
            f"{type(net).__name__} needs a net with an input blob; {model_file} has none"
        )
    in_ = net.inputs[0]
    net.transformer = caffe_io.Transformer({in_: net.blobs[in_].shape})
    net.transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        net.transformer.set_mean(in_, mean)
    if input_scale is not None:
        net.transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        net.transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        net.transformer.set_channel_swap(in_, channel_swap)
    return in_


class Classifier(Net):
    """A TEST-phase Net with image preprocessing and ``predict``.

    Arguments as pycaffe: model_file, pretrained_file, image_dims (default: the input's
    H x W), mean (K values or K x H x W), input_scale, raw_scale, channel_swap. Extra keyword
    arguments (device, dtype) go to :class:`~minicaffe.Net`.
    """

    def __init__(
        self,
        model_file,
        pretrained_file,
        image_dims=None,
        mean=None,
        input_scale=None,
        raw_scale=None,
        channel_swap=None,
        **net_kwargs,
    ):
        Net.__init__(self, model_file, pretrained_file, TEST, **net_kwargs)
        in_ = input_transformer(self, model_file, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[in_].shape[2:])
        self.image_dims = np.array(
            image_dims if image_dims is not None and len(image_dims) else self.crop_dims
        )

    def predict(self, inputs, oversample: bool = True) -> np.ndarray:
        """Class scores (the first output) for a list of H x W x K images: N x classes."""
        if len(inputs) == 0:
            raise ShapeError("predict needs at least one image")
        channels = np.asarray(inputs[0]).shape[2]
        h, w = int(self.image_dims[0]), int(self.image_dims[1])
        resized = np.empty((len(inputs), h, w, channels), dtype=np.float32)
        for i, im in enumerate(inputs):  # images may differ in size: one resize each
            resized[i] = caffe_io.resize_image(im, (h, w)).reshape(h, w, channels)
        if oversample:
            crops = caffe_io.oversample(resized, self.crop_dims)
        else:
            centre = np.array([h, w]) / 2.0
            half = self.crop_dims / 2.0
            y0, x0 = (centre - half).astype(int)
            y1, x1 = (centre + half).astype(int)
            crops = resized[:, y0:y1, x0:x1, :]
        in_ = self.inputs[0]
        caffe_in = _preprocess_batch(self.transformer, in_, crops)
        out = self.forward_all(**{in_: caffe_in})
        predictions = out[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape(len(predictions) // 10, 10, -1).mean(axis=1)
        return predictions


__all__ = ["Classifier"]
