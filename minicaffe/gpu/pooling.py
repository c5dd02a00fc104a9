"""MAX and AVE pooling (forward and backward) with Caffe's window rules, 2-D, batched.

Geometry (Caffe's PoolingLayer), per spatial axis with kernel k, stride s, pad p:
    out = ceil((in + 2p - k) / s) + 1      (round_mode CEIL, the default; FLOOR uses floor)
    if p > 0 and (out - 1)*s >= in + p: out -= 1   (the last window must start inside in + p)
Window of output o: start = o*s - p, end = min(start + k, in + p).
  MAX: the window clipped to the image, [max(start, 0), min(end, in)); the first strictly larger
       value wins (scan h then w, initial -FLT_MAX); ``mask`` records its flat index h*W + w.
  AVE: the sum over the clipped window divided by (end - start) per axis BEFORE clipping to the
       image, so padding zeros count and any overhang past in + p does not.
Backward assigns dx. MAX: each pixel gathers dy of the windows whose mask names it. AVE: each pixel
gathers dy / window size of every window covering it. One thread per output element, no atomics.

Shapes: x (N, C, H, W); y, mask, dy (N, C, OH, OW). ``mask`` is int32, or a float array (Caffe's
optional second top of MAX pooling holds the index as a float).
"""

from __future__ import annotations

from minicaffe.backend import array_module
from minicaffe.errors import ShapeError
from minicaffe.functional import pool_out_size
from minicaffe.gpu.kernels import Elementwise, get_kernel, register, require_cupy

_GEOMETRY = (
    "int32 H, int32 W, int32 OH, int32 OW, int32 KH, int32 KW, int32 SH, int32 SW, "
    "int32 PH, int32 PW"
)
_SCALARS = ("H", "W", "OH", "OW", "KH", "KW", "SH", "SW", "PH", "PW")
_MASK_TYPES = {"M": ("int", "float", "double")}

MAX_POOL_FORWARD = register(
    Elementwise(
        "minicaffe_max_pool_forward",
        "raw T x, " + _GEOMETRY,
        "T y, M mask",
        """
    long long r = i;
    const int ow = (int)(r % OW); r /= OW;
    const int oh = (int)(r % OH); r /= OH;
    int hs = oh * SH - PH, ws = ow * SW - PW;
    const int he = hs + KH < H ? hs + KH : H;
    const int we = ws + KW < W ? ws + KW : W;
    hs = hs > 0 ? hs : 0;
    ws = ws > 0 ? ws : 0;
    const long long base = r * H * W;
    T best = T(-3.402823466e+38);
    int arg = -1;
    for (int h = hs; h < he; ++h) {
      for (int w = ws; w < we; ++w) {
        const T v = x[base + h * W + w];
        if (v > best) {
          best = v;
          arg = h * W + w;
        }
      }
    }
    y = best;
    mask = (M)arg;
    """,
        scalars=_SCALARS,
        placeholder_types=_MASK_TYPES,
    )
)

MAX_POOL_BACKWARD = register(
    Elementwise(
        "minicaffe_max_pool_backward",
        "raw T dy, raw M mask, " + _GEOMETRY,
        "T dx",
        """
    long long r = i;
    const int w = (int)(r % W); r /= W;
    const int h = (int)(r % H); r /= H;
    const int phs = (h + PH < KH) ? 0 : (h + PH - KH) / SH + 1;
    const int pws = (w + PW < KW) ? 0 : (w + PW - KW) / SW + 1;
    const int phe = (h + PH) / SH + 1 < OH ? (h + PH) / SH + 1 : OH;
    const int pwe = (w + PW) / SW + 1 < OW ? (w + PW) / SW + 1 : OW;
    const long long base = r * OH * OW;
    const int me = h * W + w;
    T acc = 0;
    for (int ph = phs; ph < phe; ++ph) {
      for (int pw = pws; pw < pwe; ++pw) {
        const long long o = base + ph * OW + pw;
        if ((int)mask[o] == me) acc += dy[o];
      }
    }
    dx = acc;
    """,
        scalars=_SCALARS,
        placeholder_types=_MASK_TYPES,
    )
)

