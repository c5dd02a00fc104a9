"""DataTransformer: crop, mirror, mean subtraction and scaling of a batch, as Caffe applies them.

For each item with pixels x (C x H x W), crop offset (h0, w0) and mirror flag m, the output is

    y[c, i, j] = (x[c, h0 + i, w'] - mean[c, h0 + i, w']) * scale,
    w' = w0 + (cw - 1 - j) if m else w0 + j

i.e. crop, then mirror, then subtract the mean, then scale (Caffe's order; the mean image is
read at the same source pixel as the data, so it is cropped and mirrored along with it).

Params (transform_param): scale = 1; mirror = false (flip with probability 1/2, in TRAIN and
TEST alike); crop_size = 0 (no crop; else a random offset in [0, H - crop] per item in TRAIN and
the centre ((H - crop) / 2) in TEST); mean_file (a C x H x W .binaryproto of the full image size)
or mean_value (1 value for every channel, or one per channel), not both; force_color /
force_gray (decode encoded images as 3 / 1 channels), not both.

With crop_size set, the items of one batch may differ in height and width (each at least
crop_size; Caffe crops every Datum or image at its own size): :meth:`transform_items` crops them
one by one. Without a crop they must all have one size.

A batch is transformed at once (one gather for the crops, one flip of the mirrored items, one
subtraction, one scaling); the random draws come from the generator passed in, so the data
layer's walk stays reproducible.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from minicaffe.errors import DataError
from minicaffe.proto import caffe_pb2


class DataTransformer:
    """Applies one layer's ``transform_param`` to batches (N, C, H, W) on the host."""

    def __init__(self, param, phase: int, *, where: str = "data transformer", dtype=np.float32):
        self.where = where
        self.phase = phase
        self.dtype = np.dtype(dtype)
        self.scale = float(param.scale)
        self.mirror = bool(param.mirror)
        self.crop_size = int(param.crop_size)
        self.force_color = bool(param.force_color)
        self.force_gray = bool(param.force_gray)
        if self.force_color and self.force_gray:
            raise self._error("force_color and force_gray cannot both be set")
        self.mean_file = param.mean_file
        self.mean_values = np.asarray(param.mean_value, dtype=self.dtype)
        if self.mean_file and len(self.mean_values):
            raise self._error(
                "give mean_file or mean_value, not both "
                f"(mean_file '{self.mean_file}', {len(self.mean_values)} mean_value)"
            )
        self.mean_image: np.ndarray | None = None
        if self.mean_file:
            from minicaffe.errors import WeightsError
            from minicaffe.prototxt import read_binaryproto

            try:
                mean = read_binaryproto(self.mean_file)
            except (WeightsError, OSError) as exc:
                raise self._error(f"cannot read mean_file '{self.mean_file}': {exc}") from None
            if mean.ndim == 4 and mean.shape[0] == 1:
                mean = mean[0]
            if mean.ndim != 3:
                raise self._error(
                    f"mean_file '{self.mean_file}' must hold one C x H x W image; "
                    f"its blob has shape {mean.shape}"
                )
            self.mean_image = np.ascontiguousarray(mean, dtype=self.dtype)

    def _error(self, message: str) -> DataError:
        return DataError(f"{self.where}: transform_param: {message}")

    @property
    def color(self) -> bool | None:
        """How to decode encoded images: True (colour), False (grey) or None (as stored)."""
        return True if self.force_color else (False if self.force_gray else None)

    @property
    def is_identity(self) -> bool:
        return (
            self.scale == 1
            and not self.mirror
            and not self.crop_size
            and self.mean_image is None
            and not len(self.mean_values)
        )

    def output_shape(self, channels: int, height: int, width: int) -> tuple[int, int, int]:
        """(C, H', W') of a transformed C x H x W item (checks the crop and the mean's size)."""
        c = self.crop_size
        if c and (c > height or c > width):
            raise self._error(f"crop_size {c} is larger than the {height}x{width} input")
        if self.mean_image is not None and self.mean_image.shape != (channels, height, width):
            raise self._error(
                f"mean_file '{self.mean_file}' is {self.mean_image.shape} (C, H, W) "
                f"but the data is {(channels, height, width)}"
            )
        n = len(self.mean_values)
        if n not in (0, 1) and n != channels:
            raise self._error(
                f"mean_value needs 1 value or one per channel ({channels}); received {n}"
            )
        return (channels, c, c) if c else (channels, height, width)

    def __call__(
        self, batch: np.ndarray, rng: np.random.Generator, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Transform ``batch`` (N, C, H, W; uint8 or float) into ``out`` (N, C, H', W')."""
        n, c, h, w = batch.shape
        oc, oh, ow = self.output_shape(c, h, w)
        if out is None:
            out = np.empty((n, oc, oh, ow), dtype=self.dtype)
        # Caffe draws the mirror flag, then the crop offsets, per item; one vector draw each.
        flips = rng.integers(0, 2, n).astype(bool) if self.mirror else None
        crop = self.crop_size
        if crop and self.phase == caffe_pb2.TRAIN:
            h0 = rng.integers(0, h - crop + 1, n)
            w0 = rng.integers(0, w - crop + 1, n)
        else:
            h0 = w0 = None
        mean = self.mean_image
        if h0 is None:
            # same window for every item: plain slices
            top, left = ((h - crop) // 2, (w - crop) // 2) if crop else (0, 0)
            rows, cols = slice(top, top + oh), slice(left, left + ow)
            np.copyto(out, batch[:, :, rows, cols], casting="unsafe")
            if mean is not None:
                out -= mean[:, rows, cols]
        else:
            # one window per item: index a (free) view of every window by the item's offsets
            windows = sliding_window_view(batch, (oh, ow), axis=(2, 3))
            np.copyto(out, windows[np.arange(n), :, h0, w0], casting="unsafe")
            if mean is not None:
                mean_windows = sliding_window_view(mean, (oh, ow), axis=(1, 2))
                out -= mean_windows[:, h0, w0].transpose(1, 0, 2, 3)
        if flips is not None and flips.any():
            out[flips] = out[flips][..., ::-1]
        if len(self.mean_values):
            values = (
                self.mean_values if len(self.mean_values) > 1 else np.repeat(self.mean_values, c)
            )
            out -= values[None, :, None, None]
        if self.scale != 1:
            out *= self.dtype.type(self.scale)
        return out

    def check_sizes(self, items: list, name=None, resize_hint: str = "") -> bool:
        """Whether the C x H x W ``items`` of one batch differ in height or width, which
        ``crop_size`` allows (Caffe crops each at its own size: only the crop must fit); a
        DataError when they cannot make one batch: other channel counts, or other sizes without
        a crop. ``name(i)`` names item i in the message (its record or file; default "item
        i"); ``resize_hint`` says how the user can resize the sources."""
        first = items[0].shape
        mixed = False
        for i, item in enumerate(items):
            if item.shape == first:
                continue
            named = name(i) if name is not None else f"item {i} of the batch"
            if not self.crop_size or item.shape[0] != first[0]:
                fix = "they must have one number of channels"
                if not self.crop_size:
                    fix = "they must have one size: set transform_param crop_size to crop them"
                    fix += f", or {resize_hint} to resize them" if resize_hint else ""
                raise DataError(f"{named} is {item.shape} (C, H, W) but the batch's first "
                                f"item is {first}; {fix}")
            try:
                self.output_shape(*item.shape)
            except DataError as exc:
                raise DataError(f"{named}: {exc}") from None
            mixed = True
        return mixed

    def transform_items(
        self, items: list, rng: np.random.Generator, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Transform a list of C x H x W items into ``out`` (N, C, H', W').

        Items of one size are stacked and transformed as a batch; with ``crop_size`` set, items
        of differing heights and widths (same channels) are cropped one by one, as Caffe does
        (:meth:`check_sizes` says which, or why they cannot make one batch).
        """
        if not self.check_sizes(items):
            dtype = np.uint8 if all(it.dtype == np.uint8 for it in items) else self.dtype
            raw = np.stack(items).astype(dtype, copy=False)
            return self(raw, rng, out=out)
        return self.transform_each(items, rng, out)

    def transform_each(
        self, items: list, rng: np.random.Generator, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Transform C x H x W items of differing sizes one by one into ``out`` (N, C, H', W'),
        each cropped at its own size (items :meth:`check_sizes` has accepted)."""
        shape = self.output_shape(*items[0].shape)
        if out is None:
            out = np.empty((len(items), *shape), dtype=self.dtype)
        for i, it in enumerate(items):
            self(it[None], rng, out=out[i : i + 1])
        return out
