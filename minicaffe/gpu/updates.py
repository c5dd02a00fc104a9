"""Solver updates fused into one kernel per parameter blob (Caffe's formulas, spec section 6.4).

Every function performs the whole per-parameter tail of Caffe's ApplyUpdate in place:

    g  <- g * scale                          (scale = clip factor / iter_size; 1 when neither)
    g  <- g + decay * w        (L2)   or   g + decay * sign(w)   (L1)     [decay = local decay]
    u  <- rule(g, history)                   (history updated in place)
    g  <- u                                  (Caffe leaves the update value in the diff)
    w  <- w - u

with lr = the local rate (rate * lr_mult) and the rules

    SGD       v = momentum*v + lr*g;                              u = v
    Nesterov  v' = momentum*v + lr*g;                             u = (1+momentum)*v' - momentum*v
    AdaGrad   h = h + g^2;                                        u = lr*g / (sqrt(h) + delta)
    RMSProp   h = rms_decay*h + (1-rms_decay)*g^2;                u = lr*g / (sqrt(h) + delta)
    AdaDelta  h = m*h + (1-m)*g^2;  d = g*sqrt((h2+delta)/(h+delta));
              h2 = m*h2 + (1-m)*d^2;                              u = lr*d
    Adam      m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2;
              u = lr*sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + delta),  t = iter + 1

``scale`` may be a Python number or a 0-d/1-element device array (e.g. from :func:`clip_scale`),
so gradient clipping needs no host round trip. The fused functions take CuPy arrays of one float
dtype and shape; the ``*_ref`` twins do the same steps with array operations on NumPy or CuPy.
Each function returns ``w``.
"""

from __future__ import annotations

import math

import numpy as np

from minicaffe.backend import array_module
from minicaffe.errors import SolverError
from minicaffe.gpu.kernels import Elementwise, get_kernel, register, require_cupy

# Shared head of every update body: scaled, regularised gradient in ``gi``.
_HEAD = """
T gi = g * GSCALE;
if (decay != T(0)) gi += l1 ? decay * T((w > T(0)) - (w < T(0))) : decay * w;
"""

_RULES = {
    "sgd": (
        "T lr, T momentum",
        ("lr", "momentum"),
        "T h",
        """
T u = momentum * h + lr * gi;
h = u;
""",
    ),
    "nesterov": (
        "T lr, T momentum",
        ("lr", "momentum"),
        "T h",
        """
const T prev = h;
h = momentum * h + lr * gi;
T u = (T(1) + momentum) * h - momentum * prev;
""",
    ),
    "adagrad": (
        "T lr, T delta",
        ("lr", "delta"),
        "T h",
        """
h = h + gi * gi;
T u = lr * gi / (sqrt(h) + delta);
""",
    ),
    "rmsprop": (
        "T lr, T rms_decay, T delta",
        ("lr", "rms_decay", "delta"),
        "T h",
        """
h = rms_decay * h + (T(1) - rms_decay) * gi * gi;
T u = lr * gi / (sqrt(h) + delta);
""",
    ),
    "adadelta": (
        "T lr, T momentum, T delta",
        ("lr", "momentum", "delta"),
        "T h, T h2",
        """
h = momentum * h + (T(1) - momentum) * gi * gi;
const T d = gi * sqrt((h2 + delta) / (h + delta));
h2 = momentum * h2 + (T(1) - momentum) * d * d;
T u = lr * d;
""",
    ),
    "adam": (
        "T rate, T beta1, T beta2, T delta",
        ("rate", "beta1", "beta2", "delta"),
        "T m, T v",
        """
m = beta1 * m + (T(1) - beta1) * gi;
v = beta2 * v + (T(1) - beta2) * gi * gi;
T u = rate * m / (sqrt(v) + delta);
""",
    ),
}
_TAIL = """
g = u;
w -= u;
"""


