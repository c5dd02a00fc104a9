"""Detector: score image windows with a Net, as pycaffe's ``caffe.Detector`` (R-CNN style).

    det = Detector("deploy.prototxt", "weights.caffemodel", mean=..., raw_scale=255,
                   channel_swap=(2, 1, 0), context_pad=16)
    dets = det.detect_windows([("img.jpg", [(ymin, xmin, ymax, xmax), ...])])

Each window is cropped from the image (optionally with ``context_pad`` pixels of context,
filling out-of-image parts with the mean), warped to the net's input size, preprocessed and
scored; the result lists {"window", "prediction", "filename"} per window.

Not provided: ``detect_selective_search``, which needs the external MATLAB selective-search
package; compute proposals elsewhere and pass them to ``detect_windows``.
"""

from __future__ import annotations

import numpy as np

from minicaffe import io as caffe_io
from minicaffe.classifier import _preprocess_batch, input_transformer
from minicaffe.errors import MinicaffeError, ShapeError
from minicaffe.net import TEST, Net


class Detector(Net):
    """A TEST-phase Net that scores windows (arguments as pycaffe's; extra kwargs go to Net)."""

    def __init__(
        self,
        model_file,
        pretrained_file,
        mean=None,
        input_scale=None,
        raw_scale=None,
        channel_swap=None,
        context_pad=None,
        **net_kwargs,
    ):
        Net.__init__(self, model_file, pretrained_file, TEST, **net_kwargs)
        input_transformer(self, model_file, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        """Score windows: ``images_windows`` is [(image filename, [(ymin, xmin, ymax, xmax),
        ...]), ...]. Returns one dict per window: window, prediction, filename."""
        crops = []
        for fname, windows in images_windows:
            image = caffe_io.load_image(fname).astype(np.float32)
            crops.extend(self.crop(image, np.asarray(w)) for w in windows)
        if not crops:
            return []
        in_ = self.inputs[0]
        size = self.blobs[in_].shape[2:]
        warped = np.stack([caffe_io.resize_image(c, size) for c in crops])
        caffe_in = _preprocess_batch(self.transformer, in_, warped)
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        out, i = [], 0
        for fname, windows in images_windows:
            for window in windows:
                out.append({"window": window, "prediction": predictions[i], "filename": fname})
                i += 1
        return out

    def detect_selective_search(self, image_fnames):
        raise MinicaffeError(
            "detect_selective_search needs the external selective-search "
            "package, which minicaffe does not include; compute window "
            "proposals elsewhere and call detect_windows"
        )

    def crop(self, im, window) -> np.ndarray:
        """The window (ymin, xmin, ymax, xmax) of ``im``, with context padding when set."""
        window = np.asarray(window)
        if not self.context_pad:
            y0, x0, y1, x1 = (int(v) for v in window)
            crop = im[max(y0, 0) : y1, max(x0, 0) : x1]
            if crop.shape[0] == 0 or crop.shape[1] == 0:
                raise ShapeError(f"window {tuple(window.tolist())} (ymin, xmin, ymax, xmax) "
                                 f"holds no pixel of the {im.shape[0]} x {im.shape[1]} image")
            return crop
        crop_size = self.blobs[self.inputs[0]].shape[3]  # square input assumed, as pycaffe
        scale = crop_size / (1.0 * crop_size - self.context_pad * 2)
        half_h = (window[2] - window[0] + 1) / 2.0
        half_w = (window[3] - window[1] + 1) / 2.0
        centre = np.array([window[0] + half_h, window[1] + half_w])
        box = np.round(np.tile(centre, 2) + scale * np.array([-half_h, -half_w, half_h, half_w]))
        full_h, full_w = box[2] - box[0] + 1, box[3] - box[1] + 1
        scale_h, scale_w = crop_size / full_h, crop_size / full_w
        pad_y = int(round(max(0, -box[0]) * scale_h))  # part of the box above/left of the image
        pad_x = int(round(max(0, -box[1]) * scale_w))
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w])
        clip_h, clip_w = box[2] - box[0] + 1, box[3] - box[1] + 1
        if clip_h <= 0 or clip_w <= 0:
            raise ShapeError(f"window {tuple(window)} lies outside the {im_h}x{im_w} image")
        crop_h = min(int(round(clip_h * scale_h)), crop_size - pad_y)
        crop_w = min(int(round(clip_w * scale_w)), crop_size - pad_x)
        context = im[int(box[0]) : int(box[2]), int(box[1]) : int(box[3])]
        out = np.empty(tuple(self.crop_dims), dtype=np.float32)
        out[...] = self.crop_mean
        out[pad_y : pad_y + crop_h, pad_x : pad_x + crop_w] = caffe_io.resize_image(
            context, (crop_h, crop_w)
        )
        return out

    def configure_crop(self, context_pad) -> None:
        """Crop size (input H x W x K) and, with context padding, the mean in image space."""
        in_ = self.inputs[0]
        tpose = self.transformer.transpose[in_]
        inverse = np.argsort(tpose)
        self.crop_dims = np.array(self.blobs[in_].shape[1:])[inverse]
        self.context_pad = context_pad
        if not context_pad:
            return
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(tuple(self.crop_dims), dtype=np.float32)
            return
        crop_mean = np.array(mean, dtype=np.float32).transpose(inverse)
        swap = self.transformer.channel_swap.get(in_)
        if swap is not None:
            crop_mean = crop_mean[:, :, np.argsort(swap)]
        raw_scale = self.transformer.raw_scale.get(in_)
        if raw_scale is not None:
            crop_mean /= raw_scale
        self.crop_mean = crop_mean


__all__ = ["Detector"]
