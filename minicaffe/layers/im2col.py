"""Im2col: the column matrix a convolution multiplies, as a layer."""

from __future__ import annotations

import math

from minicaffe.functional import ConvGeometry, col2im_nd, im2col_nd, pad_into
from minicaffe.layers.convolution import BaseConvolutionLayer
from minicaffe.registry import register_layer


@register_layer("Im2col")
class Im2colLayer(BaseConvolutionLayer):
    """Rearranges every kernel-sized patch of the input into a column.

    Params (convolution_param): kernel_size (or kernel_h + kernel_w), stride = 1, pad = 0,
    dilation = 1 (once, or once per spatial axis), axis = 1, force_nd_im2col; num_output, group
    and the fillers are not used.
    Bottom: (lead..., C, *spatial). Top: (lead..., C * prod(kernel), *out) with Convolution's
    output size; top[c * prod(kernel) + k, out] = x[c, out * stride - pad + k * dilation]
    (0 in the padding). Backward adds every column gradient back to where it was read.
    """

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom, top):
        self.setup_geometry(bottom)
        self._key = None

    def reshape(self, bottom, top):
        shape = self.check_bottoms(bottom, top)
        ca = self.channel_axis
        in_size = shape[ca + 1 :]
        out = self.spatial_out(in_size)
        top[0].reshape(shape[:ca] + (self.channels * math.prod(self.kernel),) + out)
        num = bottom[0].count_range(0, ca)
        key = (num, in_size)
        if key != self._key:
            self._key = key
            self.geom = ConvGeometry(self.kernel, self.stride, self.pad, self.dilation, in_size)
            self._in = (num, self.channels) + in_size
            self._col = (num, self.channels) + self.kernel + out
            padded = any(self.pad)
            self.xpad = (
                self.xp.zeros(self._in[:2] + self.geom.padded_size, self.dtype) if padded else None
            )
            self.dxpad = None

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self._in)
        im2col_nd(pad_into(x, self.geom, self.xpad), self.geom, top[0].data.reshape(self._col))

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff.reshape(self._in)
        if self.xpad is None:
            dx.fill(0)
            col2im_nd(top[0].diff.reshape(self._col), self.geom, dx)
            return
        if self.dxpad is None:
            self.dxpad = self.xp.zeros_like(self.xpad)
        else:
            self.dxpad.fill(0)
        col2im_nd(top[0].diff.reshape(self._col), self.geom, self.dxpad)
        dx[...] = self.dxpad[
            (Ellipsis,) + tuple(slice(p, p + s) for p, s in zip(self.pad, self.geom.in_size))
        ]
