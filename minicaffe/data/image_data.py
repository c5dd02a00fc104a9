"""ImageData: batches of image files named in a list file, with their labels."""

from __future__ import annotations

import logging
import os
import re

import numpy as np

from minicaffe.data.base import BaseDataLayer, slot_array
from minicaffe.data.image_io import read_image, shown_path
from minicaffe.data.transformer import DataTransformer
from minicaffe.errors import DataError
from minicaffe.registry import register_layer

log = logging.getLogger("minicaffe")

_LABEL = re.compile(rb"[+-]?[0-9]+")
_INT32 = (-(2**31), 2**31 - 1)


def read_source_file(path: str, what: str, where: str | None = None) -> bytes:
    """The bytes of a data layer's source file (``what``: "list file", "window file"), or a
    DataError naming it (``where`` in front, e.g. the layer)."""
    prefix = f"{where}: " if where else ""
    shown = shown_path(path)
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise DataError(
            f"{prefix}{what} '{shown}' not found (relative paths are resolved against the "
            f"current directory, {os.getcwd()})"
        ) from None
    except OSError as exc:
        raise DataError(f"{prefix}cannot read {what} '{shown}': {exc.strerror or exc}") from None


def parse_image_list(path: str, where: str | None = None) -> list[tuple[str, int, int]]:
    """(file name, label, line number) for each non-blank line ``<file name> <label>`` of the
    list file ``path``, split at the line's LAST space (names may hold spaces), as Caffe's
    ImageData layer and convert_imageset read it (``where`` prefixes errors, e.g. the layer).

    The file is read as bytes, as Caffe does: names need not be UTF-8. Each name is decoded as
    the filesystem encoding does (``os.fsdecode``), so it opens the same file and
    ``os.fsencode(name)`` gives back the bytes written in the list. Labels must be integers
    that fit a 32-bit label (Datum.label); anything else is a DataError naming the file and line.
    """
    prefix = f"{where}: " if where else ""
    shown = shown_path(path)
    raw = read_source_file(path, "list file", where)
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark is no part of a name
        raw = raw[3:]
    entries = []
    for no, line in enumerate(raw.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        name, sep, label = line.rpartition(b" ")
        name = name.strip()
        if not sep or not name or not _LABEL.fullmatch(label):
            raise DataError(
                f"{prefix}'{shown}' line {no}: expected '<image path> <integer label>'; "
                f"received '{shown_path(line)}'"
            )
        value = int(label)
        if not _INT32[0] <= value <= _INT32[1]:
            raise DataError(
                f"{prefix}'{shown}' line {no}: label {value} does not fit Datum.label (a 32-bit "
                f"signed integer, {_INT32[0]} to {_INT32[1]})"
            )
        entries.append((os.fsdecode(name), value, no))
    return entries


@register_layer("ImageData")
class ImageDataLayer(BaseDataLayer):
    """Images listed in a text file ("path label" per line), decoded as BGR and transformed.

    Params (image_data_param): source (the list file; lines split at the last space),
    root_folder = "" (prefixed to every path), batch_size = 1, shuffle = false (reshuffled every
    epoch), rand_skip = 0 (start at a random line in [0, rand_skip)), new_height = new_width = 0
    (resize when both > 0), is_color = true (3 channels BGR, else 1 grey channel; transform_param
    force_color / force_gray are ignored with a warning, as Caffe ignores them here).
    transform_param as in :class:`DataTransformer`.
    Tops: data (batch_size, C, H', W'), optional label (batch_size,). Without crop_size all
    images of a batch must have the same size (use new_height/new_width for mixed sizes); with
    crop_size each image is cropped at its own size, as in Caffe (each must be at least
    crop_size high and wide).
    """

    max_top_blobs = 2

    def data_setup(self, top) -> None:
        p = self.layer_param.image_data_param
        if p.new_height * p.new_width == 0 and p.new_height + p.new_width > 0:
            raise self.error(
                "new_height and new_width must be given together; received "
                f"new_height={p.new_height}, new_width={p.new_width}",
                DataError,
            )
        deprecated = [f for f in ("scale", "mean_file", "crop_size", "mirror") if p.HasField(f)]
        if deprecated:
            raise self.error(
                f"image_data_param.{', '.join(deprecated)} are deprecated: move "
                "them into transform_param { ... }",
                DataError,
            )
        self.transformer = DataTransformer(
            self.layer_param.transform_param, self.phase, where=self.where(), dtype=self.dtype
        )
        if self.transformer.color is not None:
            # Caffe's ImageData reads with is_color only; force_* apply to encoded Datums
            log.warning(
                "%s: transform_param force_color / force_gray apply to encoded Datums only; "
                "ImageData ignores them, as in Caffe (set image_data_param is_color instead)",
                self.where(),
            )
        self._color = bool(p.is_color)
        self._size = (int(p.new_height), int(p.new_width))
        self.batch_size = int(p.batch_size)
        self.shuffle = bool(p.shuffle)
        self.rand_skip = int(p.rand_skip)
        self._source = p.source
        if not p.source:
            raise self.error("image_data_param.source (the list file) is required", DataError)
        self._entries = parse_image_list(p.source, self.where())
        if not self._entries:
            raise self.error(f"list file '{p.source}' names no images", DataError)
        self._root = p.root_folder
        self._labels = np.asarray([e[1] for e in self._entries], dtype=self.dtype)
        self.num_records = len(self._entries)
        first = self._read(0)
        shape = self.transformer.output_shape(*first.shape)
        top[0].reshape((max(self.batch_size, 1), *shape))
        if len(top) > 1:
            top[1].reshape((max(self.batch_size, 1),))

    def _read(self, index: int) -> np.ndarray:
        name, _, line = self._entries[index]
        return read_image(
            self._root + name,
            height=self._size[0],
            width=self._size[1],
            color=self._color,
            where=f"{self.where()}: '{self._source}' line {line}",
        )

    def load_batch(self, records, rng, slot):
        images = [self._read(int(r)) for r in records]  # file I/O: one call per image
        shape = images[0].shape

        def name(i):
            file, _, line = self._entries[int(records[i])]
            return f"image '{self._root + file}' ('{self._source}' line {line})"

        try:
            mixed = self.transformer.check_sizes(images, name, "new_height and new_width")
        except DataError as exc:
            raise self.error(str(exc), DataError) from None
        data = slot_array(
            slot, "data", (len(images), *self.transformer.output_shape(*shape)), self.dtype
        )
        if mixed:
            self.transformer.transform_each(images, rng, out=data)
        else:
            raw = slot_array(slot, "raw", (len(images), *shape), np.uint8)
            np.stack(images, out=raw)
            self.transformer(raw, rng, out=data)
        label = slot_array(slot, "label", (len(records),), self.dtype)
        np.take(self._labels, records, out=label)
        return [data, label]
