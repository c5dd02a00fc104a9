"""Fused activation kernels (forward where the xp form needs several passes, and backward).

Each fused function takes CuPy arrays and writes ``out`` (allocated when None) in one kernel
launch; its ``*_ref`` twin computes the same formula with plain array operations on NumPy or CuPy
(the xp path, used on the CPU and as the reference of the parity tests). All arrays of one call
share one float dtype and one shape (``slope`` of PReLU excepted).

Formulas (Caffe's, with s = negative_slope, a = alpha, a_c = PReLU slope of channel c):

* ReLU:    y = x if x > 0 else s*x;        dx = dy if x > 0 else s*dy   (x == 0 takes s)
* Sigmoid: y = 0.5*tanh(0.5*x) + 0.5;      dx = dy * y * (1 - y)
* TanH:    y = tanh(x);                    dx = dy * (1 - y^2)
* ELU:     y = x if x > 0 else a*(e^x - 1); dx = dy if x > 0 else dy * (y + a)
* PReLU:   y = x if x > 0 else a_c*x;      dx = dy if x > 0 else a_c*dy;
           da_c += sum over every element of channel c of dy * x * [x <= 0]
  with c = (flat index // inner) % C, inner = prod(shape[2:]); a shared slope (C = 1) uses a_0.
"""

from __future__ import annotations

import math

from minicaffe.backend import array_module
from minicaffe.errors import ShapeError
from minicaffe.gpu.kernels import Elementwise, Reduction, get_kernel, register, require_cupy

RELU_FORWARD = register(
    Elementwise(
        "minicaffe_relu_forward",
        "T x, T slope",
        "T y",
        "y = x > 0 ? x : x * slope;",
        scalars=("slope",),
    )
)

RELU_BACKWARD = register(
    Elementwise(
        "minicaffe_relu_backward",
        "T x, T dy, T slope",
        "T dx",
        "dx = x > 0 ? dy : dy * slope;",
        scalars=("slope",),
    )
)

SIGMOID_FORWARD = register(
    Elementwise(
        "minicaffe_sigmoid_forward", "T x", "T y", "y = T(0.5) * tanh(T(0.5) * x) + T(0.5);"
    )
)

SIGMOID_BACKWARD = register(
    Elementwise("minicaffe_sigmoid_backward", "T y, T dy", "T dx", "dx = dy * y * (T(1) - y);")
)

TANH_BACKWARD = register(
    Elementwise("minicaffe_tanh_backward", "T y, T dy", "T dx", "dx = dy * (T(1) - y * y);")
)

ELU_FORWARD = register(
    Elementwise(
        "minicaffe_elu_forward",
        "T x, T alpha",
        "T y",
        "y = x > 0 ? x : alpha * (exp(x) - T(1));",
        scalars=("alpha",),
    )
)

ELU_BACKWARD = register(
    Elementwise(
        "minicaffe_elu_backward",
        "T x, T y, T dy, T alpha",
        "T dx",
        "dx = x > 0 ? dy : dy * (y + alpha);",
        scalars=("alpha",),
    )
)

PRELU_FORWARD = register(
    Elementwise(
        "minicaffe_prelu_forward",
        "T x, raw T slope, int64 inner, int32 channels",
        "T y",
        """
    const int c = (int)(((long long)i / inner) % channels);
    y = x > 0 ? x : x * slope[c];
    """,
        scalars=("inner", "channels"),
    )
)

PRELU_BACKWARD = register(
    Elementwise(
        "minicaffe_prelu_backward",
        "T x, T dy, raw T slope, int64 inner, int32 channels",
        "T dx",
        """
    const int c = (int)(((long long)i / inner) % channels);
    dx = x > 0 ? dy : dy * slope[c];
    """,
        scalars=("inner", "channels"),
    )
)

PRELU_SLOPE_GRAD = register(
    Reduction(
        "minicaffe_prelu_slope_grad",
        "T dy, T x",
        "T da",
        "x > 0 ? T(0) : dy * x",
        "a + b",
        "da = a",
        "0",
    )
)


def _out(xp, like, out):
    return xp.empty_like(like) if out is None else out


# ---------------------------------------------------------------------------- ReLU


def relu_forward(x, slope: float = 0.0, out=None):
    """Fused (leaky) ReLU forward on CuPy arrays; ``out`` may be ``x`` (in place)."""
    cp = require_cupy(x)
    return get_kernel(RELU_FORWARD)(x, x.dtype.type(slope), _out(cp, x, out))


def relu_forward_ref(x, slope: float = 0.0, out=None):
    xp = array_module(x)
    out = _out(xp, x, out)
    if slope == 0:
        return xp.maximum(x, 0, out=out)
    return xp.multiply(x, xp.where(x > 0, 1, slope).astype(x.dtype, copy=False), out=out)


def relu_backward(x, dy, slope: float = 0.0, out=None):
    """Fused ReLU backward: one read of x and dy, one write of dx (``out`` may be ``dy``)."""
    cp = require_cupy(x, dy)
    return get_kernel(RELU_BACKWARD)(x, dy, x.dtype.type(slope), _out(cp, dy, out))


def relu_backward_ref(x, dy, slope: float = 0.0, out=None):
    xp = array_module(x)
    out = _out(xp, dy, out)
    if slope == 0:
        return xp.multiply(dy, x > 0, out=out)
    return xp.multiply(dy, xp.where(x > 0, 1, slope).astype(dy.dtype, copy=False), out=out)


