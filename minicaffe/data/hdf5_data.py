"""HDF5Data: batches of rows from the datasets of a list of HDF5 files."""

from __future__ import annotations

import os

import numpy as np

from minicaffe.data.base import BaseDataLayer, slot_array
from minicaffe.errors import DataError
from minicaffe.registry import register_layer


def read_source_list(layer, source: str, what: str) -> list[tuple[int, str]]:
    """(line number, entry) for each non-blank line of the list file ``source``."""
    if not source:
        raise layer.error(
            f"{what}.source is required (a text file listing the data files)", DataError
        )
    try:
        with open(source, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        raise layer.error(
            f"{what}.source '{source}' not found (relative paths are resolved "
            f"against the current directory, {os.getcwd()})",
            DataError,
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise layer.error(f"cannot read {what}.source '{source}': {exc}", DataError) from None
    return [(i + 1, ln.strip()) for i, ln in enumerate(lines) if ln.strip()]


def resolve_listed_path(entry: str, list_file: str) -> str | None:
    """A listed path as Caffe resolves it (against the current directory), falling back to the
    list file's own folder; None when neither exists."""
    if os.path.isabs(entry) or os.path.exists(entry):
        return entry if os.path.exists(entry) else None
    beside = os.path.join(os.path.dirname(os.path.abspath(list_file)), entry)
    return beside if os.path.exists(beside) else None


@register_layer("HDF5Data")
class HDF5DataLayer(BaseDataLayer):
    """Rows of HDF5 datasets: top ``k`` is the dataset named like the top, ``batch_size`` rows.

    Params (hdf5_data_param): source (text file, one .h5 path per line; relative paths are
    resolved against the current directory as in Caffe, then against the list file's folder),
    batch_size (> 0), shuffle = false (shuffles the file order and the rows within each file,
    afresh each epoch). Every listed file must hold every top's dataset with the same number of
    rows N_f (>= 1) and the same trailing shape S. Tops: (batch_size, *S) each, in the net's
    dtype. Rows are walked file after file and wrap to the first file in the middle of a batch
    when the last one ends (Caffe's behaviour). Files are read whole, one at a time, as Caffe does,
    and batches are gathered from memory when the net asks (no prefetch thread: handing batches
    over between threads costs more than the gather; set ``prefetch_count`` to change that).
    """

    prefetch_count = 0

    def data_setup(self, top) -> None:
        import h5py

        p = self.layer_param.hdf5_data_param
        self.batch_size = int(p.batch_size)
        if self.batch_size <= 0:
            raise self.error(
                f"hdf5_data_param.batch_size must be positive; received {p.batch_size}", DataError
            )
        self.shuffle = bool(p.shuffle)
        names = [self._top_name(i) for i in range(len(top))]
        entries = read_source_list(self, p.source, "hdf5_data_param")
        if not entries:
            raise self.error(f"hdf5_data_param.source '{p.source}' lists no files", DataError)
        self._files: list[str] = []
        sizes: list[int] = []
        trailing: list[tuple[int, ...]] | None = None
        for line_no, entry in entries:
            path = resolve_listed_path(entry, p.source)
            where = f"'{p.source}' line {line_no}"
            if path is None:
                raise self.error(
                    f"HDF5 file '{entry}' listed at {where} not found (looked in "
                    f"{os.getcwd()} and beside the list file)",
                    DataError,
                )
            try:
                with h5py.File(path, "r") as f:
                    shapes = []
                    for name in names:
                        if name not in f or not isinstance(f[name], h5py.Dataset):
                            have = ", ".join(sorted(f.keys())) or "none"
                            raise self.error(
                                f"HDF5 file '{path}' ({where}) has no dataset "
                                f"'{name}' (one per top); it has: {have}",
                                DataError,
                            )
                        shapes.append(tuple(f[name].shape))
            except OSError as exc:
                raise self.error(
                    f"cannot read HDF5 file '{path}' ({where}): {exc}", DataError
                ) from None
            for name, shape in zip(names, shapes):
                if len(shape) < 1 or shape[0] < 1:
                    raise self.error(
                        f"dataset '{name}' in '{path}' must have at least one row; shape {shape}",
                        DataError,
                    )
                if shape[0] != shapes[0][0]:
                    raise self.error(
                        f"datasets in '{path}' must have the same number of rows; "
                        f"'{names[0]}' has {shapes[0][0]}, '{name}' has "
                        f"{shape[0]}",
                        DataError,
                    )
            rest = [s[1:] for s in shapes]
            if trailing is None:
                trailing = rest
            elif rest != trailing:
                raise self.error(
                    f"row shapes in '{path}' {rest} differ from those of the "
                    f"first file {trailing} (datasets {names})",
                    DataError,
                )
            self._files.append(path)
            sizes.append(shapes[0][0])
        self._names = names
        self._sizes = np.asarray(sizes, dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self._sizes)])
        self.num_records = int(self._offsets[-1])
        self._row_shapes = trailing
        self._cache: dict[int, list[np.ndarray]] = {}
        for blob, shape in zip(top, trailing):
            blob.reshape((self.batch_size, *shape))

    def _top_name(self, i: int) -> str:
        tops = self.layer_param.top
        if i >= len(tops):
            raise self.error("every top must be named after its dataset", DataError)
        return tops[i]

    def new_order(self, rng: np.random.Generator) -> np.ndarray:
        parts = [
            self._offsets[f] + rng.permutation(int(self._sizes[f]))
            for f in rng.permutation(len(self._files))
        ]
        return np.concatenate(parts).astype(np.int64)

    def _load_file(self, index: int) -> list[np.ndarray]:
        arrays = self._cache.get(index)
        if arrays is not None:
            return arrays
        import h5py

        path = self._files[index]
        try:
            with h5py.File(path, "r") as f:
                arrays = [np.asarray(f[name][...], dtype=self.dtype) for name in self._names]
        except (OSError, KeyError) as exc:
            raise self.error(f"cannot read HDF5 file '{path}': {exc}", DataError) from None
        if len(self._cache) >= 2:  # like Caffe, keep few files in memory
            self._cache.pop(next(iter(self._cache)))
        self._cache[index] = arrays
        return arrays

    def load_batch(self, records, rng, slot):
        outs = [
            slot_array(slot, name, (len(records), *shape), self.dtype)
            for name, shape in zip(self._names, self._row_shapes)
        ]
        file_of = np.searchsorted(self._offsets, records, side="right") - 1
        rows = records - self._offsets[file_of]
        if len(self._files) == 1:
            for out, arr in zip(outs, self._load_file(0)):
                np.take(arr, rows, axis=0, out=out)
            return outs
        # Files are walked one after another, so a batch is a few runs of rows of one file.
        bounds = [0, *(np.flatnonzero(np.diff(file_of)) + 1).tolist(), len(records)]
        for start, stop in zip(bounds[:-1], bounds[1:]):
            for out, arr in zip(outs, self._load_file(int(file_of[start]))):
                np.take(arr, rows[start:stop], axis=0, out=out[start:stop])
        return outs
