"""Data: batches of Caffe Datum records from an LMDB database (what convert_imageset writes)."""

from __future__ import annotations

import logging
import os
import threading
import weakref

import numpy as np

from minicaffe.data.base import BaseDataLayer, slot_array
from minicaffe.data.image_io import datum_to_array
from minicaffe.data.transformer import DataTransformer
from minicaffe.errors import DataError
from minicaffe.proto import caffe_pb2
from minicaffe.registry import register_layer

log = logging.getLogger("minicaffe")

# LMDB allows one environment per file per process: layers reading the same database (a train
# and a test net, say) share it.
_ENVS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_ENVS_LOCK = threading.Lock()

LEVELDB_HELP = (
    "LevelDB databases are not supported by minicaffe; convert it to LMDB: rebuild it with "
    "'minicaffe convert-imageset ROOT LIST DB' (or Caffe's convert_imageset -backend lmdb), or "
    "copy its records with the plyvel package: for key, value in plyvel.DB(SRC): "
    "txn.put(key, value) inside lmdb.open(DST, map_size=1 << 40).begin(write=True), then set "
    "'backend: LMDB'"
)


def not_lmdb(path: str) -> str | None:
    """Why an existing ``path`` is not an LMDB (a folder with data.mdb, or a single file), or
    None when it may be one."""
    if not os.path.isdir(path) or os.path.isfile(os.path.join(path, "data.mdb")):
        return None
    if os.path.isfile(os.path.join(path, "CURRENT")):
        return f"is a LevelDB, not an LMDB (no data.mdb). {LEVELDB_HELP}"
    try:
        empty = not os.listdir(path)
    except OSError:
        empty = False
    what = "an empty folder" if empty else "a folder without data.mdb"
    return (
        f"is {what}, not an LMDB (an LMDB folder holds data.mdb and lock.mdb, as "
        "convert-imageset writes them)"
    )


def check_lmdb(path: str, prefix: str = "") -> None:
    """DataError (its message starting with ``prefix``) unless ``path`` exists and may be an
    LMDB: says what it is instead (missing, a LevelDB, an empty folder, ...)."""
    if not os.path.exists(path):
        raise DataError(
            f"{prefix}database '{path}' not found (relative paths are resolved against the "
            f"current directory, {os.getcwd()})"
        )
    problem = not_lmdb(path)
    if problem:
        raise DataError(f"{prefix}'{path}' {problem}")


def open_lmdb_readonly(path: str, prefix: str = ""):
    """A new read-only LMDB environment for ``path`` (a folder holding data.mdb, or the data
    file itself); DataError (starting with ``prefix``) saying what ``path`` is when it is not
    an LMDB or cannot be opened."""
    import lmdb

    check_lmdb(path, prefix)
    try:
        return lmdb.open(
            path,
            readonly=True,
            lock=False,
            readahead=False,
            subdir=os.path.isdir(path),
            max_readers=126,
        )
    except lmdb.Error as exc:
        raise DataError(f"{prefix}cannot open LMDB '{path}': {exc}") from None


def open_lmdb(source: str, where: str, backend: int | None = None):
    """A read-only LMDB environment for ``source`` (a directory holding data.mdb, or the file).

    ``backend``: the DataParameter backend if the prototxt set it; LEVELDB gets a DataError
    explaining how to convert, unless ``source`` is in fact an LMDB.
    """
    if not source:
        raise DataError(f"{where}: data_param.source (the database path) is required")
    check_lmdb(source, f"{where}: ")  # (also for a DB opened before: it may be gone since)
    if backend == caffe_pb2.DataParameter.LEVELDB:
        log.warning("%s: backend is LEVELDB but '%s' is an LMDB; reading it as LMDB", where, source)
    key = os.path.realpath(source)
    with _ENVS_LOCK:
        env = _ENVS.get(key)
        if env is None:
            env = _ENVS[key] = open_lmdb_readonly(source, f"{where}: ")
        return env


def lmdb_keys(env) -> list[bytes]:
    with env.begin() as txn:
        return list(txn.cursor().iternext(keys=True, values=False))


