"""Convolution: y = W * x + b over N spatial axes, by im2col + GEMM (see minicaffe.functional)."""

from __future__ import annotations

from minicaffe.chwn import conv_plan, conv_supported, strided_ok
from minicaffe.errors import ShapeError
from minicaffe.functional import ConvGeometry, conv_out_size, make_conv_plan
from minicaffe.layer import Layer
from minicaffe.layers._broadcast import scratch
from minicaffe.registry import register_layer


def _fillers(p):
    return (
        p.weight_filler if p.HasField("weight_filler") else None,
        p.bias_filler if p.HasField("bias_filler") else None,
    )


def parse_spatial(layer: Layer, p, num_spatial: int):
    """(kernel, stride, pad, dilation) tuples of length ``num_spatial`` from a
    ConvolutionParameter, by Caffe's rules: each of kernel/stride/pad/dilation is given once for
    every axis or once per axis; ``kernel_h/w``, ``stride_h/w``, ``pad_h/w`` are a 2-D-only
    alternative that cannot be mixed with the repeated form."""

    def dims(name: str, default: int, h: str | None, minimum: int):
        values = list(getattr(p, name))
        if h is not None and (p.HasField(f"{h}_h") or p.HasField(f"{h}_w")):
            if num_spatial != 2:
                raise layer.error(
                    f"{h}_h and {h}_w can only be used for 2-D convolution; the "
                    f"input has {num_spatial} spatial axes"
                )
            if values:
                raise layer.error(f"give either {name} or {h}_h/{h}_w, not both")
            # as Caffe, the one not given takes its field's default (0): fine for a pad, and
            # refused below for a kernel or a stride
            out = (int(getattr(p, f"{h}_h")), int(getattr(p, f"{h}_w")))
            name = f"{h}_h/{h}_w"
        elif not values:
            if default is None:
                raise layer.error("convolution_param needs kernel_size (or kernel_h and kernel_w)")
            out = (default,) * num_spatial
        elif len(values) in (1, num_spatial):
            out = tuple(int(v) for v in values) * (num_spatial if len(values) == 1 else 1)
        else:
            raise layer.error(
                f"{name} must be given once, or once per spatial axis "
                f"({num_spatial}); received {len(values)} values"
            )
        if any(v < minimum for v in out):
            raise layer.error(f"{name} must be >= {minimum} on every axis; received {out}")
        return out

    kernel = dims("kernel_size", None, "kernel", 1)
    stride = dims("stride", 1, "stride", 1)
    pad = dims("pad", 0, "pad", 0)
    dilation = dims("dilation", 1, None, 1)
    return kernel, stride, pad, dilation


