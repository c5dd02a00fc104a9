"""Helpers shared by the neuron, normalisation and scaling layers (not a layer module).

* Per-channel broadcasting (Scale, Bias, PReLU): a parameter of shape ``p`` applies to the bottom
  axes ``[axis, axis + len(p))``. Seen as three axes, the bottom is ``(outer, dim, inner)`` with
  ``outer = prod(shape[:axis])``, ``dim = prod(p)``, ``inner = prod(shape[axis + len(p):])``;
  the parameter broadcasts as ``(1, dim, 1)`` and its gradient sums axes 0 and 2.
* Scratch buffers that live on the layer and only grow, so steady-state passes allocate nothing.
* In-place support: a layer whose backward reads its input keeps a copy of it when top is bottom
  (forward would otherwise overwrite it), as Caffe does for PReLU.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from minicaffe.errors import ShapeError


class Broadcast(NamedTuple):
    """A bottom seen as (outer, dim, inner) around a parameter of ``dim`` values at ``axis``."""

    axis: int
    outer: int
    dim: int
    inner: int

    def view(self, arr):
        """``arr`` (a bottom-shaped array) as (outer, dim, inner)."""
        return arr.reshape(self.outer, self.dim, self.inner)

    def param(self, arr):
        """A parameter array as (1, dim, 1), ready to broadcast against :meth:`view`."""
        return arr.reshape(1, self.dim, 1)

    def reduce(self, xp, arr3):
        """Sum an (outer, dim, inner) array over outer and inner: shape (dim,)."""
        if self.inner == 1:  # einsum is slow for this layout
            return arr3.reshape(self.outer, self.dim).sum(axis=0)
        return xp.einsum("odi->d", arr3)

    def reduce_product(self, xp, a3, b3):
        """Sum of a3 * b3 over outer and inner (shape (dim,)), without a temporary product."""
        return xp.einsum("odi,odi->d", a3, b3)


def param_shape(layer, shape: tuple[int, ...], axis: int, num_axes: int) -> tuple[int, ...]:
    """Shape of a learned parameter covering ``num_axes`` bottom axes from ``axis`` (-1: to end).

    ``num_axes == 0`` gives a scalar (shape ``()``).
    """
    if num_axes < -1:
        raise layer.error(
            f"num_axes must be >= -1 (-1 = to the last axis); received {num_axes}", ShapeError
        )
    start = layer.canonical_axis(axis, len(shape))
    end = len(shape) if num_axes == -1 else start + num_axes
    if end > len(shape):
        raise layer.error(
            f"axis {axis} with num_axes {num_axes} needs at least {end} bottom axes; "
            f"received shape {shape}",
            ShapeError,
        )
    return tuple(shape[start:end])


def broadcast_over(
    layer, shape: tuple[int, ...], pshape: tuple[int, ...], axis: int, what: str = "parameter"
) -> Broadcast:
    """Check that ``pshape`` equals ``shape[axis:axis+len(pshape)]`` and give the 3-axis view.

    A scalar parameter (``pshape == ()``) applies at axis 0 whatever ``axis`` says (as Caffe).
    """
    start = 0 if len(pshape) == 0 else layer.canonical_axis(axis, len(shape))
    end = start + len(pshape)
    if end > len(shape) or tuple(shape[start:end]) != tuple(pshape):
        raise layer.error(
            f"the {what} of shape {tuple(pshape)} must equal the bottom's axes "
            f"[{start}, {end}) of shape {tuple(shape)}",
            ShapeError,
        )
    return Broadcast(start, math.prod(shape[:start]), math.prod(pshape), math.prod(shape[end:]))


def scratch(layer, key: str, shape, dtype=None):
    """A reusable array of ``shape`` owned by ``layer`` (contents undefined)."""
    bufs = layer.__dict__.setdefault("_scratch", {})
    shape = tuple(shape)
    size = math.prod(shape)
    dtype = layer.dtype if dtype is None else dtype
    arr = bufs.get(key)
    if arr is None or arr.size < size or arr.dtype != dtype:
        arr = layer.xp.empty(max(size, 1), dtype=dtype)
        bufs[key] = arr
    return arr[:size].reshape(shape)


def keep_input(layer, bottom, top, needed: bool = True):
    """The input array forward should read; a saved copy when the layer runs in place.

    Call at the start of forward. ``needed=False`` skips the copy (backward will not need x).
    """
    x = bottom[0].data
    if top[0] is not bottom[0] or not needed:
        return x
    saved = scratch(layer, "input", x.shape)
    saved[...] = x
    return saved


def saved_input(layer, bottom, top):
    """In backward: the input forward saw (the copy :func:`keep_input` made when in place)."""
    x = bottom[0].data
    if top[0] is not bottom[0]:
        return x
    return scratch(layer, "input", x.shape)
