"""im2col / col2im for 2-D convolution, batched over N, with pad, stride and dilation.

Geometry (Caffe's convolution, floor rounding), per spatial axis:
    out = (in + 2*pad - (dilation*(kernel - 1) + 1)) // stride + 1

Layout: ``x`` is (N, C, H, W); ``col`` is (N, C*KH*KW, OH*OW) with row ``(c*KH + ki)*KW + kj``
and column ``oh*OW + ow`` holding ``x[n, c, oh*SH - PH + ki*DH, ow*SW - PW + kj*DW]`` (0 outside
the image). That is Caffe's per-image column buffer stacked over the batch, so a convolution is
``W.reshape(G, O/G, -1) @ col.reshape(N, G, -1, OH*OW)`` (one batched cuBLAS GEMM), and grouped
channels are contiguous row blocks.

col2im is the adjoint: every image pixel GATHERS the column entries that read it (one thread per
pixel, no atomics), so ``col2im(col)`` assigns (does not accumulate into) the image.
"""

from __future__ import annotations

from minicaffe.backend import array_module
from minicaffe.errors import ShapeError
from minicaffe.functional import conv_out_size
from minicaffe.gpu.kernels import Elementwise, get_kernel, register, require_cupy

_GEOMETRY = (
    "int32 H, int32 W, int32 OH, int32 OW, int32 KH, int32 KW, int32 PH, int32 PW, "
    "int32 SH, int32 SW, int32 DH, int32 DW"
)
_SCALARS = ("H", "W", "OH", "OW", "KH", "KW", "PH", "PW", "SH", "SW", "DH", "DW")

IM2COL = register(
    Elementwise(
        "minicaffe_im2col",
        "raw T x, " + _GEOMETRY,
        "T col",
        """
    // i walks col as (N*C, KH, KW, OH, OW)
    long long r = i;
    const int ow = (int)(r % OW); r /= OW;
    const int oh = (int)(r % OH); r /= OH;
    const int kj = (int)(r % KW); r /= KW;
    const int ki = (int)(r % KH); r /= KH;
    const int h = oh * SH - PH + ki * DH;
    const int w = ow * SW - PW + kj * DW;
    col = (h >= 0 && h < H && w >= 0 && w < W) ? x[(r * H + h) * W + w] : T(0);
    """,
        scalars=_SCALARS,
    )
)

COL2IM = register(
    Elementwise(
        "minicaffe_col2im",
        "raw T col, " + _GEOMETRY,
        "T x",
        """
    // i walks x as (N*C, H, W); sum the (ki, kj) taps whose output pixel lands on the grid
    long long r = i;
    const int w = (int)(r % W); r /= W;
    const int h = (int)(r % H); r /= H;
    const long long plane = r * KH * KW;
    T acc = 0;
    for (int ki = 0; ki < KH; ++ki) {
      const int hh = h + PH - ki * DH;
      if (hh < 0) break;
      if (hh % SH != 0) continue;
      const int oh = hh / SH;
      if (oh >= OH) continue;
      for (int kj = 0; kj < KW; ++kj) {
        const int ww = w + PW - kj * DW;
        if (ww < 0) break;
        if (ww % SW != 0) continue;
        const int ow = ww / SW;
        if (ow >= OW) continue;
        acc += col[((plane + ki * KW + kj) * OH + oh) * OW + ow];
      }
    }
    x = acc;
    """,
        scalars=_SCALARS,
    )
)


def _pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ShapeError(f"im2col: {what} needs 1 or 2 values; received {v}")
    return v