def _specs(rule: str):
    params, scalars, history, body = _RULES[rule]
    op = _HEAD + body + _TAIL
    common_scalars = ("decay", "l1")
    host = register(
        Elementwise(
            f"minicaffe_{rule}_update",
            f"{params}, T decay, bool l1, T gscale",
            f"T w, T g, {history}",
            op.replace("GSCALE", "gscale"),
            scalars=scalars + common_scalars + ("gscale",),
        )
    )
    device = register(
        Elementwise(
            f"minicaffe_{rule}_update_dscale",
            f"{params}, T decay, bool l1, raw T gscale",
            f"T w, T g, {history}",
            op.replace("GSCALE", "gscale[0]"),
            scalars=scalars + common_scalars,
        )
    )
    return host, device


UPDATE_SPECS = {rule: _specs(rule) for rule in _RULES}


def _check_reg(regularization: str) -> bool:
    reg = str(regularization).upper()
    if reg not in ("L1", "L2"):
        raise SolverError(f"regularization_type must be L1 or L2; received {regularization!r}")
    return reg == "L1"


def _launch(rule: str, w, g, histories, scalars, decay, regularization, scale):
    cp = require_cupy(w, g, *histories)
    for a in (g, *histories):
        if a.shape != w.shape or a.dtype != w.dtype:
            raise SolverError(
                f"{rule} update: diff and history must match the parameter "
                f"{tuple(w.shape)} {w.dtype}; received {tuple(a.shape)} {a.dtype}"
            )
    l1 = _check_reg(regularization)
    t = w.dtype.type
    host_spec, dev_spec = UPDATE_SPECS[rule]
    args = [t(s) for s in scalars] + [t(decay), l1]
    if isinstance(scale, cp.ndarray):
        get_kernel(dev_spec)(*args, scale.reshape(1).astype(w.dtype, copy=False), w, g, *histories)
    else:
        get_kernel(host_spec)(*args, t(scale), w, g, *histories)
    return w


def _prepare_ref(w, g, decay, regularization, scale):
    """Scale and regularise ``g`` in place (the xp steps before the rule)."""
    xp = array_module(w)
    l1 = _check_reg(regularization)
    g *= scale if not hasattr(scale, "shape") else scale.reshape(()).astype(g.dtype, copy=False)
    if decay != 0:
        g += decay * (xp.sign(w) if l1 else w)
    return xp


def _finish_ref(w, g, u):
    g[...] = u
    w -= u
    return w


def sgd_update(w, g, h, *, lr, momentum=0.0, decay=0.0, regularization="L2", scale=1.0):
    """SGD with momentum (Caffe keeps lr inside the momentum buffer ``h``)."""
    return _launch("sgd", w, g, (h,), (lr, momentum), decay, regularization, scale)


def sgd_update_ref(w, g, h, *, lr, momentum=0.0, decay=0.0, regularization="L2", scale=1.0):
    _prepare_ref(w, g, decay, regularization, scale)
    h *= momentum
    h += lr * g
    return _finish_ref(w, g, h)


def nesterov_update(w, g, h, *, lr, momentum=0.0, decay=0.0, regularization="L2", scale=1.0):
    return _launch("nesterov", w, g, (h,), (lr, momentum), decay, regularization, scale)


def nesterov_update_ref(w, g, h, *, lr, momentum=0.0, decay=0.0, regularization="L2", scale=1.0):
    _prepare_ref(w, g, decay, regularization, scale)
    prev = h.copy()
    h *= momentum
    h += lr * g
    return _finish_ref(w, g, (1 + momentum) * h - momentum * prev)


def adagrad_update(w, g, h, *, lr, delta=1e-8, decay=0.0, regularization="L2", scale=1.0):
    return _launch("adagrad", w, g, (h,), (lr, delta), decay, regularization, scale)


def adagrad_update_ref(w, g, h, *, lr, delta=1e-8, decay=0.0, regularization="L2", scale=1.0):
    xp = _prepare_ref(w, g, decay, regularization, scale)
    h += g * g
    return _finish_ref(w, g, lr * g / (xp.sqrt(h) + delta))


