"""InfogainLoss: softmax cross-entropy weighted by an infogain matrix H, as Caffe."""

from __future__ import annotations

import numpy as np

from minicaffe.errors import ShapeError
from minicaffe.losses import (
    NEG_LOG_THRESHOLD,
    VALID,
    WEIGHTED,
    ClassLossBase,
    check_label_count,
    class_layout,
    scale_positions,
    softmax_pass,
)
from minicaffe.registry import register_layer


@register_layer("InfogainLoss")
class InfogainLossLayer(ClassLossBase):
    """loss = -sum over valid positions of sum_l H[y, l] * log(max(p_l, 1e-20)) / n.

    p = softmax(x) along infogain_loss_param.axis (default 1; x viewed as (O, C, I)).
    H (C x C) is the third bottom when given, else read once from the BlobProto file
    infogain_loss_param.source. With H = I this is SoftmaxWithLoss (clamp 1e-20 instead of
    FLT_MIN); with H = diag(w) it is a class-weighted softmax loss divided by the unweighted n.

    Params (loss_param): ignore_label (unset: none); normalization = VALID (FULL, VALID,
    BATCH_SIZE = O, NONE; never below 1). The legacy ``normalize`` is refused, as in Caffe.
    Bottoms: x, label (O*I values), optional H (C*C values). Tops: loss, optional prob.
    Gradient: dx_l = lambda/n * (p_l * sum_m H[y, m] - H[y, l]) at valid positions, else 0.
    """

    min_top_blobs, max_top_blobs = 1, 2
    exact_num_top_blobs = -1
    label_bottoms = {1: "label", 2: "infogain matrix H"}
    loss_params = frozenset({"ignore_label", "normalization", "normalize"})
    weight_bottom = False

    def setup(self, bottom, top):
        super().setup(bottom, top)
        if self.layer_param.loss_param.HasField("normalize"):
            raise self.error(
                "loss_param.normalize is deprecated and refused by InfogainLoss (as "
                "in Caffe); use loss_param.normalization instead"
            )
        self.setup_classes(bottom, VALID)
        if self.mode == WEIGHTED:
            raise self.error(
                "normalization WEIGHTED needs class weights, which InfogainLoss "
                "takes through H; use FULL, VALID, BATCH_SIZE or NONE"
            )
        self._H = None
        if len(bottom) < 3:
            source = self.layer_param.infogain_loss_param.source
            if not source:
                raise self.error(
                    "the infogain matrix H is missing: give "
                    "infogain_loss_param.source (a .binaryproto) or a third bottom"
                )
            from minicaffe.prototxt import read_binaryproto

            self._H = self.xp.asarray(np.asarray(read_binaryproto(source), dtype=self.dtype))

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        x_shape = bottom[0].shape
        a, O, C, I = class_layout(self, x_shape, self.layer_param.infogain_loss_param.axis)
        check_label_count(self, x_shape, bottom[1].shape, a, O, I)
        self.layout(bottom, a, O, C, I)
        h_count = bottom[2].count if len(bottom) == 3 else self._H.size
        if h_count != C * C:
            what = (
                "the H bottom"
                if len(bottom) == 3
                else f"H from '{self.layer_param.infogain_loss_param.source}'"
            )
            h_shape = bottom[2].shape if len(bottom) == 3 else self._H.shape
            raise self.error(
                f"H must be C x C = {C} x {C} ({C * C} values) for {C} classes; "
                f"{what} has shape {tuple(h_shape)}",
                ShapeError,
            )
        if len(top) == 2:
            top[1].reshape(x_shape)

    def forward(self, bottom, top):
        xp, O, C, I = self.xp, self.O, self.C, self.I
        H = (bottom[2].data if len(bottom) == 3 else self._H).reshape(C, C)
        t = self.targets(bottom, w4=None)
        x3 = bottom[0].data.reshape(O, C, I)
        lse3, inv3 = self.scratch("lse", (O, 1, I)), self.scratch("inv", (O, 1, I))
        p3 = top[1].data.reshape(O, C, I) if len(top) == 2 else self.scratch("prob", (O, C, I))
        softmax_pass(xp, x3, lse3, inv3, self.plan, keep=p3)
        scale_positions(xp, p3, inv3, p3, self.plan)
        # log(max(p, 1e-20)) = max(x - lse, log 1e-20), positions first: (O*I, C)
        logp = xp.maximum(x3 - lse3, -NEG_LOG_THRESHOLD).transpose(0, 2, 1).reshape(O * I, C)
        hy = xp.take(H, t.labels.y, axis=0)  # H[y] per position: (O*I, C)
        terms = -(hy * logp).sum(axis=1)
        if t.labels.valid is not None:
            terms *= t.labels.valid
        top[0].data[...] = terms.sum() / self.finish(t)
        self._saved = (t, hy, p3)

    def backward(self, top, propagate_down, bottom):
        self.refuse_label_gradients(propagate_down)
        if not propagate_down[0]:
            return
        xp, O, C, I = self.xp, self.O, self.C, self.I
        t, hy, p3 = self._saved
        scale = self.lambda_over(top, t.n)
        coef = hy.sum(axis=1)  # row sums of H at each position's label
        if t.labels.valid is not None:
            coef = coef * t.labels.valid
            hy = hy * t.labels.valid[:, None]
        d3 = bottom[0].diff.reshape(O, C, I)
        xp.multiply(p3, coef.reshape(O, 1, I), out=d3)
        d3 -= hy.reshape(O, I, C).transpose(0, 2, 1)
        d3 *= scale