# ---------------------------------------------------------------------------- Sigmoid / TanH


def sigmoid_forward(x, out=None):
    cp = require_cupy(x)
    return get_kernel(SIGMOID_FORWARD)(x, _out(cp, x, out))


def sigmoid_forward_ref(x, out=None):
    xp = array_module(x)
    out = _out(xp, x, out)
    xp.multiply(x, 0.5, out=out)
    xp.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


def sigmoid_backward(y, dy, out=None):
    cp = require_cupy(y, dy)
    return get_kernel(SIGMOID_BACKWARD)(y, dy, _out(cp, dy, out))


def sigmoid_backward_ref(y, dy, out=None):
    xp = array_module(y)
    out = _out(xp, dy, out)
    tmp = 1 - y
    tmp *= y
    return xp.multiply(dy, tmp, out=out)


def tanh_backward(y, dy, out=None):
    cp = require_cupy(y, dy)
    return get_kernel(TANH_BACKWARD)(y, dy, _out(cp, dy, out))


def tanh_backward_ref(y, dy, out=None):
    xp = array_module(y)
    out = _out(xp, dy, out)
    tmp = y * y
    xp.subtract(1, tmp, out=tmp)
    return xp.multiply(dy, tmp, out=out)


# ---------------------------------------------------------------------------- ELU


def elu_forward(x, alpha: float = 1.0, out=None):
    cp = require_cupy(x)
    return get_kernel(ELU_FORWARD)(x, x.dtype.type(alpha), _out(cp, x, out))


def elu_forward_ref(x, alpha: float = 1.0, out=None):
    xp = array_module(x)
    out = _out(xp, x, out)
    neg = xp.exp(xp.minimum(x, 0))
    neg -= 1
    neg *= alpha
    return xp.add(xp.maximum(x, 0), neg, out=out)


def elu_backward(x, y, dy, alpha: float = 1.0, out=None):
    """ELU backward from the input x (sign test) and output y (y + alpha = alpha*e^x)."""
    cp = require_cupy(x, y, dy)
    return get_kernel(ELU_BACKWARD)(x, y, dy, x.dtype.type(alpha), _out(cp, dy, out))


def elu_backward_ref(x, y, dy, alpha: float = 1.0, out=None):
    xp = array_module(x)
    out = _out(xp, dy, out)
    return xp.multiply(dy, xp.where(x > 0, 1, y + alpha).astype(dy.dtype, copy=False), out=out)


# ---------------------------------------------------------------------------- PReLU


def _prelu_geometry(x, slope) -> tuple[int, int]:
    """(inner, channels): elements per (n, c) plane, and the number of slopes."""
    channels = int(slope.size)
    if channels == 1:
        return 1, 1
    if x.ndim < 2 or x.shape[1] != channels:
        raise ShapeError(f"PReLU slopes ({channels}) must match axis 1 of x {tuple(x.shape)}")
    return math.prod(x.shape[2:]), channels


def prelu_forward(x, slope, out=None):
    """Fused PReLU forward. ``slope``: (C,) per channel (axis 1) or (1,) shared."""
    cp = require_cupy(x, slope)
    inner, channels = _prelu_geometry(x, slope)
    return get_kernel(PRELU_FORWARD)(x, slope.reshape(-1), inner, channels, _out(cp, x, out))


def _slope_view(xp, x, slope):
    if slope.size == 1:
        return slope.reshape(())
    return slope.reshape((1, slope.size) + (1,) * (x.ndim - 2))


def prelu_forward_ref(x, slope, out=None):
    xp = array_module(x)
    _prelu_geometry(x, slope)
    out = _out(xp, x, out)
    a = _slope_view(xp, x, slope)
    return xp.add(xp.maximum(x, 0), a * xp.minimum(x, 0), out=out)


def prelu_backward(x, dy, slope, out=None, slope_diff=None):
    """Fused PReLU backward: returns dx; ADDS the slope gradient into ``slope_diff`` when given
    (parameter diffs accumulate). ``out=None`` with ``slope_diff`` given skips dx."""
    cp = require_cupy(x, dy, slope)
    inner, channels = _prelu_geometry(x, slope)
    if slope_diff is not None:
        reduce = get_kernel(PRELU_SLOPE_GRAD)
        if channels == 1:
            slope_diff += reduce(dy, x).reshape(slope_diff.shape)
        else:
            n = x.shape[0]
            g = reduce(dy.reshape(n, channels, inner), x.reshape(n, channels, inner), axis=(0, 2))
            slope_diff += g.reshape(slope_diff.shape)
    if out is None and slope_diff is not None:
        return None
    return get_kernel(PRELU_BACKWARD)(x, dy, slope.reshape(-1), inner, channels, _out(cp, dy, out))


def prelu_backward_ref(x, dy, slope, out=None, slope_diff=None):
    xp = array_module(x)
    inner, channels = _prelu_geometry(x, slope)
    if slope_diff is not None:
        contrib = dy * xp.minimum(x, 0)
        if channels == 1:
            slope_diff += contrib.sum().reshape(slope_diff.shape)
        else:
            n = x.shape[0]
            slope_diff += (
                contrib.reshape(n, channels, inner).sum(axis=(0, 2)).reshape(slope_diff.shape)
            )
    if out is None and slope_diff is not None:
        return None
    out = _out(xp, dy, out)
    a = _slope_view(xp, x, slope)
    return xp.multiply(dy, xp.where(x > 0, 1, a).astype(dy.dtype, copy=False), out=out)