AVE_POOL_FORWARD = register(
    Elementwise(
        "minicaffe_ave_pool_forward",
        "raw T x, " + _GEOMETRY,
        "T y",
        """
    long long r = i;
    const int ow = (int)(r % OW); r /= OW;
    const int oh = (int)(r % OH); r /= OH;
    int hs = oh * SH - PH, ws = ow * SW - PW;
    int he = hs + KH < H + PH ? hs + KH : H + PH;
    int we = ws + KW < W + PW ? ws + KW : W + PW;
    const T size = T((he - hs) * (we - ws));
    hs = hs > 0 ? hs : 0;
    ws = ws > 0 ? ws : 0;
    he = he < H ? he : H;
    we = we < W ? we : W;
    const long long base = r * H * W;
    T acc = 0;
    for (int h = hs; h < he; ++h) {
      for (int w = ws; w < we; ++w) acc += x[base + h * W + w];
    }
    y = acc / size;
    """,
        scalars=_SCALARS,
    )
)

AVE_POOL_BACKWARD = register(
    Elementwise(
        "minicaffe_ave_pool_backward",
        "raw T dy, " + _GEOMETRY,
        "T dx",
        """
    long long r = i;
    const int w = (int)(r % W) + PW; r /= W;
    const int h = (int)(r % H) + PH; r /= H;
    const int phs = (h < KH) ? 0 : (h - KH) / SH + 1;
    const int pws = (w < KW) ? 0 : (w - KW) / SW + 1;
    const int phe = h / SH + 1 < OH ? h / SH + 1 : OH;
    const int pwe = w / SW + 1 < OW ? w / SW + 1 : OW;
    const long long base = r * OH * OW;
    T acc = 0;
    for (int ph = phs; ph < phe; ++ph) {
      const int hs = ph * SH - PH;
      const int he = hs + KH < H + PH ? hs + KH : H + PH;
      for (int pw = pws; pw < pwe; ++pw) {
        const int ws = pw * SW - PW;
        const int we = ws + KW < W + PW ? ws + KW : W + PW;
        acc += dy[base + ph * OW + pw] / T((he - hs) * (we - ws));
      }
    }
    dx = acc;
    """,
        scalars=_SCALARS,
    )
)


# ---------------------------------------------------------------------------- geometry


def pooled_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool = True) -> int:
    """Caffe's pooled extent along one axis: the Pooling layer's own rule, per axis."""
    return pool_out_size(size, kernel, stride, pad, ceil_mode)


def _pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ShapeError(f"pooling: {what} needs 1 or 2 values; received {v}")
    return v


def _geometry(shape, kernel, stride, pad, ceil_mode, out_size):
    if len(shape) != 4:
        raise ShapeError(f"pooling: input must be 4-D (N, C, H, W); received shape {shape}")
    n, c, h, w = (int(d) for d in shape)
    kh, kw = _pair(kernel, "kernel")
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(pad, "pad")
    if min(kh, kw, sh, sw) < 1 or min(ph, pw) < 0 or ph >= kh or pw >= kw:
        raise ShapeError(
            f"pooling: need kernel, stride >= 1 and 0 <= pad < kernel; received "
            f"kernel {(kh, kw)}, stride {(sh, sw)}, pad {(ph, pw)}"
        )
    if out_size is None:
        oh, ow = pooled_size(h, kh, sh, ph, ceil_mode), pooled_size(w, kw, sw, pw, ceil_mode)
    else:
        oh, ow = _pair(out_size, "out_size")
    if oh < 1 or ow < 1:
        raise ShapeError(
            f"pooling: a {(h, w)} input with pad {(ph, pw)} is smaller than the kernel {(kh, kw)}"
        )
    return n, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw


def _check(arr, shape, what: str, dtype=None):
    if arr is not None and (
        tuple(arr.shape) != shape or (dtype is not None and arr.dtype != dtype)
    ):
        raise ShapeError(
            f"pooling: {what} must have shape {shape}"
            + (f" and dtype {dtype}" if dtype is not None else "")
            + f"; received {tuple(arr.shape)} {arr.dtype}"
        )


# ---------------------------------------------------------------------------- MAX


def max_pool_forward(
    x, kernel, stride=1, pad=0, *, ceil_mode=True, out_size=None, out=None, mask=None
):
    """Fused MAX pooling on CuPy arrays -> (y, mask). ``mask``: int32 unless one is given."""
    cp = require_cupy(x)
    n, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw = _geometry(
        x.shape, kernel, stride, pad, ceil_mode, out_size
    )
    shape = (n, c, oh, ow)
    _check(out, shape, "out", x.dtype)
    _check(mask, shape, "mask")
    out = cp.empty(shape, x.dtype) if out is None else out
    mask = cp.empty(shape, cp.int32) if mask is None else mask
    get_kernel(MAX_POOL_FORWARD)(
        cp.ascontiguousarray(x), h, w, oh, ow, kh, kw, sh, sw, ph, pw, out, mask
    )
    return out, mask


