"""WindowData: R-CNN's data layer, warped windows of images listed in a window file.

The window file (``window_data_param.source``) is a stream of whitespace-separated tokens made
of image records::

    # <image index>
    <image path>            (prefixed with root_folder)
    <channels>
    <height>
    <width>
    <number of windows>
    <class> <overlap> <x1> <y1> <x2> <y2>      (once per window; corners inclusive, 0-based)

A window with overlap >= fg_threshold is foreground (its class must be > 0), one with overlap
< bg_threshold is background (class and overlap become 0), any other is dropped. Each batch
holds ``batch_size - num_fg`` background windows, then ``num_fg = int(batch_size *
fg_fraction)`` foreground ones, each drawn uniformly with replacement (in TRAIN and TEST
alike), mirrored with probability 1/2 when transform_param.mirror is set, cut from its image
(read in colour, BGR) and warped to crop_size x crop_size by bilinear interpolation (OpenCV's
INTER_LINEAR, :func:`~minicaffe.data.image_io.resize_linear`).

With context_pad > 0 or crop_mode "square" the box is first grown about its centre: with half
sizes hw = (x2 - x1 + 1) / 2, hh = (y2 - y1 + 1) / 2 (both set to the larger in square mode)
and s = crop_size / (crop_size - 2 * context_pad), the new inclusive corners are
round(centre -/+ h * s), halves away from zero (so the grown box spans about 2 * h * s + 1
pixels, one more than the context arithmetic intends). The part of it inside the
image is warped to its share of crop_size (round(clipped size * crop_size / grown size)) and
placed in a zero crop_size x crop_size canvas at the scaled width cut off the top and the left
(the right when mirrored), its size cut back where rounding would overflow the canvas.

Each warped pixel becomes (pixel - mean) * scale; the canvas around it stays 0. The mean is
transform_param.mean_value (1 value or 3) or transform_param.mean_file, read at the canvas
position offset by (mean width - crop_size) / 2 in BOTH directions (Caffe takes the row offset
from the width too). Tops: data (batch_size, 3, crop_size, crop_size), label (batch_size,).

Caffe quirks kept (window_data_layer.cpp, upgrade_proto.cpp of BVLC Caffe):

* ``scale`` is window_data_param.scale; transform_param.scale is NOT applied (a warning says
  so). Caffe's V0/V1 upgrade moves a legacy window_data_param.scale into transform_param, so
  old nets run unscaled in Caffe, as here.
* The image index after ``#`` says which record's image the windows are cut from (Caffe looks
  images up by it); the data top's channel count is the LAST record's ``channels`` (must be 3).
* The mirror flag swaps which side's padding is used; the mean is not mirrored.

Where Caffe fails silently or aborts (an unreadable image leaves the rest of a batch stale, a
window outside its image or a bad token crashes or misreads) minicaffe raises a DataError
naming the window file line. The random draws come from the layer's own generator (seeded from
minicaffe's, so a solver's random_seed repeats runs) and are saved in snapshots.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import warnings

import numpy as np

from minicaffe.data.base import BaseDataLayer, slot_array
from minicaffe.data.image_data import read_source_file
from minicaffe.data.image_io import read_image, resize_linear, shown_path
from minicaffe.data.transformer import DataTransformer
from minicaffe.errors import DataError
from minicaffe.registry import register_layer

log = logging.getLogger("minicaffe")

_TOKEN = re.compile(rb"\S+")
_INT = re.compile(rb"[+-]?[0-9]+")
_FLOAT = re.compile(rb"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_INT32 = (-(2**31), 2**31 - 1)
# one window line: class, overlap, x1, y1, x2, y2
_WINDOW = np.dtype(
    [("label", np.int64), ("overlap", np.float64)]
    + [(k, np.int64) for k in ("x1", "y1", "x2", "y2")]
)
_WINDOW_FIELDS = ("class", "overlap", "x1", "y1", "x2", "y2")


class WindowFile:
    """A parsed window file: ``images`` [(path as written, line)], and one row per window of
    ``windows`` (image index, class, x1, y1, x2, y2; int64), ``overlap`` (float32) and
    ``lines`` (the window's line number)."""

    def __init__(self, path: str, where: str = ""):
        self.path = path
        self.shown = shown_path(path)
        self._prefix = f"{where}: " if where else ""
        raw = read_source_file(path, "window file", where)
        self._raw = raw
        self._newlines = np.flatnonzero(np.frombuffer(raw, dtype=np.uint8) == 10)
        self.images: list[tuple[str, int]] = []
        self.channels: list[tuple[int, int]] = []
        self._parse()
        del self._raw, self._newlines

    # ------------------------------------------------------------------ tokens
    def line_of(self, pos: int) -> int:
        return int(np.searchsorted(self._newlines, pos)) + 1

    def _fail(self, pos: int, message: str) -> DataError:
        return DataError(
            f"{self._prefix}window file '{self.shown}' line {self.line_of(pos)}: {message}"
        )

    def _token(self, what: str, pattern=None) -> bytes:
        m = _TOKEN.search(self._raw, self._pos)
        if m is None:
            raise self._fail(max(len(self._raw) - 1, 0), f"the file ends where {what} was expected")
        if pattern is not None and not pattern.fullmatch(m.group()):
            raise self._fail(m.start(), f"expected {what}; received '{shown_path(m.group()[:60])}'")
        self._pos, self._start = m.end(), m.start()
        return m.group()

    def _int(self, what: str, low: int = _INT32[0]) -> int:
        value = int(self._token(what, _INT))
        if not low <= value <= _INT32[1]:
            raise self._fail(
                self._start, f"{what} must be in [{low}, {_INT32[1]}]; received {value}"
            )
        return value

    # ------------------------------------------------------------------ records
    def _parse(self) -> None:
        self._pos = 0
        blocks, indices = [], []
        while _TOKEN.search(self._raw, self._pos) is not None:
            self._token("'#' starting an image record", re.compile(rb"#"))
            index = self._int("the image index after '#'")
            indices.append((index, self.line_of(self._start)))
            name = self._token("an image path")
            self.images.append((os.fsdecode(name), self.line_of(self._start)))
            self.channels.append((self._int("the image's channels", 0), self.line_of(self._start)))
            self._int("the image's height", 0)
            self._int("the image's width", 0)
            count = self._int("the number of windows", 0)
            rows, first = self._windows_fast(count)
            if rows is None:
                rows, lines = self._windows_slow(count)
            else:
                lines = np.arange(first, first + count, dtype=np.int64)
            blocks.append((index, rows, lines))
        if not self.images:
            raise DataError(
                f"{self._prefix}window file '{self.shown}' is empty (it names no "
                "image records '# <index>' ...)"
            )
        n = len(self.images)
        for index, line in indices:
            if not 0 <= index < n:
                raise DataError(
                    f"{self._prefix}window file '{self.shown}' line {line}: image index {index} "
                    f"is outside 0..{n - 1} (the file holds {n} image records; Caffe finds a "
                    "record's image by this index)"
                )
        if any(index != k for k, (index, _) in enumerate(indices)):
            log.warning(
                "%s'%s': image indices are not 0, 1, 2, ... in file order; as in Caffe, "
                "each record's windows are cut from the image its index names",
                self._prefix,
                self.shown,
            )
        rows = np.concatenate([b[1] for b in blocks]) if blocks else np.empty(0, _WINDOW)
        self.lines = np.concatenate([b[2] for b in blocks])
        image = np.concatenate([np.full(len(b[1]), b[0], np.int64) for b in blocks])
        self.windows = np.stack(
            [image, rows["label"], rows["x1"], rows["y1"], rows["x2"], rows["y2"]], axis=1
        )
        self.overlap = rows["overlap"].astype(np.float32)  # Caffe reads overlaps as float

    def _windows_fast(self, count: int):
        """The ``count`` windows as whole lines (the usual layout) parsed at once, or None when
        the lines do not hold exactly 6 valid tokens each (the token-by-token parse decides)."""
        nl, raw = self._newlines, self._raw
        k = int(np.searchsorted(nl, self._pos))
        if count == 0:
            return np.empty(0, _WINDOW), 0
        if k >= len(nl) or raw[self._pos : nl[k]].strip():
            return None, 0
        start = int(nl[k]) + 1
        end = int(nl[k + count]) + 1 if k + count < len(nl) else len(raw)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rows = np.loadtxt(io.BytesIO(raw[start:end]), dtype=_WINDOW, comments=None, ndmin=1)
        except ValueError:
            return None, 0
        if len(rows) != count:
            return None, 0
        for field in ("label", "x1", "y1", "x2", "y2"):
            col = rows[field]
            if col.size and (col.min() < _INT32[0] or col.max() > _INT32[1]):
                return None, 0
        self._pos = end
        return rows, k + 2

    def _windows_slow(self, count: int):
        rows = np.empty(count, _WINDOW)
        lines = np.empty(count, np.int64)
        for i in range(count):
            m = _TOKEN.search(self._raw, self._pos)
            lines[i] = self.line_of(m.start() if m else len(self._raw))
            values = []
            for field in _WINDOW_FIELDS:
                what = f"a window's {field} (window {i + 1} of {count})"
                if field == "overlap":
                    values.append(float(self._token(what + ", a number", _FLOAT)))
                else:
                    values.append(self._int(what + ", an integer"))
            rows[i] = tuple(values)
        return rows, lines


@register_layer("WindowData")
class WindowDataLayer(BaseDataLayer):
    """Foreground and background windows of the images in an R-CNN window file, warped.

    Params (window_data_param): source (the window file), root_folder = "" (prefixed to every
    image path), batch_size, fg_threshold = 0.5, bg_threshold = 0.5, fg_fraction = 0.25,
    context_pad = 0, crop_mode = "warp" ("warp" or "square"), scale = 1, cache_images = false
    (decode every image once at setup and keep it in memory). transform_param: crop_size (> 0,
    required), mirror, mean_file or mean_value. Tops: data (batch_size, 3, crop_size,
    crop_size), label (batch_size,). See the module docstring for the sampling and the warp.
    """

    exact_num_top_blobs = 2

    def data_setup(self, top) -> None:
        p = self.layer_param.window_data_param
        tp = self.layer_param.transform_param
        old = [f for f in ("mean_file", "crop_size", "mirror") if p.HasField(f)]
        if old:
            raise self.error(
                f"window_data_param.{', '.join(old)}: Caffe's WindowData reads these from "
                "transform_param { ... }; move them there",
                DataError,
            )
        if not p.source:
            raise self.error("window_data_param.source (the window file) is required", DataError)
        if p.crop_mode not in ("warp", "square"):
            raise self.error(
                f"window_data_param.crop_mode must be 'warp' or 'square'; received '{p.crop_mode}'",
                DataError,
            )
        self.crop = int(tp.crop_size)
        if self.crop <= 0:
            raise self.error(
                "transform_param.crop_size must be > 0: every window is warped to "
                "crop_size x crop_size",
                DataError,
            )
        self.context_pad = int(p.context_pad)
        if 2 * self.context_pad >= self.crop:
            raise self.error(
                f"context_pad {self.context_pad} leaves no room for the window in a "
                f"crop_size {self.crop} crop (2 * context_pad must be < crop_size)",
                DataError,
            )
        if not 0 <= p.fg_fraction <= 1:
            raise self.error(f"fg_fraction must be in [0, 1]; received {p.fg_fraction}", DataError)
        self.square = p.crop_mode == "square"
        self.scale = float(p.scale)
        self.mirror = bool(tp.mirror)
        ignored = []
        if tp.HasField("scale") and tp.scale != p.scale:
            ignored.append(
                f"scale {tp.scale:g} (WindowData scales by window_data_param.scale, "
                f"here {p.scale:g})"
            )
        if tp.force_gray:
            ignored.append("force_gray (images are always read in colour)")
        if ignored:
            log.warning(
                "%s: Caffe's WindowData does not apply transform_param %s; neither does minicaffe",
                self.where(),
                " or ".join(ignored),
            )
        self.batch_size = int(p.batch_size)
        self.num_fg = int(np.float32(self.batch_size) * np.float32(p.fg_fraction))
        self.num_bg = self.batch_size - self.num_fg

        self._source = p.source
        parsed = WindowFile(p.source, self.where())
        last_channels, channels_line = parsed.channels[-1]
        if last_channels != 3:
            raise self.error(
                f"window file '{p.source}' line {channels_line}: the last image "
                f"record gives {last_channels} channels, which Caffe uses for the data top; "
                "WindowData reads every image in colour, so it must be 3",
                DataError,
            )
        self._images = [(p.root_folder + name, line) for name, line in parsed.images]
        self._split(parsed, float(p.fg_threshold), float(p.bg_threshold))
        self.num_records = len(self._fg) + len(self._bg)  # the walk only counts windows drawn
        self._mean_setup(tp)
        self._cache = None
        if p.cache_images:
            self._cache = [self._read(i, line) for i, (_, line) in enumerate(self._images)]
        top[0].reshape((max(self.batch_size, 1), 3, self.crop, self.crop))
        top[1].reshape((max(self.batch_size, 1),))

    def _split(self, parsed: WindowFile, fg_threshold: float, bg_threshold: float) -> None:
        overlap = parsed.overlap
        fg = overlap >= np.float32(fg_threshold)
        bg = ~fg & (overlap < np.float32(bg_threshold))
        labels = parsed.windows[:, 1]
        bad = np.flatnonzero(fg & (labels <= 0))
        if bad.size:
            i = bad[0]
            raise self.error(
                f"window file '{self._source}' line {parsed.lines[i]}: a foreground window "
                f"(overlap {overlap[i]:g} >= fg_threshold {fg_threshold:g}) needs a class > 0; "
                f"received {labels[i]}",
                DataError,
            )
        kept = fg | bg
        flipped = np.flatnonzero(
            kept
            & (
                (parsed.windows[:, 4] < parsed.windows[:, 2])
                | (parsed.windows[:, 5] < parsed.windows[:, 3])
            )
        )
        if flipped.size:
            i = flipped[0]
            raise self.error(
                f"window file '{self._source}' line {parsed.lines[i]}: window (x1, y1, x2, y2) "
                f"= {tuple(int(v) for v in parsed.windows[i, 2:])} is empty (needs x1 <= x2 "
                "and y1 <= y2)",
                DataError,
            )
        self._fg, self._fg_lines = parsed.windows[fg], parsed.lines[fg]
        self._bg, self._bg_lines = parsed.windows[bg].copy(), parsed.lines[bg]
        self._bg[:, 1] = 0
        classes, counts = np.unique(self._fg[:, 1], return_counts=True)
        log.info(
            "%s: %d images, %d foreground windows (overlap >= %g), %d background (< %g), "
            "%d dropped",
            self.where(),
            len(self._images),
            len(self._fg),
            fg_threshold,
            len(self._bg),
            bg_threshold,
            len(overlap) - int(kept.sum()),
        )
        for cls, n in [(0, len(self._bg)), *zip(classes.tolist(), counts.tolist())]:
            log.info("%s: class %d has %d samples", self.where(), cls, n)
        for need, have, what in (
            (self.num_fg, self._fg, "foreground"),
            (self.num_bg, self._bg, "background"),
        ):
            if need > 0 and not len(have):
                raise self.error(
                    f"window file '{self._source}' has no {what} windows (fg_threshold "
                    f"{fg_threshold:g}, bg_threshold {bg_threshold:g}) but each batch takes "
                    f"{need} (batch_size {self.batch_size}, fg_fraction "
                    f"{self.layer_param.window_data_param.fg_fraction:g})",
                    DataError,
                )

    def _mean_setup(self, tp) -> None:
        mean = DataTransformer(tp, self.phase, where=self.where(), dtype=self.dtype)
        self._mean_image = mean.mean_image
        self._mean_values = None
        if len(mean.mean_values):
            if len(mean.mean_values) not in (1, 3):
                raise self.error(
                    f"transform_param.mean_value needs 1 value or one per channel (3); "
                    f"received {len(mean.mean_values)}",
                    DataError,
                )
            self._mean_values = np.broadcast_to(mean.mean_values, 3)[:, None, None].copy()
        if self._mean_image is not None:
            c, h, w = self._mean_image.shape
            off = (w - self.crop) // 2
            if c != 3 or w < self.crop or h < off + self.crop:
                raise self.error(
                    f"mean_file '{tp.mean_file}' is {c}x{h}x{w} (CxHxW); WindowData needs 3 "
                    f"channels, width >= crop_size {self.crop} and height >= (width - "
                    f"crop_size) / 2 + crop_size (Caffe reads it at that offset both ways)",
                    DataError,
                )
            self._mean_off = off

    def _read(self, index: int, line: int) -> np.ndarray:
        return read_image(
            self._images[index][0],
            color=True,
            where=f"{self.where()}: '{self._source}' line {line}",
        )

    # ------------------------------------------------------------------ batches
    def load_batch(self, records, rng, slot):
        n, crop = self.batch_size, self.crop
        data = slot_array(slot, "data", (n, 3, crop, crop), self.dtype)
        data.fill(0)
        label = slot_array(slot, "label", (n,), self.dtype)
        decoded: dict[int, np.ndarray] = {}  # images read for this batch
        for item in range(n):
            fg = item >= self.num_bg
            windows, lines = (self._fg, self._fg_lines) if fg else (self._bg, self._bg_lines)
            k = int(rng.integers(len(windows)))
            flip = bool(rng.integers(2)) if self.mirror else False
            image, cls, x1, y1, x2, y2 = (int(v) for v in windows[k])
            line = int(lines[k])
            if self._cache is not None:
                img = self._cache[image]
            else:
                img = decoded.get(image)
                if img is None:
                    img = decoded[image] = self._read(image, line)
            warped, ph, pw = self._warp(img, (x1, y1, x2, y2), flip, image, line)
            if flip:
                warped = warped[:, :, ::-1]
            h, w = warped.shape[1:]
            out = data[item, :, ph : ph + h, pw : pw + w]
            if self._mean_image is not None:
                r, c = self._mean_off + ph, self._mean_off + pw
                np.subtract(warped, self._mean_image[:, r : r + h, c : c + w], out=out)
            elif self._mean_values is not None:
                np.subtract(warped, self._mean_values, out=out)
            else:
                out[...] = warped
            if self.scale != 1:
                out *= self.dtype.type(self.scale)
            label[item] = cls
        return [data, label]

    def _warp(self, img, box, flip: bool, image: int, line: int):
        """(the window warped to its place, uint8 C x h x w; top and left padding)."""
        x1, y1, x2, y2 = box
        height, width = img.shape[1:]
        crop, pad_h, pad_w = self.crop, 0, 0
        size_h = size_w = crop
        if self.context_pad > 0 or self.square:
            t = self.dtype.type  # Caffe does this geometry in the net's float type
            grow = t(crop) / t(crop - 2 * self.context_pad)
            half_h, half_w = t(y2 - y1 + 1) / t(2), t(x2 - x1 + 1) / t(2)
            cx, cy = t(x1) + half_w, t(y1) + half_h
            if self.square:
                half_h = half_w = max(half_h, half_w)
            x1, x2 = _round(cx - half_w * grow), _round(cx + half_w * grow)
            y1, y2 = _round(cy - half_h * grow), _round(cy + half_h * grow)
            full_h, full_w = y2 - y1 + 1, x2 - x1 + 1
            cut_l, cut_t = max(0, -x1), max(0, -y1)
            cut_r, cut_b = max(0, x2 - width + 1), max(0, y2 - height + 1)
            x1, x2, y1, y2 = x1 + cut_l, x2 - cut_r, y1 + cut_t, y2 - cut_b
            if x1 > x2 or y1 > y2:
                raise self._outside(box, img, image, line)
            sx, sy = t(crop) / t(full_w), t(crop) / t(full_h)
            size_w, size_h = _round(t(x2 - x1 + 1) * sx), _round(t(y2 - y1 + 1) * sy)
            pad_h = _round(t(cut_t) * sy)
            pad_w = _round(t(cut_r if flip else cut_l) * sx)
            size_h, size_w = min(size_h, crop - pad_h), min(size_w, crop - pad_w)
            if size_h <= 0 or size_w <= 0:
                raise self.error(
                    f"window file '{self._source}' line {line}: window {box} leaves a "
                    f"{size_w}x{size_h} region to warp into the {crop}x{crop} crop",
                    DataError,
                )
        elif x1 < 0 or y1 < 0 or x2 >= width or y2 >= height:
            raise self._outside(box, img, image, line)
        region = img[:, y1 : y2 + 1, x1 : x2 + 1]
        return resize_linear(region, size_h, size_w), pad_h, pad_w

    def _outside(self, box, img, image: int, line: int) -> DataError:
        grown = " (grown by context_pad / square mode)" if self.context_pad or self.square else ""
        return self.error(
            f"window file '{self._source}' line {line}: window (x1, y1, x2, y2) = {box}"
            f"{grown} lies outside image '{self._images[image][0]}' ({img.shape[2]}x"
            f"{img.shape[1]}, WxH; corners are 0-based and inclusive)",
            DataError,
        )


def _round(value) -> int:
    """C's round(): halves away from zero."""
    v = float(value)
    return int(math.floor(v + 0.5)) if v >= 0 else -int(math.floor(0.5 - v))