def rmsprop_update(
    w, g, h, *, lr, rms_decay=0.99, delta=1e-8, decay=0.0, regularization="L2", scale=1.0
):
    return _launch("rmsprop", w, g, (h,), (lr, rms_decay, delta), decay, regularization, scale)


def rmsprop_update_ref(
    w, g, h, *, lr, rms_decay=0.99, delta=1e-8, decay=0.0, regularization="L2", scale=1.0
):
    xp = _prepare_ref(w, g, decay, regularization, scale)
    h *= rms_decay
    h += (1 - rms_decay) * g * g
    return _finish_ref(w, g, lr * g / (xp.sqrt(h) + delta))


def adadelta_update(
    w, g, h, h2, *, lr, momentum=0.0, delta=1e-8, decay=0.0, regularization="L2", scale=1.0
):
    """AdaDelta: ``h`` averages g^2, ``h2`` averages the squared steps (Caffe's history 0, 1)."""
    return _launch("adadelta", w, g, (h, h2), (lr, momentum, delta), decay, regularization, scale)


def adadelta_update_ref(
    w, g, h, h2, *, lr, momentum=0.0, delta=1e-8, decay=0.0, regularization="L2", scale=1.0
):
    xp = _prepare_ref(w, g, decay, regularization, scale)
    h *= momentum
    h += (1 - momentum) * g * g
    d = g * xp.sqrt((h2 + delta) / (h + delta))
    h2 *= momentum
    h2 += (1 - momentum) * d * d
    return _finish_ref(w, g, lr * d)


def adam_rate(lr: float, beta1: float, beta2: float, t: int) -> float:
    """Adam's bias-corrected step size lr*sqrt(1 - beta2^t)/(1 - beta1^t) (t = iter + 1)."""
    if t < 1:
        raise SolverError(f"Adam step count t = iter + 1 must be >= 1; received {t}")
    return lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)


def adam_update(
    w,
    g,
    m,
    v,
    *,
    lr,
    t,
    beta1=0.9,
    beta2=0.999,
    delta=1e-8,
    decay=0.0,
    regularization="L2",
    scale=1.0,
):
    """Adam: ``m``, ``v`` are Caffe's history 0 and 1; ``t`` = iter + 1 (host int)."""
    rate = adam_rate(lr, beta1, beta2, t)
    return _launch("adam", w, g, (m, v), (rate, beta1, beta2, delta), decay, regularization, scale)


def adam_update_ref(
    w,
    g,
    m,
    v,
    *,
    lr,
    t,
    beta1=0.9,
    beta2=0.999,
    delta=1e-8,
    decay=0.0,
    regularization="L2",
    scale=1.0,
):
    xp = _prepare_ref(w, g, decay, regularization, scale)
    rate = adam_rate(lr, beta1, beta2, t)
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * g * g
    return _finish_ref(w, g, rate * m / (xp.sqrt(v) + delta))


def clip_scale(diffs, clip_gradients: float):
    """Caffe's ClipGradients factor as a 0-d array on the diffs' device (no host round trip):
    clip / ||all diffs||_2 when that norm exceeds ``clip_gradients``, else 1.

    Pass it as ``scale`` (times 1/iter_size) to the update functions. ``clip_gradients < 0``
    means no clipping (returns 1.0, a Python float)."""
    if clip_gradients < 0:
        return 1.0
    diffs = list(diffs)
    if not diffs:
        return 1.0
    xp = array_module(diffs[0])
    sumsq = xp.zeros((), xp.float64)
    for d in diffs:
        flat = d.reshape(-1)
        sumsq = sumsq + xp.dot(flat, flat).astype(xp.float64)
    norm = xp.sqrt(sumsq)
    # norm > clip  <=>  clip / norm < 1; norm == 0 gives inf, which min() turns into 1
    with np.errstate(divide="ignore"):
        return xp.minimum(float(clip_gradients) / norm, 1.0)
