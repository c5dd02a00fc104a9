"""Fillers: initial values of parameter blobs from a FillerParameter, by Caffe's rules.

An unspecified filler is ``constant`` with value 0 (so an unconfigured weight is all zeros, as in
Caffe). Random draws come from the process-wide generator (``minicaffe.set_random_seed``), are
made on the host and copied to the blob's device.

For a blob of shape (s0, s1, ...) with count n: fan_in = n / s0, fan_out = n / s1.

* constant: value.                       * uniform: U(min, max).
* gaussian: N(mean, std); with ``sparse`` >= 0 each value is kept with probability sparse / s0.
* positive_unitball: U(0, 1), then each of the s0 slices is scaled to sum to 1.
* xavier: U(-sqrt(3/k), sqrt(3/k));       * msra: N(0, sqrt(2/k))
  where k = fan_in (FAN_IN), fan_out (FAN_OUT) or their mean (AVERAGE).
* bilinear: for (.., K, K) kernels, the weights of bilinear upsampling, f = ceil(K/2),
  c = (2f - 1 - f mod 2) / (2f), w(x, y) = (1 - |x/f - c|) (1 - |y/f - c|).
"""

from __future__ import annotations

import math

import numpy as np

from minicaffe.backend import rng
from minicaffe.errors import LayerError

FILLER_TYPES = (
    "constant",
    "uniform",
    "gaussian",
    "positive_unitball",
    "xavier",
    "msra",
    "bilinear",
)


def _fan(shape, variance_norm: int) -> float:
    count = math.prod(shape)
    fan_in = count / shape[0] if shape and shape[0] else count
    fan_out = count / shape[1] if len(shape) > 1 and shape[1] else count
    if variance_norm == 1:  # FAN_OUT
        return fan_out
    if variance_norm == 2:  # AVERAGE
        return (fan_in + fan_out) / 2.0
    return fan_in


def filler_values(shape, filler=None, *, where: str = "") -> np.ndarray:
    """A float64 host array of ``shape`` drawn by ``filler`` (a FillerParameter or None)."""
    shape = tuple(int(d) for d in shape)
    kind = filler.type if filler is not None else "constant"
    g = rng()
    if kind == "constant":
        return np.full(shape, filler.value if filler is not None else 0.0)
    if kind == "uniform":
        return g.uniform(filler.min, filler.max, size=shape)
    if kind == "gaussian":
        out = g.normal(filler.mean, filler.std, size=shape)
        if filler.sparse >= 0:
            if not shape:
                raise LayerError(f"{where}: a sparse gaussian filler needs a blob with >= 1 axis")
            keep = filler.sparse / shape[0]
            out *= g.random(size=shape) < keep
        return out
    if kind == "positive_unitball":
        out = g.uniform(0.0, 1.0, size=shape)
        if shape:
            flat = out.reshape(shape[0], -1)
            flat /= flat.sum(axis=1, keepdims=True)
        return out
    if kind == "xavier":
        scale = math.sqrt(3.0 / _fan(shape, filler.variance_norm))
        return g.uniform(-scale, scale, size=shape)
    if kind == "msra":
        return g.normal(0.0, math.sqrt(2.0 / _fan(shape, filler.variance_norm)), size=shape)
    if kind == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise LayerError(
                f"{where}: the bilinear filler needs a 4-D blob with square kernels; "
                f"received shape {shape}"
            )
        k = shape[3]
        f = math.ceil(k / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        t = 1 - np.abs(np.arange(k) / f - c)
        return np.broadcast_to(np.outer(t, t), shape).copy()
    raise LayerError(f"{where}: unknown filler type {kind!r}; known: {', '.join(FILLER_TYPES)}")


def fill(blob, filler=None, *, layer=None) -> None:
    """Fill ``blob.data`` in place."""
    where = layer.where() if layer is not None else "filler"
    values = filler_values(blob.shape, filler, where=where)
    blob.data[...] = blob.xp.asarray(values.astype(blob.dtype, copy=False))
