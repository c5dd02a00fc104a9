"""Deconvolution (transposed convolution): the adjoint of Convolution, used for upsampling."""

from __future__ import annotations

from minicaffe.errors import ShapeError
from minicaffe.functional import deconv_out_size
from minicaffe.layers.convolution import BaseConvolutionLayer
from minicaffe.registry import register_layer


@register_layer("Deconvolution")
class DeconvolutionLayer(BaseConvolutionLayer):
    """Transposed convolution: each input value spreads a kernel-sized patch over the output.

    Params (convolution_param): as Convolution (num_output, bias_term = true, kernel_size /
    kernel_h + kernel_w, stride = 1, pad = 0, dilation = 1, group = 1, weight_filler,
    bias_filler, axis = 1, force_nd_im2col).
    Bottoms: one or more (lead..., C, *spatial) blobs of the same shape, one top each.
    Top: (lead..., num_output, *out), out = stride (in - 1) + dilation (kernel - 1) + 1 - 2 pad.
    Blobs: W (C, num_output / group, *kernel) (Caffe's reversed order); b (num_output,).
    y is the data gradient of a Convolution from y's shape to x's shape with weights W:
    y[o, in * stride - pad + k * dilation] += W[c, o, k] x[c, in] (within each group), + b[o].
    """

    min_bottom_blobs = 1
    min_top_blobs = 1
    equal_num_bottom_top_blobs = True
    reverse = True

    def spatial_out(self, in_size) -> tuple[int, ...]:
        out = tuple(
            deconv_out_size(*a)
            for a in zip(in_size, self.kernel, self.stride, self.pad, self.dilation)
        )
        if any(o < 1 for o in out):
            raise self.error(
                f"output size {out} is not positive for input {in_size}, kernel "
                f"{self.kernel}, stride {self.stride}, pad {self.pad}",
                ShapeError,
            )
        return out

    def forward(self, bottom, top):
        w2 = self.blobs[0].data.reshape(self.channels, -1)
        bias = self.blobs[1].data if self.bias_term else None
        for plan, b, t in zip(self.plans, bottom, top):
            plan.data_gradient(w2, b.data.reshape(self._in), t.data.reshape(self._out), bias)

    def backward(self, top, propagate_down, bottom):
        w2 = self.blobs[0].data.reshape(self.channels, -1)
        ppd = self.param_propagate_down
        dw = self.blobs[0].diff.reshape(self.channels, -1) if ppd and ppd[0] else None
        db = self.blobs[1].diff if self.bias_term and len(ppd) > 1 and ppd[1] else None
        for i, (plan, b, t) in enumerate(zip(self.plans, bottom, top)):
            dy = t.diff.reshape(self._out)
            if db is not None:
                db += dy.reshape(dy.shape[0], self.num_output, -1).sum(axis=(0, 2))
            if propagate_down[i]:
                plan.forward(dy, w2, b.diff.reshape(self._in))
            if dw is not None:  # the top diff is the convolution's input here
                plan.backward(
                    w2, b.data.reshape(self._in), dw=dw, x=dy, x_loaded=bool(propagate_down[i])
                )
