"""Pooling: MAX, AVE or STOCHASTIC over 2-D windows, with Caffe's window rules."""

from __future__ import annotations

import numpy as np

from minicaffe.backend import rng
from minicaffe.chwn import ChwnPoolPlan, strided_ok
from minicaffe.errors import ShapeError
from minicaffe.functional import PoolPlan, pool_out_size
from minicaffe.layer import Layer
from minicaffe.registry import register_layer

MAX, AVE, STOCHASTIC = 0, 1, 2
_NAMES = {MAX: "MAX", AVE: "AVE", STOCHASTIC: "STOCHASTIC"}


def parse_pooling(layer: Layer, p):
    """(kernel or None when global, stride, pad) from a PoolingParameter, by Caffe's rules."""
    if p.global_pooling:
        if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
            raise layer.error("with global_pooling: true the kernel size cannot be given")
        kernel = None
    else:
        has_hw = p.HasField("kernel_h") and p.HasField("kernel_w")
        if p.HasField("kernel_size") and (p.HasField("kernel_h") or p.HasField("kernel_w")):
            raise layer.error("give either kernel_size or kernel_h and kernel_w, not both")
        if not (p.HasField("kernel_size") or has_hw):
            raise layer.error(
                "pooling_param needs kernel_size, or both kernel_h and kernel_w "
                "(or global_pooling: true)"
            )
        kernel = (
            (p.kernel_size, p.kernel_size)
            if p.HasField("kernel_size")
            else (p.kernel_h, p.kernel_w)
        )
        if min(kernel) <= 0:
            raise layer.error(f"kernel must be > 0; received {kernel}")

    def pair(name: str, default: int):
        h, w = p.HasField(f"{name}_h"), p.HasField(f"{name}_w")
        if h or w:
            if p.HasField(name) or not (h and w):
                raise layer.error(f"give either {name}, or both {name}_h and {name}_w")
            return int(getattr(p, f"{name}_h")), int(getattr(p, f"{name}_w"))
        v = int(getattr(p, name)) if p.HasField(name) else default
        return v, v

    stride, pad = pair("stride", 1), pair("pad", 0)
    if min(stride) <= 0:
        raise layer.error(f"stride must be > 0; received {stride}")
    if p.global_pooling and (pad != (0, 0) or stride != (1, 1)):
        raise layer.error(
            f"with global_pooling: true only pad 0 and stride 1 are allowed; "
            f"received pad {pad}, stride {stride}"
        )
    if pad != (0, 0):
        if p.pool == STOCHASTIC:
            raise layer.error("padding is implemented only for MAX and AVE pooling")
        if kernel is not None and (pad[0] >= kernel[0] or pad[1] >= kernel[1]):
            raise layer.error(f"pad {pad} must be smaller than the kernel {kernel}")
    return kernel, stride, pad


