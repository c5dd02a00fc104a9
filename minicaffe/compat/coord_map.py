"""Coordinate maps between NetSpec tops, and the Crop that aligns them (pycaffe's coord_map).

Each spatial layer maps output coordinates y to input coordinates x by an affine map per axis,
x = a * y + b, written (axis, a, b):

* Convolution / Pooling / Im2col with stride s, pad p and effective kernel k = (K-1)*d + 1:
  a = 1/s, b = (p - (k-1)/2) / s;
* Deconvolution: a = s, b = (k-1)/2 - p;
* Crop (axis c, offsets o): a = 1, b = -o, on axis c - 1 (the last axis not cropped);
* element-wise layers (ReLU, Dropout, LRN, BatchNorm, Eltwise ...): identity.

``crop(top_from, top_to)`` finds a common ancestor of the two tops, composes the maps to get
top_to's coordinates in top_from's frame, checks the scale is 1 and the offset a non-positive
integer, and returns ``L.Crop(top_from, top_to, crop_param={axis, offset})`` — how FCN's net.py
aligns its upsampled scores with the input.
"""

from __future__ import annotations

import numpy as np

from minicaffe.errors import NetBuildError
from minicaffe.net_spec import layers as L

PASS_THROUGH = {
    "AbsVal",
    "BatchNorm",
    "Bias",
    "BNLL",
    "Dropout",
    "Eltwise",
    "ELU",
    "Log",
    "LRN",
    "Exp",
    "MVN",
    "Power",
    "ReLU",
    "PReLU",
    "Scale",
    "Sigmoid",
    "Split",
    "TanH",
    "Threshold",
}


class UndefinedMapException(NetBuildError):
    """A layer through which no coordinate map is defined."""


class AxisMismatchException(NetBuildError):
    """Two maps that act on different axes cannot be composed."""


def _conv_params(fn):
    p = fn.params.get("convolution_param", fn.params)
    legacy = {"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"} & set(p)
    if legacy:
        raise NetBuildError(
            f"{fn.type_name}: coordinate maps do not support {sorted(legacy)}; "
            "use kernel_size/stride/pad"
        )
    if "kernel_size" not in p:
        raise NetBuildError(f"{fn.type_name}: a coordinate map needs kernel_size")
    kernel = np.array(p["kernel_size"], ndmin=1)
    dilation = np.array(p.get("dilation", 1), ndmin=1)
    return (
        p.get("axis", 1),
        np.array(p.get("stride", 1), ndmin=1),
        (kernel - 1) * dilation + 1,
        np.array(p.get("pad", 0), ndmin=1),
    )


def coord_map(fn):
    """(axis, a, b) of layer ``fn`` (a net_spec Function); UndefinedMapException if none."""
    t = fn.type_name
    if t in ("Convolution", "Pooling", "Im2col"):
        axis, stride, k, pad = _conv_params(fn)
        return axis, 1 / stride, (pad - (k - 1) / 2) / stride
    if t == "Deconvolution":
        axis, stride, k, pad = _conv_params(fn)
        return axis, stride, (k - 1) / 2 - pad
    if t in PASS_THROUGH:
        return None, 1, 0
    if t == "Crop":
        p = fn.params.get("crop_param", fn.params)
        return p.get("axis", 2) - 1, 1, -np.array(p.get("offset", 0), ndmin=1)
    raise UndefinedMapException(f"no coordinate map through a {t} layer")


def compose(first, then):
    """The map ``first`` followed by ``then`` (both (axis, a, b))."""
    ax1, a1, b1 = first
    ax2, a2, b2 = then
    if ax1 is None:
        ax = ax2
    elif ax2 is None or ax1 == ax2:
        ax = ax1
    else:
        raise AxisMismatchException(f"maps on axes {ax1} and {ax2} cannot be composed")
    return ax, a1 * a2, a1 * b2 + b1


def inverse(cmap):
    ax, a, b = cmap
    return ax, 1 / a, -b / a


def _mappable_bottoms(top):
    bottoms = top.fn.inputs
    return bottoms[:1] if top.fn.type_name == "Crop" else bottoms  # Crop's 2nd is only a size


def _walk(start):
    """Yield (top, map from start to top) going up through every mappable layer."""
    maps = {start: (None, 1, 0)}
    stack = [start]
    while stack:
        top = stack.pop()
        yield top, maps[top]
        try:
            step = coord_map(top.fn)
        except UndefinedMapException:
            continue
        for bottom in _mappable_bottoms(top):
            if bottom not in maps:
                maps[bottom] = compose(maps[top], step)
                stack.append(bottom)


def coord_map_from_to(top_from, top_to):
    """(axis, a, b) mapping ``top_to`` coordinates into ``top_from`` coordinates."""
    from_maps = dict(_walk(top_from))
    for top, to_map in _walk(top_to):
        if top in from_maps:
            return compose(to_map, inverse(from_maps[top]))
    raise NetBuildError(
        "cannot map between these tops: they share no ancestor reachable through spatial layers"
    )


def crop(top_from, top_to):
    """``L.Crop`` of ``top_from`` to the size and alignment of ``top_to``."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    a, b = np.asarray(a), np.asarray(b)
    if not (a == 1).all():
        raise NetBuildError(f"crop: the two tops differ in scale (a = {a}); cannot crop")
    if not (b <= 0).all():
        raise NetBuildError(f"crop: negative crop offset (b = {b}); top_from is smaller")
    if not (np.round(b) == b).all():
        raise NetBuildError(f"crop: the offset is not an integer (b = {b})")
    return L.Crop(
        top_from, top_to, crop_param=dict(axis=ax + 1, offset=[int(v) for v in -np.round(b)])
    )


__all__ = [
    "AxisMismatchException",
    "UndefinedMapException",
    "compose",
    "coord_map",
    "coord_map_from_to",
    "crop",
    "inverse",
]