def parse_datum(raw: bytes, where: str):
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(raw)
    except Exception as exc:  # protobuf's DecodeError, whatever the implementation
        raise DataError(f"{where}: record is not a serialized Datum: {exc}") from None
    return datum


@register_layer("Data")
class DataLayer(BaseDataLayer):
    """Datum records of an LMDB, in key order, decoded as uint8 C x H x W (BGR) and transformed.

    Params (data_param): source (the LMDB directory), batch_size (> 0), backend (LMDB; LEVELDB is
    not supported: a DataError says how to convert), rand_skip = 0 (start at a random record in
    [0, rand_skip)), prefetch = 4 (batches prepared ahead), force_encoded_color = false (decode
    encoded images in colour). transform_param as in :class:`DataTransformer` (encoded images
    obey force_color / force_gray). Tops: data (batch_size, C, H', W') and optional label
    (batch_size,). Without crop_size every record of a batch must have the size of the batch's
    first one; with crop_size records may differ in height and width (each is cropped at its own
    size, as in Caffe; a mean_file still needs the records' full size). The walk wraps to the first
    record after the last (no shuffling, as in Caffe).
    """

    max_top_blobs = 2

    def data_setup(self, top) -> None:
        p = self.layer_param.data_param
        deprecated = [f for f in ("scale", "mean_file", "crop_size", "mirror") if p.HasField(f)]
        if deprecated:
            raise self.error(
                f"data_param.{', '.join(deprecated)} are deprecated: move them into "
                "transform_param { ... }",
                DataError,
            )
        self.transformer = DataTransformer(
            self.layer_param.transform_param, self.phase, where=self.where(), dtype=self.dtype
        )
        color = self.transformer.color
        self._color = True if p.force_encoded_color and color is None else color
        self.batch_size = int(p.batch_size)
        self.rand_skip = int(p.rand_skip)
        self.prefetch_count = int(p.prefetch)
        self._source = p.source
        backend = p.backend if p.HasField("backend") else None
        self._env = open_lmdb(p.source, self.where(), backend)
        self._keys = lmdb_keys(self._env)
        self.num_records = len(self._keys)
        if not self._keys:
            raise self.error(f"LMDB '{p.source}' holds no records", DataError)
        first = self._read_many(np.zeros(1, dtype=np.int64))[0]
        shape = self.transformer.output_shape(*first.shape)
        top[0].reshape((self.batch_size, *shape))
        if len(top) > 1:
            top[1].reshape((self.batch_size,))

    def _where(self, index: int) -> str:
        key = self._keys[int(index)].decode("utf-8", "replace")
        return f"{self.where()}: LMDB '{self._source}' record {int(index)} (key '{key}')"

    def _read_many(self, records, labels=None) -> list[np.ndarray]:
        arrays = []
        with self._env.begin(buffers=False) as txn:
            for i, r in enumerate(records):  # one Datum parse per record
                raw = txn.get(self._keys[int(r)])
                if raw is None:
                    raise DataError(
                        f"{self._where(r)}: the record vanished (the database "
                        "changed while being read)"
                    )
                datum = parse_datum(raw, self._where(r))
                arrays.append(datum_to_array(datum, where=self._where(r), color=self._color))
                if labels is not None:
                    labels[i] = datum.label
        return arrays

    def load_batch(self, records, rng, slot):
        label = slot_array(slot, "label", (len(records),), self.dtype)
        items = self._read_many(records, label)
        shape = items[0].shape
        mixed = self.transformer.check_sizes(
            items, lambda i: f"{self._where(records[i])}: the Datum",
            "convert-imageset --resize_height/--resize_width")
        data = slot_array(
            slot, "data", (len(items), *self.transformer.output_shape(*shape)), self.dtype
        )
        if mixed:
            self.transformer.transform_each(items, rng, out=data)
            return [data, label]
        dtype = np.uint8 if all(it.dtype == np.uint8 for it in items) else np.float32
        raw = slot_array(slot, "raw", (len(items), *shape), dtype)
        np.stack(items, out=raw, casting="unsafe")
        self.transformer(raw, rng, out=data)
        return [data, label]