def _windows(xp, h, w, oh, ow, sh, sw, ph, pw):
    """Flat image index of each window's top-left tap (may point into the padding)."""
    rows = xp.arange(oh, dtype=xp.int64) * sh - ph
    cols = xp.arange(ow, dtype=xp.int64) * sw - pw
    return rows[:, None] * w + cols[None, :]


def _padded(xp, x, ph, pw, hp, wp, fill):
    n, c, h, w = x.shape
    out = xp.full((n, c, hp, wp), fill, x.dtype)
    out[:, :, ph : ph + h, pw : pw + w] = x
    return out


def max_pool_forward_ref(
    x, kernel, stride=1, pad=0, *, ceil_mode=True, out_size=None, out=None, mask=None
):
    """MAX pooling with one strided slice per kernel tap, NumPy or CuPy -> (y, mask)."""
    xp = array_module(x)
    n, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw = _geometry(
        x.shape, kernel, stride, pad, ceil_mode, out_size
    )
    shape = (n, c, oh, ow)
    _check(out, shape, "out", x.dtype)
    _check(mask, shape, "mask")
    hp = max(h + 2 * ph, (oh - 1) * sh + kh)
    wp = max(w + 2 * pw, (ow - 1) * sw + kw)
    # -inf padding never beats the -FLT_MAX start, which keeps windows clipped to the image
    padded = _padded(xp, x, ph, pw, hp, wp, -xp.inf)
    best = xp.full(shape, -xp.finfo(xp.float32).max, x.dtype)
    arg = xp.full(shape, -1, xp.int64)
    corner = _windows(xp, h, w, oh, ow, sh, sw, ph, pw)
    upd = xp.empty(shape, bool)
    for ki in range(kh):
        for kj in range(kw):
            v = padded[:, :, ki : ki + sh * (oh - 1) + 1 : sh, kj : kj + sw * (ow - 1) + 1 : sw]
            xp.greater(v, best, out=upd)
            xp.copyto(best, v, where=upd)
            xp.copyto(arg, xp.broadcast_to(corner + (ki * w + kj), shape), where=upd)
    if out is None:
        out = best
    else:
        out[...] = best
    if mask is None:
        mask = arg.astype(xp.int32)
    else:
        mask[...] = arg
    return out, mask


def max_pool_backward(dy, mask, image_shape, kernel, stride=1, pad=0, *, out=None):
    """Fused MAX pooling backward -> dx of ``image_shape`` (assigned)."""
    cp = require_cupy(dy, mask)
    n, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw = _geometry(
        tuple(image_shape), kernel, stride, pad, True, dy.shape[2:]
    )
    _check(mask, tuple(dy.shape), "mask")
    shape = (n, c, h, w)
    _check(out, shape, "out", dy.dtype)
    out = cp.empty(shape, dy.dtype) if out is None else out
    get_kernel(MAX_POOL_BACKWARD)(
        cp.ascontiguousarray(dy),
        cp.ascontiguousarray(mask),
        h,
        w,
        oh,
        ow,
        kh,
        kw,
        sh,
        sw,
        ph,
        pw,
        out,
    )
    return out


def max_pool_backward_ref(dy, mask, image_shape, kernel, stride=1, pad=0, *, out=None):
    """MAX pooling backward by per-tap scatter into a padded image, NumPy or CuPy."""
    xp = array_module(dy)
    n, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw = _geometry(
        tuple(image_shape), kernel, stride, pad, True, dy.shape[2:]
    )
    _check(mask, tuple(dy.shape), "mask")
    shape = (n, c, h, w)
    _check(out, shape, "out", dy.dtype)
    hp = max(h + 2 * ph, (oh - 1) * sh + kh)
    wp = max(w + 2 * pw, (ow - 1) * sw + kw)
    grad = xp.zeros((n, c, hp, wp), dy.dtype)
    corner = _windows(xp, h, w, oh, ow, sh, sw, ph, pw)
    idx = mask.astype(xp.int64)
    for ki in range(kh):
        for kj in range(kw):
            # a tap in the padding can alias a real pixel's flat index; it lands in the padding
            # of ``grad``, which is cut away below
            hit = idx == corner + (ki * w + kj)
            grad[:, :, ki : ki + sh * (oh - 1) + 1 : sh, kj : kj + sw * (ow - 1) + 1 : sw] += (
                dy * hit
            )
    if out is None:
        return grad[:, :, ph : ph + h, pw : pw + w].copy()
    out[...] = grad[:, :, ph : ph + h, pw : pw + w]
    return out