class BaseConvolutionLayer(Layer):
    """Parameter parsing and shape logic shared by Convolution, Deconvolution and Im2col."""

    reverse = False  # Deconvolution: the convolution runs from top to bottom

    def setup_geometry(self, bottom) -> None:
        p = self.layer_param.convolution_param
        self.channel_axis = bottom[0].canonical_axis(p.axis)
        self.num_spatial = bottom[0].num_axes - self.channel_axis - 1
        if self.num_spatial < 1:
            raise self.error(
                f"needs at least one spatial axis after the channel axis "
                f"{self.channel_axis}; received shape {bottom[0].shape}",
                ShapeError,
            )
        self.kernel, self.stride, self.pad, self.dilation = parse_spatial(self, p, self.num_spatial)
        self.channels = bottom[0].shape[self.channel_axis]
        self.force_nd = p.force_nd_im2col

    def setup(self, bottom, top):
        p = self.layer_param.convolution_param
        self.setup_geometry(bottom)
        if not p.HasField("num_output") or p.num_output <= 0:
            raise self.error("convolution_param.num_output must be set and > 0")
        self.num_output = int(p.num_output)
        self.group = int(p.group)
        if self.group < 1:
            raise self.error(f"group must be >= 1; received {self.group}")
        if self.channels % self.group:
            raise self.error(
                f"input channels ({self.channels}) must be divisible by group ({self.group})",
                ShapeError,
            )
        if self.num_output % self.group:
            raise self.error(
                f"num_output ({self.num_output}) must be divisible by group ({self.group})"
            )
        # weights are (conv_out, conv_in / group, *kernel) with conv_out/in swapped for deconv
        conv_out, conv_in = (
            (self.channels, self.num_output) if self.reverse else (self.num_output, self.channels)
        )
        self.conv_out, self.conv_in = conv_out, conv_in
        self.bias_term = p.bias_term
        wf, bf = _fillers(p)
        self.init_param(0, (conv_out, conv_in // self.group) + self.kernel, wf)
        if self.bias_term:
            self.init_param(1, (self.num_output,), bf)
        elif len(self.blobs) > 1:
            raise self.error(f"bias_term is false but {len(self.blobs)} parameter blobs were given")
        self._plan_key = None

    def check_bottoms(self, bottom, top) -> tuple[int, ...]:
        shape = bottom[0].shape
        if len(shape) != self.channel_axis + 1 + self.num_spatial:
            raise self.error(
                f"the number of axes of the input cannot change after setup "
                f"(was {self.channel_axis + 1 + self.num_spatial}); received "
                f"shape {shape}",
                ShapeError,
            )
        if shape[self.channel_axis] != self.channels:
            raise self.error(
                f"input must have {self.channels} channels on axis "
                f"{self.channel_axis} (as at setup); received shape {shape}",
                ShapeError,
            )
        for i, b in enumerate(bottom[1:], 1):
            if b.shape != shape:
                raise self.error(
                    f"all bottoms must have the same shape; bottom 0 has {shape}, "
                    f"bottom {i} has {b.shape}",
                    ShapeError,
                )
        for i, t in enumerate(top):
            if i < len(bottom) and t is bottom[i]:
                raise self.error("cannot run in place (top and bottom must be different blobs)")
        return shape

    def reshape(self, bottom, top):
        shape = self.check_bottoms(bottom, top)
        ca = self.channel_axis
        in_size = shape[ca + 1 :]
        out = self.spatial_out(in_size)
        for t in top:
            t.reshape(shape[:ca] + (self.num_output,) + out)
        num = bottom[0].count_range(0, ca)
        chwn = self.use_chwn(bottom, top)
        key = (num, in_size, len(bottom), chwn)
        if key != self._plan_key:
            self._plan_key = key
            # The plan convolves `src` into `dst`: bottom into top, or, for Deconvolution
            # (`reverse`), top-shaped num_output channels into the bottom's shape.
            if self.reverse:
                src_channels, dst_channels, src_size = self.num_output, self.channels, out
            else:
                src_channels, dst_channels, src_size = self.channels, self.num_output, in_size
            geom = ConvGeometry(self.kernel, self.stride, self.pad, self.dilation, src_size)
            self.chwn = chwn
            if chwn:
                self.plans = [
                    conv_plan(self.dtype, num, self.channels, self.num_output, geom, self.group)
                    for _ in bottom
                ]
            else:
                self.plans = [
                    make_conv_plan(
                        self.xp,
                        self.dtype,
                        num,
                        src_channels,
                        dst_channels,
                        geom,
                        self.group,
                        self.force_nd,
                    )
                    for _ in bottom
                ]
            self._in = (num, self.channels) + in_size
            self._out = (num, self.num_output) + out

    def chwn_capable(self, batch: int | None = None) -> bool:
        """2-D, channel axis 1, on NumPy, not reversed, and (when strided) a batch large enough
        for the (C, H, W, N) plan (``batch``: default, the one of the last reshape)."""
        if self.reverse or self.channel_axis != 1 or self.num_spatial != 2:
            return False
        if batch is None:
            batch = self._in[0] if getattr(self, "_in", None) else 0
        geom = ConvGeometry(self.kernel, self.stride, self.pad, self.dilation, (1, 1))
        return conv_supported(self.xp, geom, self.force_nd) and strided_ok(self.stride, batch)

    def use_chwn(self, bottom, top) -> bool:
        """Run the (C, H, W, N) plan: capable, and the tops may hold that order (else the NCHW
        plans, which need no transpose at either end for 1x1 and first layers, as in ResNet's
        conv -> BatchNorm chains; a bottom held as (C, H, W, N) is then read in NCHW)."""
        batch = bottom[0].shape[0] if bottom[0].num_axes == 4 else 0
        return self.chwn_capable(batch) and all(t.chwn_ok for t in top)

    def spatial_out(self, in_size) -> tuple[int, ...]:
        out = tuple(
            conv_out_size(*a)
            for a in zip(in_size, self.kernel, self.stride, self.pad, self.dilation)
        )
        if any(o < 1 for o in out):
            raise self.error(
                f"the kernel {self.kernel} (dilation {self.dilation}) does not fit the input "
                f"{in_size} padded by {self.pad}: output size would be {out}",
                ShapeError,
            )
        return out


@register_layer("Convolution")
class ConvolutionLayer(BaseConvolutionLayer):
    """Convolution of the input with num_output learned filters, plus a bias.

    Params (convolution_param): num_output (required), bias_term = true, kernel_size (or
    kernel_h + kernel_w), stride = 1 (or stride_h + stride_w), pad = 0 (or pad_h + pad_w),
    dilation = 1 (each once, or once per spatial axis), group = 1, weight_filler, bias_filler
    (unset = constant 0), axis = 1 (the channel axis), force_nd_im2col = false, engine.
    Bottoms: one or more blobs of the same shape (lead..., C, *spatial); each gets its own top,
    all with the same weights (their parameter gradients add up).
    Top: (lead..., num_output, *out), out = floor((in + 2 pad - (dilation (kernel - 1) + 1)) /
    stride) + 1.
    Blobs: W (num_output, C / group, *kernel); b (num_output,) when bias_term.
    y[o] = sum over the channels c of o's group and kernel offsets k of
    W[o, c, k] x[c, out * stride - pad + k * dilation], + b[o].
    """

    min_bottom_blobs = 1
    min_top_blobs = 1
    equal_num_bottom_top_blobs = True

    chwn_needs_held_tops = True  # (with an NCHW top the NCHW plans are as fast or faster)

    def takes_chwn(self, bottom_index: int) -> bool:
        return self.chwn_capable()

    def forward(self, bottom, top):
        w2 = self.blobs[0].data.reshape(self.num_output, -1)
        bias = self.blobs[1].data if self.bias_term else None
        if self.chwn:
            return self._forward_chwn(bottom, top, w2, bias)
        for plan, b, t in zip(self.plans, bottom, top):
            plan.backward_expected = self.backward_expected
            plan.forward(b.data.reshape(self._in), w2, t.data.reshape(self._out), bias)

    def _forward_chwn(self, bottom, top, w2, bias):
        for plan, b, t in zip(self.plans, bottom, top):  # (the tops are chwn_ok: use_chwn)
            chwn = b.is_chwn()
            src = plan.source(b.chwn() if chwn else b.data, chwn)
            plan.forward(src, w2, t.write_chwn(), bias)

    def _backward_chwn(self, top, propagate_down, bottom, w2, dw, db):
        for i, (plan, b, t) in enumerate(zip(self.plans, bottom, top)):
            dx = None
            if propagate_down[i]:
                n, c, h, w = b.shape
                dx = b.write_chwn(diff=True) if b.chwn_ok else scratch(self, f"dx{i}", (c, h, w, n))
            if dw is None and db is None and dx is None:
                continue
            dy = t.chwn_view(diff=True)
            if not dy.flags.c_contiguous:  # (the GEMMs take it in tiles of rows)
                view, dy = dy, scratch(self, f"dy{i}", dy.shape)
                dy[...] = view
            chwn = b.is_chwn()
            src = plan.loaded_source(b.chwn() if chwn else b.data, chwn)
            plan.backward(w2, dy, src, dw=dw, db=db, dx=dx)
            if dx is not None and not b.chwn_ok:
                b.diff[...] = dx.transpose(3, 0, 1, 2)

    def backward(self, top, propagate_down, bottom):
        w2 = self.blobs[0].data.reshape(self.num_output, -1)
        ppd = self.param_propagate_down
        dw = self.blobs[0].diff.reshape(self.num_output, -1) if ppd and ppd[0] else None
        db = self.blobs[1].diff if self.bias_term and len(ppd) > 1 and ppd[1] else None
        if self.chwn:
            return self._backward_chwn(top, propagate_down, bottom, w2, dw, db)
        for i, (plan, b, t) in enumerate(zip(self.plans, bottom, top)):
            dx = b.diff.reshape(self._in) if propagate_down[i] else None
            if dw is None and db is None and dx is None:
                continue
            plan.backward(
                w2,
                t.diff.reshape(self._out),
                dw=dw,
                dx=dx,
                db=db,
                x=b.data.reshape(self._in),
                x_loaded=True,  # forward ran on this same bottom
            )
