"""HDF5Output: writes its two bottoms to the datasets ``data`` and ``label`` of an HDF5 file."""

from __future__ import annotations

import os

import numpy as np

from minicaffe.errors import DataError, ShapeError
from minicaffe.layer import Layer
from minicaffe.registry import register_layer


def _legacy_4d(a: np.ndarray) -> np.ndarray:
    """``a`` reshaped to Caffe's legacy (num, channels, height, width) when it has <= 4 axes."""
    return a.reshape(a.shape + (1,) * (4 - a.ndim)) if a.ndim < 4 else a


@register_layer("HDF5Output")
class HDF5OutputLayer(Layer):
    """Saves bottom 0 as dataset ``data`` and bottom 1 as dataset ``label`` of ``file_name``.

    Params (hdf5_output_param): file_name (required; created, or truncated, at setup).
    Bottoms: data (N, ...) and label (N, ...). No tops. Each forward appends its N rows to both
    datasets (Caffe writes the datasets once, so a second forward fails there; here the rows
    accumulate), and flushes the file so it is readable while the net runs. Runs on the host.
    Rows are stored with Caffe's legacy 4-D shape, as Caffe writes them: a bottom of shape
    (N,) is saved as (N, 1, 1, 1) and (N, C) as (N, C, 1, 1); bottoms of more than 4 axes (which
    Caffe cannot save) keep their shape.
    """

    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 0
    host_only = True

    def setup(self, bottom, top):
        import h5py

        self.file_name = self.layer_param.hdf5_output_param.file_name
        if not self.file_name:
            raise self.error("hdf5_output_param.file_name is required", DataError)
        try:
            self._file = h5py.File(self.file_name, "w")
        except OSError as exc:
            raise self.error(
                f"cannot create HDF5 file '{self.file_name}' (in {os.getcwd()}): {exc}", DataError
            ) from None
        self._datasets = None

    def reshape(self, bottom, top):
        if bottom[0].shape[:1] != bottom[1].shape[:1]:
            raise self.error(
                "data and label must have the same number of rows; received "
                f"{bottom[0].shape} and {bottom[1].shape}",
                ShapeError,
            )

    def forward(self, bottom, top):
        arrays = [_legacy_4d(np.asarray(b.data, dtype=np.float32)) for b in bottom]
        if self._datasets is None:
            self._datasets = [
                self._file.create_dataset(
                    name,
                    shape=(0, *a.shape[1:]),
                    maxshape=(None, *a.shape[1:]),
                    dtype=np.float32,
                    chunks=True,
                )
                for name, a in zip(("data", "label"), arrays)
            ]
        for ds, a in zip(self._datasets, arrays):
            if ds.shape[1:] != a.shape[1:]:
                raise self.error(
                    f"rows of dataset '{ds.name.lstrip('/')}' in "
                    f"'{self.file_name}' have shape {ds.shape[1:]}; this batch has "
                    f"{a.shape[1:]}",
                    ShapeError,
                )
            start = ds.shape[0]
            ds.resize(start + a.shape[0], axis=0)
            ds[start:] = a
        self._file.flush()

    def backward(self, top, propagate_down, bottom):
        pass

    def close(self) -> None:
        """Close the file (also done when the layer is collected)."""
        f = getattr(self, "_file", None)
        if f is not None and f.id.valid:
            f.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: h5py may be gone already
            pass