@register_layer("Pooling")
class PoolingLayer(Layer):
    """Pooling of each channel over kernel-sized windows.

    Params (pooling_param): pool = MAX (AVE, STOCHASTIC), kernel_size (or kernel_h + kernel_w),
    stride = 1 (or stride_h + stride_w), pad = 0 (or pad_h + pad_w), global_pooling = false
    (kernel = the whole image), round_mode = CEIL (FLOOR), engine.
    Bottom: (N, C, H, W). Top: (N, C, Ho, Wo) with Ho = ceil((H + 2 pad - kernel) / stride) + 1
    (floor for FLOOR), less one when padding would make the last window start at or beyond
    H + pad. MAX may have a second top: the flat index h * W + w of each maximum (as a float).
    MAX: maximum over the window clipped to the image; the first maximum in row-major order takes
    the gradient. AVE: sum over the clipped window divided by the window size clipped to
    [-pad, H + pad) (padding zeros count). STOCHASTIC (no padding, inputs >= 0): TRAIN samples
    one value per window with probability x / sum(x) (it takes the gradient); TEST outputs
    sum(x^2) / sum(x).
    """

    exact_num_bottom_blobs = 1
    min_top_blobs = 1
    max_top_blobs = 2

    def setup(self, bottom, top):
        p = self.layer_param.pooling_param
        self.method = int(p.pool)
        if self.method not in _NAMES:
            raise self.error(f"unknown pool method {self.method}")
        if len(top) > 1 and self.method != MAX:
            raise self.error(
                f"only MAX pooling has a second (mask) top; {_NAMES[self.method]} "
                f"received {len(top)} tops",
                ShapeError,
            )
        self.kernel_param, self.stride, self.pad = parse_pooling(self, p)
        self.global_pooling = p.global_pooling
        self.ceil_mode = p.round_mode == 0
        self._plan_key = None
        self._tracked = False
        self._chwn = False
        self.chwn_plan = None
        self.n_tops = len(top)

    def reshape(self, bottom, top):
        shape = self.require_4d(bottom[0])
        n, c, h, w = shape
        kernel = (h, w) if self.global_pooling else self.kernel_param
        if (self.pad[0] or self.pad[1]) and (self.pad[0] >= kernel[0] or self.pad[1] >= kernel[1]):
            raise self.error(f"pad {self.pad} must be smaller than the kernel {kernel}")
        clip = bool(self.pad[0] or self.pad[1])
        out = tuple(
            pool_out_size(s, k, st, pd, self.ceil_mode, clip)
            for s, k, st, pd in zip((h, w), kernel, self.stride, self.pad)
        )
        if min(out) < 1:
            raise self.error(
                f"the kernel {kernel} is larger than the padded input "
                f"({h}+2*{self.pad[0]}, {w}+2*{self.pad[1]})",
                ShapeError,
            )
        for t in top:
            t.reshape((n, c) + out)
        key = (shape, kernel)
        if key != self._plan_key:
            self._plan_key = key
            self.plan = PoolPlan(self.xp, self.dtype, shape, kernel, self.stride, self.pad, out)
            self._scratch_y = None
            self.chwn_plan = None
            if self.takes_chwn(0):
                name = "MAX" if self.method == MAX else "AVE"
                self.chwn_plan = ChwnPoolPlan(
                    self.dtype, shape, kernel, self.stride, self.pad, out, name
                )
        self._chwn = False

    def takes_chwn(self, bottom_index: int) -> bool:
        """MAX (without the mask top) and AVE on NumPy run in the (C, H, W, N) order (windows
        past the edge stay in NCHW, whose plan handles them)."""
        batch = self._plan_key[0][0] if self._plan_key else 0
        return (
            self.xp is np
            and self.method in (MAX, AVE)
            and not (self._plan_key and self.plan.empty is not None)
            and self.n_tops == 1
            and strided_ok(self.stride, batch)
        )

    def _forward_chwn(self, bottom, top) -> None:
        t = top[0]
        y = t.write_chwn() if t.chwn_ok else self.chwn_plan.tmp
        self.chwn_plan.forward(bottom[0].chwn(), y, track=self.phase == 0)  # 0: TRAIN
        self._tracked = self.phase == 0
        if not t.chwn_ok:
            t.data[...] = y.transpose(3, 0, 1, 2)

    def _backward_chwn(self, top, bottom) -> None:
        plan = self.chwn_plan
        b = bottom[0]  # (held in the working order at forward, so chwn_ok)
        if self.method == MAX and not self._tracked:  # TEST forward skipped the argmax
            plan.forward(b.chwn_view(), plan.tmp, track=True)
            self._tracked = True
        plan.backward(top[0].chwn_view(diff=True), b.write_chwn(diff=True))

    def forward(self, bottom, top):
        self._chwn = self.chwn_plan is not None and bottom[0].is_chwn()
        if self._chwn:
            return self._forward_chwn(bottom, top)
        x, y, plan = bottom[0].data, top[0].data, self.plan
        if self.method == MAX:
            self._tracked = self.phase == 0 or len(top) > 1  # 0: TRAIN
            plan.max_forward(x, y, track=self._tracked)
            if len(top) > 1:
                plan.max_mask(top[1].data)
        elif self.method == AVE:
            plan.ave_forward(x, y)
        elif self.phase == 0:
            u = self.xp.asarray(
                rng().random(plan.out_shape, dtype=np.float32).astype(self.dtype, copy=False)
            )
            plan.stochastic_train_forward(x, y, u)
        else:
            plan.stochastic_test_forward(x, y)
            self._sto_y = y.copy()

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self._chwn:
            return self._backward_chwn(top, bottom)
        plan, dy, dx = self.plan, top[0].diff, bottom[0].diff
        if self.method == AVE:
            plan.ave_backward(dy, dx)
        elif self.method == STOCHASTIC and self.phase != 0:
            plan.stochastic_test_backward(bottom[0].data, self._sto_y, dy, dx)
        else:
            if self.method == MAX and not self._tracked:  # TEST forward skipped the argmax
                if self._scratch_y is None:
                    self._scratch_y = self.xp.empty(plan.out_shape, self.dtype)
                plan.max_forward(bottom[0].data, self._scratch_y, track=True)
                self._tracked = True
            plan.max_backward(dy, dx)