def _geometry(shape, kernel, pad, stride, dilation):
    if len(shape) != 4:
        raise ShapeError(f"im2col: the image must be 4-D (N, C, H, W); received shape {shape}")
    kh, kw = _pair(kernel, "kernel")
    ph, pw = _pair(pad, "pad")
    sh, sw = _pair(stride, "stride")
    dh, dw = _pair(dilation, "dilation")
    if min(kh, kw, sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ShapeError(
            f"im2col: kernel, stride and dilation must be >= 1 and pad >= 0; "
            f"received kernel {(kh, kw)}, stride {(sh, sw)}, dilation {(dh, dw)}, "
            f"pad {(ph, pw)}"
        )
    n, c, h, w = (int(d) for d in shape)
    oh, ow = conv_out_size(h, kh, sh, ph, dh), conv_out_size(w, kw, sw, pw, dw)
    if oh < 1 or ow < 1:
        raise ShapeError(
            f"im2col: a {(h, w)} image with pad {(ph, pw)} is smaller than the "
            f"dilated kernel {(dh * (kh - 1) + 1, dw * (kw - 1) + 1)}"
        )
    return n, c, h, w, oh, ow, kh, kw, ph, pw, sh, sw, dh, dw


def _check_out(out, shape, dtype, what: str):
    if out is not None and (tuple(out.shape) != shape or out.dtype != dtype):
        raise ShapeError(
            f"{what}: out must be {shape} {dtype}; received {tuple(out.shape)} {out.dtype}"
        )


def _im2col_setup(x, kernel, pad, stride, dilation, out):
    """Geometry of an im2col of ``x`` and the columns' shape, with ``out`` checked."""
    g = _geometry(x.shape, kernel, pad, stride, dilation)
    n, c, _, _, oh, ow, kh, kw = g[:8]
    shape = (n, c * kh * kw, oh * ow)
    _check_out(out, shape, x.dtype, "im2col")
    return g, shape


def _col2im_setup(col, image_shape, kernel, pad, stride, dilation, out):
    """Geometry of a col2im into ``image_shape``, with the columns and ``out`` checked."""
    g = _geometry(tuple(image_shape), kernel, pad, stride, dilation)
    n, c, h, w, oh, ow, kh, kw = g[:8]
    want = (n, c * kh * kw, oh * ow)
    if tuple(col.shape) != want:
        raise ShapeError(
            f"col2im: columns for image {tuple(image_shape)} must be {want}; "
            f"received {tuple(col.shape)}"
        )
    shape = (n, c, h, w)
    _check_out(out, shape, col.dtype, "col2im")
    return g, shape


def im2col(x, kernel, pad=0, stride=1, dilation=1, out=None):
    """Fused im2col of a CuPy (N, C, H, W) image -> (N, C*KH*KW, OH*OW)."""
    cp = require_cupy(x)
    g, shape = _im2col_setup(x, kernel, pad, stride, dilation, out)
    n, c, h, w, oh, ow, kh, kw, ph, pw, sh, sw, dh, dw = g
    out = cp.empty(shape, x.dtype) if out is None else out
    get_kernel(IM2COL)(cp.ascontiguousarray(x), h, w, oh, ow, kh, kw, ph, pw, sh, sw, dh, dw, out)
    return out


def im2col_ref(x, kernel, pad=0, stride=1, dilation=1, out=None):
    """im2col with one strided slice per kernel tap (KH*KW array copies), NumPy or CuPy."""
    xp = array_module(x)
    g, shape = _im2col_setup(x, kernel, pad, stride, dilation, out)
    n, c, h, w, oh, ow, kh, kw, ph, pw, sh, sw, dh, dw = g
    out = xp.empty(shape, x.dtype) if out is None else out
    if ph or pw:
        padded = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), x.dtype)
        padded[:, :, ph : ph + h, pw : pw + w] = x
    else:
        padded = x
    col = out.reshape(n, c, kh, kw, oh, ow)
    for ki in range(kh):
        h0 = ki * dh
        for kj in range(kw):
            w0 = kj * dw
            col[:, :, ki, kj] = padded[
                :, :, h0 : h0 + sh * (oh - 1) + 1 : sh, w0 : w0 + sw * (ow - 1) + 1 : sw
            ]
    return out


def col2im(col, image_shape, kernel, pad=0, stride=1, dilation=1, out=None):
    """Fused col2im: (N, C*KH*KW, OH*OW) columns -> (N, C, H, W) image (assigned, not added)."""
    cp = require_cupy(col)
    g, shape = _col2im_setup(col, image_shape, kernel, pad, stride, dilation, out)
    n, c, h, w, oh, ow, kh, kw, ph, pw, sh, sw, dh, dw = g
    out = cp.empty(shape, col.dtype) if out is None else out
    get_kernel(COL2IM)(cp.ascontiguousarray(col), h, w, oh, ow, kh, kw, ph, pw, sh, sw, dh, dw, out)
    return out


def col2im_ref(col, image_shape, kernel, pad=0, stride=1, dilation=1, out=None):
    """col2im by adding each tap's strided slice into a padded image, NumPy or CuPy."""
    xp = array_module(col)
    g, shape = _col2im_setup(col, image_shape, kernel, pad, stride, dilation, out)
    n, c, h, w, oh, ow, kh, kw, ph, pw, sh, sw, dh, dw = g
    padded = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), col.dtype)
    cols = col.reshape(n, c, kh, kw, oh, ow)
    for ki in range(kh):
        h0 = ki * dh
        for kj in range(kw):
            w0 = kj * dw
            padded[:, :, h0 : h0 + sh * (oh - 1) + 1 : sh, w0 : w0 + sw * (ow - 1) + 1 : sw] += (
                cols[:, :, ki, kj]
            )
    if out is None:
        return padded[:, :, ph : ph + h, pw : pw + w].copy()
    out[...] = padded[:, :, ph : ph + h, pw : pw + w]
    return out