# ---------------------------------------------------------------------------- AVE


def ave_window_sizes(xp, h, w, oh, ow, kh, kw, sh, sw, ph, pw, dtype):
    """(OH, OW) divisors: window extents clipped to [-pad, in + pad)."""
    hs = xp.arange(oh) * sh - ph
    ws = xp.arange(ow) * sw - pw
    he = xp.minimum(hs + kh, h + ph)
    we = xp.minimum(ws + kw, w + pw)
    return ((he - hs)[:, None] * (we - ws)[None, :]).astype(dtype)


def ave_pool_forward(x, kernel, stride=1, pad=0, *, ceil_mode=True, out_size=None, out=None):
    """Fused AVE pooling on CuPy arrays."""
    cp = require_cupy(x)
    n, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw = _geometry(
        x.shape, kernel, stride, pad, ceil_mode, out_size
    )
    shape = (n, c, oh, ow)
    _check(out, shape, "out", x.dtype)
    out = cp.empty(shape, x.dtype) if out is None else out
    get_kernel(AVE_POOL_FORWARD)(cp.ascontiguousarray(x), h, w, oh, ow, kh, kw, sh, sw, ph, pw, out)
    return out


def ave_pool_forward_ref(x, kernel, stride=1, pad=0, *, ceil_mode=True, out_size=None, out=None):
    """AVE pooling with one strided slice per kernel tap, NumPy or CuPy."""
    xp = array_module(x)
    n, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw = _geometry(
        x.shape, kernel, stride, pad, ceil_mode, out_size
    )
    shape = (n, c, oh, ow)
    _check(out, shape, "out", x.dtype)
    hp = max(h + 2 * ph, (oh - 1) * sh + kh)
    wp = max(w + 2 * pw, (ow - 1) * sw + kw)
    padded = _padded(xp, x, ph, pw, hp, wp, 0)
    acc = xp.zeros(shape, x.dtype)
    for ki in range(kh):
        for kj in range(kw):
            acc += padded[:, :, ki : ki + sh * (oh - 1) + 1 : sh, kj : kj + sw * (ow - 1) + 1 : sw]
    acc /= ave_window_sizes(xp, h, w, oh, ow, kh, kw, sh, sw, ph, pw, x.dtype)
    if out is None:
        return acc
    out[...] = acc
    return out


def ave_pool_backward(dy, image_shape, kernel, stride=1, pad=0, *, out=None):
    """Fused AVE pooling backward -> dx of ``image_shape`` (assigned)."""
    cp = require_cupy(dy)
    n, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw = _geometry(
        tuple(image_shape), kernel, stride, pad, True, dy.shape[2:]
    )
    shape = (n, c, h, w)
    _check(out, shape, "out", dy.dtype)
    out = cp.empty(shape, dy.dtype) if out is None else out
    get_kernel(AVE_POOL_BACKWARD)(
        cp.ascontiguousarray(dy), h, w, oh, ow, kh, kw, sh, sw, ph, pw, out
    )
    return out


def ave_pool_backward_ref(dy, image_shape, kernel, stride=1, pad=0, *, out=None):
    """AVE pooling backward by per-tap scatter of dy / window size, NumPy or CuPy."""
    xp = array_module(dy)
    n, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw = _geometry(
        tuple(image_shape), kernel, stride, pad, True, dy.shape[2:]
    )
    shape = (n, c, h, w)
    _check(out, shape, "out", dy.dtype)
    hp = max(h + 2 * ph, (oh - 1) * sh + kh)
    wp = max(w + 2 * pw, (ow - 1) * sw + kw)
    grad = xp.zeros((n, c, hp, wp), dy.dtype)
    share = dy / ave_window_sizes(xp, h, w, oh, ow, kh, kw, sh, sw, ph, pw, dy.dtype)
    for ki in range(kh):
        for kj in range(kw):
            grad[:, :, ki : ki + sh * (oh - 1) + 1 : sh, kj : kj + sw * (ow - 1) + 1 : sw] += share
    if out is None:
        return grad[:, :, ph : ph + h, pw : pw + w].copy()
    out[...] = grad[:, :, ph : ph + h, pw : pw + w]
    return out
